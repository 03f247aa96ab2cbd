"""The systemd notify protocol (sd_notify) on a plain AF_UNIX datagram socket.

Without ``NOTIFY_SOCKET`` in the environment every call is a no-op, so the daemon runs
the same under systemd, in a terminal and in tests. An address starting with ``@`` is in
the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 to systemd (or nowhere)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address
        self._target = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if address else None
        # systemd expects a ping within WATCHDOG_USEC; ping at half of it (every 10 s when unset).
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec else 10.0
        self._last_watchdog = float("-inf")

    @classmethod
    def from_environment(cls, environ: dict | None = None) -> "SystemdNotifier":
        """A notifier for ``NOTIFY_SOCKET``; its watchdog period from ``WATCHDOG_USEC`` (if for this pid)."""
        environ = os.environ if environ is None else environ
        watchdog_usec = None
        pid = environ.get("WATCHDOG_PID")
        if environ.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            watchdog_usec = int(environ["WATCHDOG_USEC"])
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._socket is not None

    def send(self, message: str) -> bool:
        """Send one raw notify message (``KEY=value`` lines); False if not sent."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto(message.encode(), self._target)
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd that start-up is complete (READY=1), with an optional status line."""
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        """Set the one-line status that ``systemctl status`` shows."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Ping the watchdog (WATCHDOG=1), at most once per half watchdog period.

        Call it from the loop whose progress it vouches for, never from a timer thread.
        """
        now = time.monotonic()
        if now - self._last_watchdog < self.watchdog_interval_s:
            return False
        self._last_watchdog = now
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell systemd that shutdown has begun (STOPPING=1)."""
        return self.send("STOPPING=1")

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
