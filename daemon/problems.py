"""Log a recurring problem once per kind, and its end once: a failing disk must not flood the log.

A problem's kind is its exception type and errno, never its text: an ``OSError`` of an
atomic write names a random temporary file, so every failure would look new.
"""

from __future__ import annotations

import logging
import time


def problem_kind(exc: BaseException) -> tuple[str, int | None]:
    """What makes two failures the same problem: exception type and errno."""
    return type(exc).__name__, getattr(exc, "errno", None)


def describe_problem(exc: BaseException) -> str:
    """A short reason without temporary file names: ``Permission denied`` rather than the whole OSError."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class RecurringProblem:
    """``failed(exc)`` logs an error when the kind of problem changes; ``succeeded()`` logs the recovery."""

    def __init__(self, logger: logging.Logger, action: str, settle_s: float = 0.0, clock=time.monotonic):
        """``settle_s``: a success counts as the end of the problem only this long after the last failure
        (a nearly full disk lets some writes through: one line for the whole spell, not one per flap)."""
        self.logger = logger
        self.action = action  # e.g. "write the snapshot files in /var/lib/explaincam"
        self.settle_s = settle_s
        self._clock = clock
        self._last_failure = float("-inf")
        self.kind: tuple[str, int | None] | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        """Count a failure; log it when it is the first of its kind in a row."""
        self.failures += 1
        self._last_failure = self._clock()
        kind = problem_kind(exc)
        if kind != self.kind:
            self.kind = kind
            self.logger.error("cannot %s: %s (logged once until it works again)", self.action, describe_problem(exc))

    def succeeded(self) -> None:
        """After failures: log once that it works again (``settle_s`` after the last failure)."""
        if self.kind is not None and self._clock() - self._last_failure < self.settle_s:
            return
        if self.kind is not None:
            self.logger.info("can %s again, after %d failed attempts", self.action, self.failures)
        self.kind, self.failures = None, 0
