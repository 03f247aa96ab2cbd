"""Events: a stretch of frames with one caption, cut from the caption stream, and how many get kept.

:class:`EventTracker` turns the caption of every frame into events. A caption that differs
from the open event's starts a *pending run*; the run becomes the next event once it has
lasted ``hold_frames`` frames, or once a third caption follows it. A run shorter than
``hold_frames`` followed by the open event's caption again is a flicker: its frames count
into the open event and no event is made (``A A B A`` is one event, ``A A B C`` three).

:class:`EventBudget` bounds what reaches the SD card: events per hour (a token bucket with
bursts of ``BURST_EVENTS``) and the lossless key frames' bytes per day (an event over that
budget is kept without its lossless frame). The demo's scenes change caption every frame
at 2 captions/s; without a bound that is 170,000 events and about 17 GB of frames a day.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from daemon.imaging import encode_jpeg

BURST_EVENTS = 10  # events the hourly budget lets through at once
FRAME_BURST_S = 3600.0  # the frame-bytes budget may be spent an hour ahead


@dataclass
class Event:
    """One event: the caption, when it was seen, how familiar the frames were, its key frame and features.

    ``image`` is the event's first frame at the model's input size (RGB uint8, what the model saw);
    ``features`` the encoder's feature vector of that frame.
    """

    event_id: int
    start: float
    end: float
    caption: str
    tokens: list[int]
    words: list[str]
    score: float
    frames: int
    first_frame_id: int
    familiarity: float | None = None
    out_of_distribution: bool = False
    image: np.ndarray | None = field(default=None, repr=False)
    features: np.ndarray | None = field(default=None, repr=False)


@dataclass
class _Run:
    """Consecutive frames with one caption that differs from the open event's."""

    frame_id: int
    ts: float
    last_ts: float
    result: object  # daemon.captioner.CaptionResult
    image: np.ndarray
    count: int = 1


class EventTracker:
    """Cuts the caption stream into events (see the module doc); not thread-safe: the caption loop calls it.

    :meth:`observe` returns what changed: ``("opened", event)`` when an event starts (its
    ``end`` is its first frame's time) and ``("closed", event)`` when it ends (``end`` is
    when the next event started).
    """

    def __init__(self, hold_frames: int = 2, first_id: int = 0):
        self.hold_frames = hold_frames
        self.current: Event | None = None
        self._pending: _Run | None = None
        self._last_id = first_id

    def observe(self, frame_id: int, ts: float, image: np.ndarray, result) -> list[tuple[str, Event]]:
        """Take one captioned frame (``result``: a CaptionResult); the events opened and closed by it."""
        if self.current is None:
            return [("opened", self._open(_Run(frame_id, ts, ts, result, image)))]
        caption = result.caption
        if caption == self.current.caption:
            if self._pending is not None:  # a flicker: its frames belong to the open event
                self.current.frames += self._pending.count
                self._pending = None
            self.current.frames += 1
            self.current.end = ts
            return []
        changes: list[tuple[str, Event]] = []
        if self._pending is not None and caption == self._pending.result.caption:
            self._pending.count += 1
            self._pending.last_ts = ts
        else:
            if self._pending is not None:  # not a flicker: another caption followed it
                changes += self._promote()
            self._pending = _Run(frame_id, ts, ts, result, image)
        if self._pending.count >= self.hold_frames:
            changes += self._promote()
        return changes

    def close(self, ts: float | None = None) -> list[tuple[str, Event]]:
        """End the open event (the daemon stops); a pending run counts into it."""
        if self.current is None:
            return []
        event = self.current
        if self._pending is not None:
            event.frames += self._pending.count
            event.end = self._pending.last_ts
        if ts is not None:
            event.end = max(event.end, ts)
        self.current, self._pending = None, None
        return [("closed", event)]

    def _promote(self) -> list[tuple[str, Event]]:
        """The pending run becomes the open event; the old one closes when the run started."""
        run, self._pending = self._pending, None
        closed = self.current
        closed.end = run.ts
        return [("closed", closed), ("opened", self._open(run))]

    def _open(self, run: _Run) -> Event:
        """A new event from a run of frames."""
        result = run.result
        self._last_id = max(self._last_id + 1, int(run.ts * 1000))  # ids grow with time, unique per store
        familiarity = result.familiarity
        self.current = Event(
            event_id=self._last_id, start=run.ts, end=run.last_ts, caption=result.caption,
            tokens=list(result.tokens), words=list(result.words), score=float(result.score), frames=run.count,
            first_frame_id=run.frame_id,
            familiarity=None if familiarity is None else float(familiarity.familiarity),
            out_of_distribution=bool(familiarity is not None and familiarity.out_of_distribution),
            image=run.image, features=result.features)
        return self.current


class EventBudget:
    """Token buckets for events per hour and lossless-frame bytes per day (thread-safe enough: one caller)."""

    def __init__(self, events_per_hour: float, frame_bytes_per_day: float, clock=time.monotonic):
        self._clock = clock
        self.events_per_s = events_per_hour / 3600.0
        self.frame_bytes_per_s = frame_bytes_per_day / 86400.0
        self._event_tokens = float(BURST_EVENTS)
        self._frame_tokens = self.frame_bytes_per_s * FRAME_BURST_S
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._last = max(0.0, now - self._last), now
        self._event_tokens = min(float(BURST_EVENTS), self._event_tokens + elapsed * self.events_per_s)
        self._frame_tokens = min(self.frame_bytes_per_s * FRAME_BURST_S,
                                 self._frame_tokens + elapsed * self.frame_bytes_per_s)

    def take_event(self) -> bool:
        """Whether one more event may be stored now (and count it)."""
        self._refill()
        if self._event_tokens < 1.0:
            return False
        self._event_tokens -= 1.0
        return True

    def take_frame_bytes(self, size: int) -> bool:
        """Whether a lossless frame of ``size`` bytes may be written now (and count it)."""
        self._refill()
        if self._frame_tokens < size:
            return False
        self._frame_tokens -= size
        return True


def encode_thumbnail(image: np.ndarray, side: int, quality: int = 80) -> bytes:
    """A small JPEG of an RGB frame for people (its longer side ``side`` pixels)."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return encode_jpeg(small, quality)


def pack_features(features: np.ndarray | None) -> bytes | None:
    """The feature vector as float16 bytes (half the size; cosine similarity does not notice)."""
    return None if features is None else np.asarray(features, np.float16).tobytes()


def unpack_features(blob: bytes | None) -> np.ndarray | None:
    """The float32 vector of :func:`pack_features`' bytes."""
    return None if blob is None else np.frombuffer(blob, np.float16).astype(np.float32)
