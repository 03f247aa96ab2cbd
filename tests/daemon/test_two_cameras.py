"""Two daemons (cameras ``cam`` and ``cam2``) on one Mosquitto and one prefix: each has its
own availability, discovery ids, explain topics and snapshot folder, and stopping one
leaves the other online and captioning. Also: the explain image topic holds a decodable
retained PNG (the placeholder) from the daemon's start."""

from __future__ import annotations

import json
import signal
import time

import cv2
import numpy as np

from daemon.contract import CameraTopics
from tests.conftest import START_TIMEOUT, daemon_config, wait_until

PREFIX = "explaincam"
CAM, CAM2 = (CameraTopics.for_camera(PREFIX, name) for name in ("cam", "cam2"))


def start(daemon_process, tmp_path, port, camera):
    config = daemon_config(tmp_path, port, snapshot={"dir": str(tmp_path / f"snapshot-{camera}")})
    config["camera"]["name"] = camera
    return daemon_process(config)


def live(collector, topic, since=0.0):
    return [m for m in collector.on(topic, since) if not m.retain]


def retained(collect, port, *topics):
    """What a client subscribing now gets retained on each topic (None where nothing is retained)."""
    late = collect(port, *topics)
    time.sleep(1.0)
    return {t: next((m.payload for m in late.on(t) if m.retain), None) for t in topics}


def test_stopping_one_camera_leaves_the_other_online_and_captioning(mosquitto, collect, daemon_process, tmp_path):
    watcher = collect(mosquitto.port, f"{PREFIX}/#", "homeassistant/+/+/+/config")
    first = start(daemon_process, tmp_path, mosquitto.port, "cam")
    second = start(daemon_process, tmp_path, mosquitto.port, "cam2")
    for topics in (CAM, CAM2):
        watcher.wait_for(topics.availability, lambda m: m.payload == b"online", timeout=START_TIMEOUT)
        wait_until(lambda: len(live(watcher, topics.caption)) >= 3, 30, message=f"captions on {topics.caption}")

    # The explanation image is there from the start: a retained, decodable PNG, and its info says so.
    start_state = retained(collect, mosquitto.port, CAM.explain_image, CAM.explain_image_info)
    picture = cv2.imdecode(np.frombuffer(start_state[CAM.explain_image], np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape[2] == 3
    assert json.loads(start_state[CAM.explain_image_info]) == {"placeholder": True, "made_at": None,
                                                               "note": "no explanation yet"}

    # Discovery: fourteen entities, ids unique, each camera's pointing at its own availability.
    wait_until(lambda: len({m.topic for m in watcher.on_prefix("homeassistant/")}) >= 14, 10,
               message="fourteen discovery messages")
    configs = list({m.topic: m.json() for m in watcher.on_prefix("homeassistant/")}.values())
    assert len(configs) == len({c["unique_id"] for c in configs}) == 14  # seven entities per camera
    assert {c["availability_topic"] for c in configs} == {CAM.availability, CAM2.availability}

    stopped_at = time.monotonic()
    second.stop(signal.SIGTERM)
    exited_at = time.monotonic()
    watcher.wait_for(CAM2.availability, lambda m: m.payload == b"offline", since=stopped_at, timeout=5)
    wait_until(lambda: len(live(watcher, CAM.caption, exited_at)) >= 3, 30,
               message="captions of cam after cam2 stopped")
    assert not live(watcher, CAM2.caption, exited_at + 0.5)
    assert [m.payload for m in watcher.on(CAM.availability, stopped_at)] == []  # cam's availability untouched

    now = retained(collect, mosquitto.port, CAM.availability, CAM2.availability)
    assert now == {CAM.availability: b"online", CAM2.availability: b"offline"}
    assert first.process.poll() is None

    # Each daemon wrote its own snapshot folder.
    for camera in ("cam", "cam2"):
        assert f"<h1>{camera}</h1>" in (tmp_path / f"snapshot-{camera}" / "index.html").read_text()
