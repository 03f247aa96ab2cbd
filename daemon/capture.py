"""The caption loop: newest frame → (change gate) → int8 encoder + decoder → cache, MQTT, snapshot.

It runs on the main thread at a target rate (or as fast as the model goes), pings the
systemd watchdog once per iteration (so the watchdog vouches for real progress), and
publishes the source state when it changes and the stats every few seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

import cv2
import numpy as np

from daemon.captioner import Captioner
from daemon.config import AppConfig
from daemon.contract import CameraTopics, PrefixTopics, caption_message, caption_state_message, source_message
from daemon.framecache import CachedFrame, FrameCache
from daemon.imaging import encode_jpeg, jpeg_within
from daemon.mqtt import MqttPublisher
from daemon.notify import SystemdNotifier
from daemon.snapshot import SnapshotFolder, draw_caption
from daemon.sources import Frame, FrameGrabber
from daemon.stats import CaptionStats

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 32
FRAME_WAIT_S = 0.5  # the loop comes round at least this often, frames or not


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A small grey float32 image for change detection."""
    small = cv2.resize(rgb, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def frame_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) of two thumbnails."""
    return float(np.mean(np.abs(a - b)))


class CaptionLoop:
    """Captions the grabber's newest frames and hands each result to the cache, MQTT and the snapshot folder."""

    def __init__(self, cfg: AppConfig, captioner: Captioner, grabber: FrameGrabber, cache: FrameCache,
                 publisher: MqttPublisher, topics: CameraTopics, notifier: SystemdNotifier,
                 snapshot: SnapshotFolder | None = None, stats: CaptionStats | None = None):
        self.cfg = cfg
        self.captioner = captioner
        self.grabber = grabber
        self.cache = cache
        self.publisher = publisher
        self.topics = topics
        self.notifier = notifier
        self.snapshot = snapshot
        self.stats = stats or CaptionStats()
        self.model_name = captioner.bundle.name
        self.frame_id = 0
        self.last_caption: str | None = None
        #: more sections of the stats message: name -> callable giving a JSON-able value
        self.extra_stats: dict[str, Callable[[], object]] = {"mqtt": publisher.status}
        #: called with every captioned frame on this thread; each must return at once (the timeline's tracker)
        self.frame_observers: list[Callable[[CachedFrame], None]] = []
        self._last_thumbnail: np.ndarray | None = None
        self._source_version = -1
        self._mqtt_state = ""
        self._next_stats = time.monotonic() + min(5.0, cfg.mqtt.stats_interval_s)
        self._last_jpeg_ts = float("-inf")
        self._stats_topic = PrefixTopics(topics.prefix).stats

    def run(self, stop: threading.Event) -> None:
        """Caption until ``stop`` is set."""
        rate = self.cfg.caption.rate
        next_due = time.monotonic()
        last_seq = 0
        while not stop.is_set():
            self.notifier.watchdog()
            self._report_state_changes()
            self._publish_stats_if_due()
            if rate > 0 and stop.wait(max(0.0, min(FRAME_WAIT_S, next_due - time.monotonic()))):
                break
            if rate > 0 and time.monotonic() < next_due:
                continue
            frame = self.grabber.wait_frame(last_seq, FRAME_WAIT_S)
            if frame is None:
                continue
            last_seq = frame.seq
            if rate > 0:
                next_due = max(next_due + 1.0 / rate, time.monotonic())
            self.process(frame)

    def process(self, frame: Frame) -> CachedFrame | None:
        """Caption one frame unless the change gate skips it; publish and cache the result."""
        thumb = thumbnail(frame.image)
        threshold = self.cfg.caption.change_threshold
        if threshold > 0 and self._last_thumbnail is not None and frame_change(thumb, self._last_thumbnail) < threshold:
            self.stats.record_skip()
            return None
        image = self.captioner.resize(frame.image)
        try:
            result = self.captioner.caption(image)
        except Exception:
            log.exception("captioning frame %d failed", frame.seq)
            self.stats.record_error()
            return None
        total_ms = round((time.monotonic() - frame.grab_started) * 1e3, 2)
        self._last_thumbnail = thumb
        self.frame_id += 1
        cached = CachedFrame(self.frame_id, frame.ts, image, result, frame.ground_truth)
        self.cache.put(cached)
        for observe in self.frame_observers:
            observe(cached)
        message = caption_message(self.frame_id, frame.ts, result.caption, result.tokens, result.score,
                                  {"grab_ms": frame.grab_ms, **result.timings, "total_ms": total_ms},
                                  self.model_name, frame.ground_truth,
                                  result.familiarity.to_json() if result.familiarity is not None else None)
        self.publisher.publish(self.topics.caption, json.dumps(message), retain=True)
        if result.caption != self.last_caption:  # the state topic hears of changes only (Home Assistant's recorder)
            self.publisher.publish(self.topics.caption_state, json.dumps(
                caption_state_message(result.caption, frame.ts, self.frame_id, self.model_name)), retain=True)
        self._publish_image(frame, message)
        self.stats.record_caption(total_ms)
        if result.caption != self.last_caption:
            log.debug("frame %d: %s", self.frame_id, result.caption)
        self.last_caption = result.caption
        return cached

    def _publish_image(self, frame: Frame, message: dict) -> None:
        """The JPEG with the caption drawn on it: to MQTT and the snapshot folder, as configured; on MQTT
        made smaller (quality, then size) where the broker's packet limit asks for it."""
        write_snapshot = self.snapshot is not None and self.snapshot.due()
        publish_jpeg = self._jpeg_due(frame.ts)
        if not (publish_jpeg or write_snapshot):
            return
        drawn = draw_caption(frame.image, message["caption"], self.cfg.snapshot.width)
        jpeg = encode_jpeg(drawn, self.cfg.snapshot.jpeg_quality)
        if publish_jpeg:
            self.publisher.publish(self.topics.snapshot, jpeg, retain=True, fit=lambda room: jpeg_within(drawn, room))
            self._last_jpeg_ts = frame.ts
        if write_snapshot:
            self.snapshot.write(jpeg, message)

    def _jpeg_due(self, ts: float) -> bool:
        """Whether the frame taken at ``ts`` goes out on the snapshot topic: at most one per
        ``mqtt.jpeg_interval_s`` of frame time (a clock set back starts the interval again)."""
        if not self.cfg.mqtt.publish_jpeg:
            return False
        elapsed = ts - self._last_jpeg_ts
        return elapsed >= self.cfg.mqtt.jpeg_interval_s or elapsed < 0

    def _report_state_changes(self) -> None:
        """Publish the source state (retained) and update the systemd status when something changed."""
        version = self.grabber.state_version
        mqtt_state = self.publisher.state
        if version == self._source_version and mqtt_state == self._mqtt_state:
            return
        if version != self._source_version:
            state = self.grabber.state
            self.publisher.publish(self.topics.source, json.dumps(
                source_message(state.to_json(), self.grabber.source.describe())), retain=True)
        self._source_version, self._mqtt_state = version, mqtt_state
        self.notifier.status(self.status_line())

    def status_line(self) -> str:
        """One line for ``systemctl status``: rate, camera and broker state, last caption."""
        source = self.grabber.state
        mqtt = self.publisher.state + (f" ({self.publisher.last_error})" if self.publisher.last_error else "")
        line = f"{self.stats.fps():.1f} captions/s; camera {source.state}"
        if source.state != "ok":
            line += f" ({source.message})"
        line += f"; MQTT {mqtt}"
        if self.last_caption:
            line += f"; last: {self.last_caption}"
        return line

    def _publish_stats_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.cfg.mqtt.stats_interval_s
        state = self.grabber.state
        extra = {
            "camera": self.cfg.camera.name,
            "frames_grabbed": self.grabber.grabbed,
            "frames_dropped": self.grabber.dropped,
            "source_state": state.state,
            "source_failures": state.failures,
            "reconnects": self.publisher.reconnects,
            "cache_frames": len(self.cache),
        }
        extra.update({name: provide() for name, provide in self.extra_stats.items()})
        message = self.stats.snapshot(self.cfg.mqtt.stats_interval_s, **extra)
        # QoS 1: its acknowledgement also confirms the QoS 0 captions sent before it (mqtt.py)
        self.publisher.publish(self._stats_topic, json.dumps(message), qos=1)
        self.notifier.status(self.status_line())
