"""A second MQTT broker implementation for the fault suite: amqtt (PyPI), an asyncio broker that
speaks only MQTT 3.1.1, so the contract is not tuned to one broker's habits.

``AmqttBroker`` has LocalBroker's surface (``port``, ``start``, ``stop``, ``restart``, ``log_tail``
and the ``_process`` the hanging-broker test sends SIGSTOP to).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from daemon.broker import broker_answers

AMQTT = Path(sys.executable).parent / "amqtt"  # installed with the test extra (pyproject.toml)


class AmqttBroker:
    """An amqtt broker on 127.0.0.1:``port``, anonymous clients allowed."""

    protocol = "3.1.1"

    def __init__(self, port: int, workdir: Path):
        self.port = port
        self.workdir = Path(workdir)
        self.config_file = self.workdir / "amqtt.yaml"
        self.log_file = self.workdir / "amqtt.log"
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and wait until it accepts connections; RuntimeError with its log if it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen([str(AMQTT), "-c", str(self.config_file)], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not broker_answers("127.0.0.1", self.port, 0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"amqtt did not start on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 3 s)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(3)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """End the broker at once (SIGKILL), as a crash or a power cut would: no goodbye to its clients."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the broker's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
