"""Two daemons on one broker and prefix, history at its defaults: ``explaincam history
--all-cameras`` finds both through their retained availability, asks both and merges;
each stored event fires Home Assistant's event entity as its discovery config says; and
the default budget keeps a scene stream that changes caption every frame to 10 events."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from daemon.contract import CameraTopics
from tests.conftest import REPO, START_TIMEOUT, STATS, daemon_config, wait_until
from tests.history.helpers import HistoryAsker

CAMERAS = ("cam", "cam2")


def test_all_cameras_search_event_entity_and_default_budget(tmp_path, mosquitto, collect, daemon_process):
    watcher = collect(mosquitto.port, "explaincam/#", "homeassistant/event/#")
    for camera in CAMERAS:
        config = daemon_config(tmp_path, mosquitto.port, snapshot={"dir": str(tmp_path / f"snapshot-{camera}")})
        config["camera"]["name"] = camera
        daemon_process(config)
    for camera in CAMERAS:
        watcher.wait_for(CameraTopics.for_camera("explaincam", camera).caption, lambda m: not m.retain,
                         timeout=START_TIMEOUT)
    time.sleep(6.0)  # about 30 scenes each, every one a new caption
    cutoff = time.time()
    asker = HistoryAsker(mosquitto.port)
    direct = {camera: asker.ask({"until": cutoff, "limit": 100, "thumbnails": False}, camera=camera)
              for camera in CAMERAS}
    assert all(answer and answer["status"] == "ok" and answer["events"] for answer in direct.values()), direct

    result = subprocess.run([sys.executable, "-m", "daemon.cli", "history", "--all-cameras", "--json", "--limit",
                             "100", "--until", str(cutoff), "--host", "127.0.0.1", "--port", str(mosquitto.port)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    assert merged["cameras"] == list(CAMERAS) and merged["errors"] == {}
    got = [(e["camera"], e["event_id"]) for e in merged["events"]]
    want = {(camera, e["event_id"]) for camera, answer in direct.items() for e in answer["events"]}
    assert set(got) == want and len({c for c, _ in got}) == 2
    starts = [e["start"] for e in merged["events"]]
    assert starts == sorted(starts, reverse=True)

    # Home Assistant's event entity: its config, and one non-retained message per stored event
    configs = {m.topic: m.json() for m in watcher.on_prefix("homeassistant/event/")}
    assert len(configs) == 2
    for camera in CAMERAS:
        topics = CameraTopics.for_camera("explaincam", camera)
        config = next(c for c in configs.values() if c["state_topic"] == topics.history_event)
        assert isinstance(config["event_types"], list) and all(isinstance(t, str) for t in config["event_types"])
        fired = [m for m in watcher.on(topics.history_event)]
        assert fired and not any(m.retain for m in fired)
        attributes = [json.loads(m.payload) for m in fired]
        for payload in attributes:  # as event.mqtt reads it: event_type popped, must be one of event_types
            assert payload.pop("event_type") in config["event_types"]
            assert {"event_id", "caption", "start"} <= payload.keys()
        stored = {e["event_id"]: e["caption"] for e in direct[camera]["events"]}
        announced = {p["event_id"]: p["caption"] for p in attributes if p["event_id"] in stored}
        assert announced == stored

    # the default budget: 10 events at once, then 120 an hour; the rest counted as dropped
    def history_stats(camera):
        stats = [m.json() for m in watcher.on(STATS) if m.json().get("camera") == camera and "history" in m.json()]
        return stats[-1]["history"] if stats else None
    for camera in CAMERAS:
        stats = wait_until(lambda: history_stats(camera), 10, message="stats with history")
        assert stats["events_stored"] <= 11 and stats["events_seen"] >= 20, stats
        assert stats["dropped_rate_limited"] == stats["events_seen"] - stats["events_stored"], stats
    asker.close()
