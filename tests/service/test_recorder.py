"""What Home Assistant's recorder would store of one camera: 60 s of a scene stream whose
caption repeats, captioned by the real caption loop and shipped bundle, fed through the
discovered entities' templates (tests/service/home_assistant.py).

The frames carry timestamps 0.5 s apart (the default 2 captions/s), so 60 s of stream
take as long as the model needs for 120 frames, not a minute.
"""

from __future__ import annotations

import json
import time

import pytest

from daemon.captioner import Captioner
from daemon.capture import CaptionLoop
from daemon.config import AppConfig
from daemon.contract import CameraTopics
from daemon.broker import free_port
from daemon.discovery import discovery_messages
from daemon.framecache import FrameCache
from daemon.mqtt import MqttPublisher
from daemon.notify import SystemdNotifier
from daemon.scenes import scene_at
from daemon.sources import Frame, FrameGrabber, make_source
from tests.conftest import SHIPPED_BUNDLE
from tests.service.home_assistant import ImageEntity, SensorEntity

TOPICS = CameraTopics.for_camera("explaincam", "cam")
RATE = 2.0  # captions per second, the default caption.rate
SECONDS = 60
HOLD = 10  # frames each scene stays in view (5 s)


class RecordingPublisher(MqttPublisher):
    """A real publisher with no broker behind it that keeps every message it is given, in order."""

    def __init__(self, cfg: AppConfig):
        super().__init__(cfg.mqtt, "recorder-test", TOPICS.availability)
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic, payload, **options):
        self.published.append((topic, payload if isinstance(payload, bytes) else payload.encode()))
        return super().publish(topic, payload, **options)


@pytest.fixture(scope="module")
def stream():
    """(messages published, captions of the frames) for 60 s of three scenes shown in turn, 5 s each."""
    captioner = Captioner.from_path(SHIPPED_BUNDLE, threads=1)
    scenes, captions = [], set()
    for index in range(40):  # three scenes the model captions differently
        scene = scene_at(7, index)
        caption = captioner.caption(scene.image).caption
        if caption not in captions:
            scenes.append(scene)
            captions.add(caption)
        if len(scenes) == 3:
            break
    cfg = AppConfig.model_validate({"mqtt": {"port": free_port()}, "snapshot": {"enabled": False}})
    publisher = RecordingPublisher(cfg)
    loop = CaptionLoop(cfg, captioner, FrameGrabber(make_source(cfg.camera.source)), FrameCache(4), publisher,
                       TOPICS, SystemdNotifier(None))
    start = time.time()
    frames = int(SECONDS * RATE)
    for i in range(frames):
        scene = scenes[(i // HOLD) % len(scenes)]
        loop.process(Frame(i + 1, scene.image, start + i / RATE, time.monotonic(), 1.0, scene.caption))
    per_frame = [json.loads(p)["caption"] for t, p in publisher.published if t == TOPICS.caption]
    assert len(per_frame) == frames
    return publisher.published, per_frame


def entity_config(key: str) -> dict:
    return next(payload for topic, payload in discovery_messages("explaincam", "cam", model_name="m", version="v")
                if topic.split("/")[-2] == key)


def changes(captions: list[str]) -> int:
    """How often the caption differs from the one before (the first one counts)."""
    return sum(1 for i, caption in enumerate(captions) if i == 0 or caption != captions[i - 1])


def test_caption_sensor_records_one_state_per_caption_change(stream):
    published, per_frame = stream
    sensor = SensorEntity(entity_config("caption"))
    for topic, payload in published:
        sensor.feed(topic, payload)
    expected = changes(per_frame)
    assert expected == SECONDS * RATE // HOLD  # the caption changed every 5 s: 12 times
    print(f"caption sensor: {len(sensor.writes)} state changes in {SECONDS} s of {len(per_frame)} captions")
    assert len(sensor.writes) == expected
    # each recorded state is the caption of that stretch, with attributes that stay put until the next one
    run_starts = [caption for i, caption in enumerate(per_frame) if i == 0 or caption != per_frame[i - 1]]
    assert [state for state, _ in sensor.writes] == run_starts
    for state, attributes in sensor.writes:
        assert attributes["caption"] == state and set(attributes) == {"caption", "since", "frame_id", "model"}


def test_snapshot_image_changes_at_most_every_jpeg_interval(stream):
    published, _ = stream
    image = ImageEntity(entity_config("snapshot"))
    for topic, payload in published:
        image.feed(topic, payload)
    interval = AppConfig().mqtt.jpeg_interval_s
    print(f"snapshot image: {image.writes} states in {SECONDS} s = {image.writes * 3600 // SECONDS} per hour")
    assert interval == 10.0 and image.writes == SECONDS // interval
