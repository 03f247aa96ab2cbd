"""A dependency-free progress line for long offline work (scenes, images, conversion)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Callable ``progress(done, total)`` that redraws one status line on stderr."""

    def __init__(self, label: str, enabled: bool | int = True, stream=None):
        self.label, self.enabled = label, bool(enabled)
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` items are finished."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = now - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{self.label}: [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{total} {elapsed:.0f}s eta {eta:.0f}s{end}")
        self.stream.flush()
