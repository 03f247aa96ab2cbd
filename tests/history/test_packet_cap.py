"""History answers under a broker's packet size cap (Mosquitto ``max_packet_size``): an answer
too large comes without thumbnails, then in shorter pages whose ``next_offset`` a client follows
to every event; a requester always gets an answer."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

from daemon.broker import LocalBroker, free_port
from daemon.history.query import answer, fitted_answer
from tests.conftest import REPO, START_TIMEOUT, STATS, daemon_config
from tests.history.helpers import HistoryAsker

CAP = 8192


def made_up_events(count: int, thumbnail_bytes: int) -> list[dict]:
    """Events as answers carry them, each with a base64 thumbnail of ``thumbnail_bytes`` characters."""
    return [{"event_id": 100 - n, "caption": f"a red circle number {n}", "tokens": [1, 2, 3, 4],
             "thumbnail_jpeg": "A" * thumbnail_bytes} for n in range(count)]


def test_a_large_answer_loses_thumbnails_then_events_and_says_where_the_rest_is():
    full = answer("q", "cam", made_up_events(30, 6000), offset=40, next_offset=70)
    assert fitted_answer(full, 10**6) is not None  # room for all: the publisher never calls it then

    slim = json.loads(fitted_answer(full, 4000))
    assert slim["status"] == "ok" and slim["omitted"]["thumbnails"] is True and "events" not in slim["omitted"]
    assert [e["event_id"] for e in slim["events"]] == [e["event_id"] for e in full["events"]]
    assert all("thumbnail_jpeg" not in e for e in slim["events"]) and slim["next_offset"] == 70

    for room in (1500, 800, 400):
        text = fitted_answer(full, room)
        page = json.loads(text)
        kept = len(page["events"])
        assert len(text) <= room and 0 < kept < 30, (room, kept)
        assert [e["event_id"] for e in page["events"]] == [e["event_id"] for e in full["events"][:kept]]
        assert page["next_offset"] == 40 + kept and page["omitted"]["events"] == 30 - kept

    error = json.loads(fitted_answer(full, 250))  # not one event fits
    assert error["status"] == "error" and error["error"]["code"] == "response_too_large" and error["id"] == "q"
    assert fitted_answer(full, 60) is None  # not even the error fits: the publisher drops it


def test_under_a_packet_cap_a_client_pages_through_every_event(tmp_path, collect, daemon_process):
    broker = LocalBroker(free_port(), tmp_path / "mosquitto", extra_config=f"max_packet_size {CAP}\n")
    broker.start()
    asker = None
    try:
        config = daemon_config(tmp_path, broker.port, history={"max_events_per_hour": 100000, "explain": []},
                               mqtt={"jpeg_interval_s": 0})
        watcher = collect(broker.port, STATS)
        daemon = daemon_process(config)
        watcher.wait_for(STATS, lambda m: m.json().get("history", {}).get("events_stored", 0) >= 25,
                         timeout=START_TIMEOUT + 60)
        asker = HistoryAsker(broker.port)
        newest = asker.ask({"limit": 1, "thumbnails": True})
        assert newest["status"] == "ok" and newest["events"][0]["thumbnail_jpeg"], newest  # a small answer is whole
        cutoff = newest["events"][0]["start"]

        pages, offset = [], 0
        while offset is not None and len(pages) < 20:
            page = asker.ask({"limit": 100, "offset": offset, "until": cutoff, "thumbnails": True})
            assert page is not None and page["status"] == "ok", page
            assert len(json.dumps(page)) <= CAP
            assert ("omitted" in page) == all("thumbnail_jpeg" not in e for e in page["events"]), page.get("omitted")
            pages.append(page)
            offset = page["next_offset"]
        shown = subprocess.run([sys.executable, "-m", "daemon.cli", "history", "--until", str(cutoff), "--limit", "100",
                                "-c", str(daemon.config_file)], cwd=REPO, capture_output=True, text=True, timeout=60)
        log = daemon.log()
        daemon.stop()  # the store read below as it was left, no reader beside the daemon's
    finally:
        if asker is not None:
            asker.close()
        broker.stop()
    assert len(pages) >= 2 and pages[0]["omitted"]["events"] > 0  # 25 events do not fit one 8 KB packet
    con = sqlite3.connect(tmp_path / "snapshot" / "history" / "history.sqlite")
    stored = [row[0] for row in con.execute("SELECT id FROM events WHERE start <= ? ORDER BY id DESC", [cutoff])]
    con.close()
    assert [e["event_id"] for p in pages for e in p["events"]] == stored
    assert "MQTT: connection lost" not in log, log
    # explaincam history says what the cap left out and where the rest starts: no event skipped
    lines = shown.stdout.splitlines()
    assert shown.returncode == 0 and lines[-1] == f"(more: --offset {len(lines) - 1})", shown.stdout + shown.stderr
    assert [int(re.search(r"#(\d+)", line)[1]) for line in lines[:-1]] == stored[:len(lines) - 1]
    assert "larger than the broker accepts" in shown.stderr and "events" in shown.stderr, shown.stderr
