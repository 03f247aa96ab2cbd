"""An event of the timeline explained on request, long after the fact: the maps equal those of a live
request for the same frame (real daemon, real Mosquitto, LiteRT explainer), and they stay with the event."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import cv2
import numpy as np

from daemon.scenes import scene_at
from tests.conftest import CAPTION, REPO, START_TIMEOUT, daemon_config, wait_until
from tests.faults.probes import Requester
from tests.history.helpers import HistoryAsker


def heatmaps(response: dict) -> dict:
    return {(w["index"], m): cv2.imdecode(np.frombuffer(base64.b64decode(w[m]["heatmap"]), np.uint8),
                                          cv2.IMREAD_UNCHANGED)
            for w in response["words"] for m in ("gradcam", "saliency") if m in w}


def test_stored_event_explained_equals_the_live_frame(tmp_path, mosquitto, collect, daemon_process):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for n in range(3):
        cv2.imwrite(str(folder / f"{n}.png"), cv2.cvtColor(scene_at(41, n).image, cv2.COLOR_RGB2BGR))
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": 0, "cache_size": 1000},
                           camera={"name": "testcam", "source": {"type": "images", "path": str(folder), "fps": 4}},
                           history={"explain": []})
    watcher = collect(mosquitto.port, CAPTION)
    daemon = daemon_process(config)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    asker = HistoryAsker(mosquitto.port)
    events = wait_until(lambda: asker.ask({"limit": 100})["events"][2:], 30, message="three events")
    event = events[-1]  # an older one, its frame still in the (large) cache for the live request
    assert event["explainable"] and not event["explained"]

    requester = Requester(mosquitto.port)
    methods = ["gradcam", "saliency"]
    requester.send({"id": "live", "frame": event["first_frame_id"], "methods": methods}, b"live")
    live = requester.wait_reply(b"live", 120)
    requester.send({"id": "old", "event": event["event_id"], "methods": methods}, b"old")
    old = requester.wait_reply(b"old", 120)
    assert live["status"] == "ok" and old["status"] == "ok", (live, old)
    assert old["event_id"] == event["event_id"] and old["caption"] == live["caption"] == event["caption"]
    assert old["frame_id"] == live["frame_id"] == event["first_frame_id"]
    live_maps, old_maps = heatmaps(live), heatmaps(old)
    assert live_maps.keys() == old_maps.keys() and len(live_maps) == 2 * len(event["caption"].split())
    for key in live_maps:
        assert np.array_equal(live_maps[key], old_maps[key]), key
    assert [w.get("gradcam", {}).get("peak") for w in old["words"]] == [w.get("gradcam", {}).get("peak")
                                                                         for w in live["words"]]

    # kept with the event; bad event requests get clear errors; the CLI names events too
    wait_until(lambda: asker.ask({"limit": 100, "until": event["start"], "since": event["start"]})["events"][0]
               ["explained"] == methods, 10, message="the explanation kept with the event")
    for payload, code in (({"id": "x", "event": 12345}, "no_such_event"),
                          ({"id": "y", "event": event["event_id"], "frame": 3}, "bad_request"),
                          ({"id": "z", "event": -1}, "bad_request")):
        requester.send(payload, payload["id"].encode())
        answer = requester.wait_reply(payload["id"].encode(), 30)
        assert answer["status"] == "error" and answer["error"]["code"] == code, answer
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "request", "--event", str(event["event_id"]),
                             "--methods", "gradcam", "--out", str(tmp_path / "cli"), "-c", str(daemon.config_file)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "cli" / "response.json").read_text())
    assert saved["event_id"] == event["event_id"] and saved["status"] == "ok"
    requester.close()
    asker.close()


def test_new_events_are_explained_in_the_background_and_a_user_goes_first(tmp_path, mosquitto, collect,
                                                                          daemon_process):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for n in range(3):
        cv2.imwrite(str(folder / f"{n}.png"), cv2.cvtColor(scene_at(43, n).image, cv2.COLOR_RGB2BGR))
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": 0},
                           camera={"name": "testcam", "source": {"type": "images", "path": str(folder), "fps": 2}},
                           history={"explain": ["gradcam"], "max_events_per_hour": 100000})
    watcher = collect(mosquitto.port, CAPTION, "explaincam/testcam/explain/#")
    daemon_process(config)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    asker = HistoryAsker(mosquitto.port)
    requester = Requester(mosquitto.port)
    wait_until(lambda: any(e["explained"] for e in asker.ask({"limit": 100})["events"]), 120,
               message="a background explanation")
    requester.send({"id": "user", "frame": "latest", "methods": ["saliency"]}, b"user")
    answer = requester.wait_reply(b"user", 60)
    assert answer["status"] == "ok" and answer["timings_ms"]["queue_ms"] < 2000, answer
    explained = wait_until(lambda: [e for e in asker.ask({"limit": 100})["events"] if e["explained"]][2:] and
                           [e for e in asker.ask({"limit": 100})["events"] if e["explained"]], 60,
                           message="three events explained")
    assert all(e["explained"] == ["gradcam"] for e in explained)
    # background work answers nobody: the only response and the only new explain image are the user's
    responses = [m for m in watcher.on("explaincam/testcam/explain/response")]
    images = [json.loads(m.payload) for m in watcher.on("explaincam/testcam/explain/image/info")]
    assert responses == [] and [i["request_id"] for i in images if not i["placeholder"]] == ["user"]
    requester.close()
    asker.close()
