"""What every explaincam process shares: its version, its exit code for a bad config, and (the
long-running ones, ``explaincam run`` in daemon/app.py and ``explaincam worker`` in
daemon/fleet/worker.py) how they set up their log output and their stop signals.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import sys
import threading
from typing import Callable

log = logging.getLogger("explaincam")

EXIT_CONFIG = 2  # bad config, model or MQTT settings: restarting will not help (the unit's RestartPreventExitStatus)


def package_version() -> str:
    """explaincam's installed version (pyproject.toml's), or "unknown" when run from a tree that is not installed."""
    try:
        return importlib.metadata.version("explaincam")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def setup_logging(level: str) -> None:
    """Log to stderr; without timestamps under systemd (the journal adds its own)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=fmt, force=True)


def install_signal_handlers(stop: threading.Event, on_second_stop: list[Callable[[], None]]) -> None:
    """SIGTERM and SIGINT set ``stop``; a second one runs ``on_second_stop`` (kill the explainer)
    and ends the process at once. SIGHUP (a closed terminal, ``systemctl kill -s HUP``) is
    logged and ignored: nothing is re-read at run time (restart to apply a changed config or
    password file), and dying of it would leave systemd's ``Restart=on-failure`` idle."""
    def handle_stop(signum, frame):
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.info("%s: stopping", name)
            stop.set()
            return
        log.warning("%s again while stopping: exiting at once", name)
        for action in on_second_stop:
            action()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def handle_hangup(signum, frame):
        log.warning("SIGHUP ignored: explaincam re-reads nothing while running; "
                    "restart it to apply a changed config or password file")

    signal.signal(signal.SIGTERM, handle_stop)
    signal.signal(signal.SIGINT, handle_stop)
    signal.signal(signal.SIGHUP, handle_hangup)
