"""The frame cache: a ring of the last N captioned frames, looked up by ``frame_id``.

Explanation requests name a frame by its id (or ``latest``); the cache holds what the
model saw (the frame at the bundle's input size) and the caption that was published, so
the explanation is of exactly that caption.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from daemon.captioner import CaptionResult


@dataclass(frozen=True)
class CachedFrame:
    """A captioned frame: id, capture time (Unix s), model-size RGB image, caption, ground truth."""

    frame_id: int
    ts: float
    image: np.ndarray  # RGB uint8 at the bundle's input size: what the model saw
    caption: CaptionResult
    ground_truth: str | None = None


class FrameCache:
    """Thread-safe ring of the last ``size`` frames by frame_id (the oldest goes first)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"frame cache size must be at least 1, got {size}")
        self.size = size
        self._frames: OrderedDict[int, CachedFrame] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, frame: CachedFrame) -> None:
        """Add a frame, evicting the oldest when full."""
        with self._lock:
            self._frames[frame.frame_id] = frame
            self._frames.move_to_end(frame.frame_id)
            while len(self._frames) > self.size:
                self._frames.popitem(last=False)

    def get(self, frame_id: int) -> CachedFrame | None:
        """The frame with this id, or None if it was never cached or has been evicted."""
        with self._lock:
            return self._frames.get(frame_id)

    def latest(self) -> CachedFrame | None:
        """The newest frame, or None while the cache is empty."""
        with self._lock:
            return next(reversed(self._frames.values()), None)

    def frame_ids(self) -> list[int]:
        """Ids of the cached frames, oldest first."""
        with self._lock:
            return list(self._frames)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
