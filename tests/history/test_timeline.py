"""The timeline over a real Mosquitto, the real daemon and the shipped bundle: a folder of four
generated scenes and two real photos (which the model finds unfamiliar), looped, cut into
events; then text, phrase, time, unfamiliar, similar-to and paged queries, over MQTT and
through ``explaincam history``, and queries a fuzzer would send."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import pytest
from skimage import data as skimage_data

from daemon.scenes import scene_at
from tests.conftest import CAPTION, REPO, START_TIMEOUT, daemon_config, wait_until
from tests.history.helpers import HistoryAsker, runs_of


@pytest.fixture
def timeline(tmp_path, mosquitto, collect, daemon_process):
    """A daemon captioning 6 images (4 scenes, 2 photos) in a loop, 4 a second, every event kept;
    yields (daemon, asker, caption messages so far, config file)."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    pictures = [scene_at(31, 0).image, scene_at(31, 1).image, skimage_data.astronaut(), scene_at(31, 2).image,
                scene_at(31, 3).image, skimage_data.coffee()]
    for n, rgb in enumerate(pictures):
        cv2.imwrite(str(folder / f"{n}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": 0},
                           camera={"name": "testcam", "source": {"type": "images", "path": str(folder), "fps": 4}},
                           history={"max_events_per_hour": 100000, "explain": []})
    watcher = collect(mosquitto.port, CAPTION)
    daemon = daemon_process(config)
    watcher.wait_for(CAPTION, lambda m: not m.retain and m.json()["frame_id"] >= 20, timeout=START_TIMEOUT + 10)
    asker = HistoryAsker(mosquitto.port)
    captions = sorted((m.json() for m in watcher.on(CAPTION) if not m.retain), key=lambda c: c["frame_id"])
    yield daemon, asker, captions, daemon.config_file
    asker.close()


def test_events_follow_the_caption_stream_and_every_query_kind_answers(timeline):
    daemon, asker, captions, config_file = timeline
    expected = runs_of(captions)
    time.sleep(1.5)  # the daemon confirms a change a frame or two later and commits within 0.5 s
    answer = asker.ask({"id": "all", "limit": 100})
    assert answer["status"] == "ok" and answer["id"] == "all", answer
    events = sorted(answer["events"], key=lambda e: e["start"])
    by_start = {e["start"]: e for e in events}
    closed = expected[1:-3]  # the first may have begun before we listened; the last ones may still change
    assert len(closed) >= 5, expected
    for run in closed:
        event = by_start.get(run["start"])
        assert event is not None, f"no event starts at {run['start']} ({run['caption']}); events: {events}"
        assert event["caption"] == run["caption"]
        assert event["end"] == pytest.approx(run["end"], abs=1e-3) and event["frames"] == run["frames"], (event, run)
        assert event["explainable"] and event["thumbnail_jpeg"]
    frames = {c["frame_id"]: c for c in captions}
    assert all(frames[e["first_frame_id"]]["caption"] == e["caption"] for e in events if e["first_frame_id"] in frames)

    cutoff = events[-1]["start"]  # the daemon goes on making events: the queries below look up to here

    # text: a word, and a phrase (all words, in order)
    word = next(w for e in events for w in e["caption"].split() if w not in ("a", "of", "left", "above"))
    found = asker.ask({"text": word, "until": cutoff, "limit": 100})["events"]
    want = [e["event_id"] for e in events if word in e["caption"].split()]
    assert sorted(e["event_id"] for e in found) == sorted(want) and want
    phrase = events[-1]["caption"]
    found = asker.ask({"text": f'"{phrase}"', "until": cutoff, "limit": 100})["events"]
    assert found and all(f" {phrase} " in f" {e['caption']} " for e in found)

    # unfamiliar: exactly the events of frames the caption stream flagged (the photos)
    found = asker.ask({"unfamiliar": True, "until": cutoff, "limit": 100})["events"]
    want = [e["event_id"] for e in events if e["out_of_distribution"]]
    assert sorted(e["event_id"] for e in found) == sorted(want) and len(want) >= 2
    assert all(frames[e["first_frame_id"]]["out_of_distribution"] for e in found if e["first_frame_id"] in frames)

    # similar to the first photo's event: the same photo a loop later, cosine 1
    target = next(e for e in events if e["out_of_distribution"])
    found = asker.ask({"similar": target["event_id"], "limit": 5})["events"]
    assert found[0]["caption"] == target["caption"] and found[0]["similarity"] >= 0.999, found
    assert [e["similarity"] for e in found] == sorted((e["similarity"] for e in found), reverse=True)
    assert target["event_id"] not in [e["event_id"] for e in found]

    # time range: events that overlap it
    since, until = events[2]["start"], events[4]["start"]
    found = asker.ask({"since": since, "until": until, "limit": 100})["events"]
    want = [e["event_id"] for e in events if (e["end"] >= since and e["start"] <= until)]
    assert sorted(e["event_id"] for e in found) == sorted(want)

    # paging: two pages of two are the newest four
    newest = [e["event_id"] for e in asker.ask({"limit": 4, "until": cutoff})["events"]]
    first, second = asker.ask({"limit": 2, "until": cutoff}), asker.ask({"limit": 2, "offset": 2, "until": cutoff})
    assert [e["event_id"] for e in first["events"] + second["events"]] == newest and first["next_offset"] == 2

    # the command line, as a user types it
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "history", word, "--since", "10m", "--json",
                             "--limit", "100", "-c", str(config_file)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {e["event_id"] for e in printed["events"]} >= set(want_word := [e["event_id"] for e in events
                                                                          if word in e["caption"].split()])
    assert all(word in e["caption"].split() and e["camera"] == "testcam" for e in printed["events"]), want_word
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "history", f'"{phrase}"', "--until", str(cutoff),
                             "-c", str(config_file)], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines and all(phrase in line and "testcam#" in line for line in lines), \
        result.stdout + result.stderr
    assert daemon.process.poll() is None


def test_bad_queries_get_error_answers_and_captions_go_on(timeline):
    daemon, asker, captions, _ = timeline
    cases = {
        b"{not json": "bad_json",
        b"[1, 2]": "bad_request",
        json.dumps({"id": 1, "limit": 10**12}).encode(): "bad_request",
        json.dumps({"id": 2, "text": '"'}).encode(): "bad_text",
        json.dumps({"id": 3, "text": "AND ("}).encode(): "bad_text",
        json.dumps({"id": 4, "text": "x'; DROP TABLE events; --"}).encode(): "bad_text",
        json.dumps({"id": 5, "text": "red NEAR/2 circle*"}).encode(): "bad_text",
        json.dumps({"id": 6, "since": -5}).encode(): "bad_request",
        json.dumps({"id": 7, "since": 2000000000, "until": 1000000000}).encode(): "bad_request",
        json.dumps({"id": 8, "similar": 12345}).encode(): "no_such_event",
        json.dumps({"id": 9, "limit": -1}).encode(): "bad_request",
        json.dumps({"id": 10, "drop": "table"}).encode(): "bad_request",
        json.dumps({"id": 11, "since": "yesterday"}).encode(): "bad_request",
        b"\xff\xfe" * 100: "bad_json",
        json.dumps({"id": 12, "text": "x" * 5000}).encode(): "bad_request",
    }
    for payload, code in cases.items():
        answer = asker.ask(payload)
        assert answer is not None and answer["status"] == "error", (payload, answer)
        assert answer["error"]["code"] == code, (payload, answer)
    # words that are FTS5 operators are plain words: asked, answered (nothing matches them)
    answer = asker.ask({"text": "AND OR NOT NEAR", "limit": 5})
    assert answer["status"] == "ok" and answer["events"] == []
    before = len(captions)
    wait_until(lambda: asker.ask({"limit": 1})["status"] == "ok", 10)
    assert daemon.process.poll() is None
    assert asker.ask({"limit": 100})["events"], "events are gone"
    assert "Traceback" not in daemon.log(), daemon.log()
    assert before > 0
