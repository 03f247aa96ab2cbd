"""The caption loop in-process with the shipped bundle: messages, cache, change gate, target rate."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from daemon.capture import CaptionLoop, frame_change, thumbnail
from daemon.contract import CameraTopics
from daemon.captioner import Captioner
from daemon.config import AppConfig
from daemon.broker import free_port
from daemon.framecache import FrameCache
from daemon.mqtt import MqttPublisher
from daemon.notify import SystemdNotifier
from daemon.scenes import scene_at
from daemon.snapshot import SnapshotFolder
from daemon.sources import Frame, FrameGrabber, make_source
from tests.conftest import SHIPPED_BUNDLE

TOPICS = CameraTopics.for_camera("explaincam", "cam")


@pytest.fixture(scope="module")
def captioner():
    return Captioner.from_path(SHIPPED_BUNDLE, threads=1)


class RecordingPublisher(MqttPublisher):
    """A real publisher with no broker behind it that also keeps what it was asked to publish."""

    def __init__(self, config):
        super().__init__(config.mqtt, "capture-test", TOPICS.availability)
        self.published: list[tuple[str, bytes, bool]] = []

    def publish(self, topic, payload, **options):
        """Record the message, then publish it with every option the caller gave (``fit`` included)."""
        self.published.append((topic, payload if isinstance(payload, bytes) else payload.encode(),
                               options.get("retain", False)))
        return super().publish(topic, payload, **options)

    def on(self, topic):
        return [payload for t, payload, _ in self.published if t == topic]


def make_loop(captioner, tmp_path, grabber=None, **caption_settings):
    cfg = AppConfig.model_validate({"caption": caption_settings, "mqtt": {"port": free_port()},
                                    "snapshot": {"dir": str(tmp_path), "min_interval_s": 0}})
    grabber = grabber or FrameGrabber(make_source(cfg.camera.source))
    publisher = RecordingPublisher(cfg)
    snapshot = SnapshotFolder(tmp_path, "cam", 0)
    return CaptionLoop(cfg, captioner, grabber, FrameCache(4), publisher, TOPICS, SystemdNotifier(None), snapshot)


def frame_of(image, seq=1, truth=None):
    return Frame(seq, image, time.time(), time.monotonic(), 1.0, truth)


def test_a_frame_is_captioned_cached_and_published(captioner, tmp_path):
    loop = make_loop(captioner, tmp_path)
    scene = scene_at(7, 0)
    big = np.repeat(np.repeat(scene.image, 2, axis=0), 2, axis=1)  # a 448x448 camera frame
    cached = loop.process(frame_of(big, truth=scene.caption))
    assert cached.frame_id == 1 and cached.image.shape == (224, 224, 3)
    assert loop.cache.get(1) is cached and cached.ground_truth == scene.caption
    (payload,) = loop.publisher.on(TOPICS.caption)
    message = json.loads(payload)
    assert message["caption"] == cached.caption.caption and message["ground_truth"] == scene.caption
    assert message["timings"]["total_ms"] >= message["timings"]["encoder_ms"]
    assert loop.publisher.on(TOPICS.snapshot)[0][:2] == b"\xff\xd8"  # JPEG
    assert json.loads((tmp_path / "latest.json").read_text())["frame_id"] == 1


def test_change_gate_skips_frames_that_barely_changed(captioner, tmp_path):
    loop = make_loop(captioner, tmp_path, change_threshold=4.0)
    image = scene_at(7, 1).image
    assert loop.process(frame_of(image, 1)) is not None
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    assert frame_change(thumbnail(image), thumbnail(noisy)) < 4.0
    assert loop.process(frame_of(noisy, 2)) is None
    assert loop.process(frame_of(scene_at(7, 2).image, 3)) is not None
    assert loop.stats.skipped_unchanged == 1 and loop.frame_id == 2


def test_target_rate_is_held_with_a_faster_camera(captioner, tmp_path):
    cfg = AppConfig.model_validate({"camera": {"source": {"type": "scenes", "fps": 40}}})
    grabber = FrameGrabber(make_source(cfg.camera.source))
    loop = make_loop(captioner, tmp_path, grabber, rate=4.0)
    stop = threading.Event()
    grabber.start()
    runner = threading.Thread(target=loop.run, args=(stop,))
    runner.start()
    time.sleep(2.0)
    stop.set()
    runner.join(2)
    grabber.stop()
    assert 6 <= loop.stats.captions <= 10, loop.stats.captions
    assert grabber.dropped > loop.stats.captions  # the rest were never captioned: newest frame only
