"""Runtime statistics of the capture loop and the box, for ``{prefix}/stats``.

The maths (rates, percentiles) is plain; the box readings come from /proc and /sys and
are ``None`` where the box has no such file.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

THERMAL_ROOT = Path("/sys/class/thermal")
LATENCY_WINDOW = 200  # captions kept for the latency percentiles


def read_rss_bytes(status_file: str | Path = "/proc/self/status") -> int | None:
    """Resident set size of this process from /proc (None where there is no /proc)."""
    try:
        for line in Path(status_file).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_cpu_temperature(thermal_root: str | Path = THERMAL_ROOT) -> float | None:
    """CPU temperature in °C from the first thermal zone (a CPU zone if one is named so), else None."""
    zones = sorted(Path(thermal_root).glob("thermal_zone*"))
    def is_cpu(zone: Path) -> bool:
        try:
            return "cpu" in (zone / "type").read_text().lower()
        except OSError:
            return False
    for zone in sorted(zones, key=lambda z: not is_cpu(z)):
        try:
            return round(int((zone / "temp").read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


def percentiles(values, qs=(50, 95)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ...}`` of a sequence (None when empty)."""
    if not len(values):
        return {f"p{q}": None for q in qs}
    result = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return {f"p{q}": round(float(v), 2) for q, v in zip(qs, result)}


class CaptionStats:
    """Counters and latencies of the caption loop; thread-safe; ``snapshot()`` makes the stats message."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.captions = 0
        self.skipped_unchanged = 0
        self.errors = 0
        self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._caption_times: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record_caption(self, total_ms: float) -> None:
        """Count one published caption and its latency."""
        with self._lock:
            self.captions += 1
            self._latencies_ms.append(total_ms)
            self._caption_times.append(self._clock())

    def record_skip(self) -> None:
        """Count a frame skipped because it barely changed."""
        with self._lock:
            self.skipped_unchanged += 1

    def record_error(self) -> None:
        """Count a frame that could not be captioned."""
        with self._lock:
            self.errors += 1

    def fps(self, window_s: float = 30.0) -> float:
        """Captions per second over the last ``window_s`` seconds."""
        now = self._clock()
        with self._lock:
            recent = [t for t in self._caption_times if now - t <= window_s]
        if not recent:
            return 0.0
        span = min(window_s, now - self.started)
        return round(len(recent) / span, 3) if span > 0 else 0.0

    def snapshot(self, window_s: float = 30.0, **extra) -> dict:
        """The stats message: loop figures, box readings and whatever ``extra`` adds (source, mqtt)."""
        with self._lock:
            latencies = list(self._latencies_ms)
            counts = {"captions": self.captions, "skipped_unchanged": self.skipped_unchanged, "errors": self.errors}
        rss = read_rss_bytes()
        return {
            "ts": round(time.time(), 3),
            "uptime_s": round(self._clock() - self.started, 1),
            "fps": self.fps(window_s),
            "latency_ms": percentiles(latencies),
            **counts,
            **extra,
            "rss_mb": round(rss / 2**20, 1) if rss is not None else None,
            "cpu_temp_c": read_cpu_temperature(),
            # The capture process must stay free of TensorFlow; this shows it does.
            "tensorflow_loaded": "tensorflow" in sys.modules or "keras" in sys.modules,
        }
