"""A Mosquitto broker on loopback: finding or installing the binary, and ``LocalBroker``, a private one.

The demo starts a ``LocalBroker`` when no broker answers; the tests and the fleet bench use it too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto broker binary (often in /usr/sbin, outside a user's PATH), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def mosquitto_install_command(is_root: bool, sudo: str | None, apt_get: str | None) -> list[str] | None:
    """The apt-get command that installs Mosquitto here: as root directly, else through sudo; None if neither works."""
    if apt_get is None or not (is_root or sudo):
        return None
    command = [apt_get, "install", "-y", "-q", "mosquitto"]
    return command if is_root else [sudo, *command]


def install_mosquitto() -> str | None:
    """Install Debian's Mosquitto with apt-get (sudo when not root); the broker's path, or None with the reason printed."""
    command = mosquitto_install_command(os.geteuid() == 0, shutil.which("sudo"), shutil.which("apt-get"))
    if command is None:
        print("Mosquitto is not installed and cannot be installed from here (apt-get needs root or sudo).\n"
              "Install it with:  apt-get install mosquitto   (as root)\n"
              "or set mqtt.host/mqtt.port in the config to a broker you have.", flush=True)
        return None
    print(f"Mosquitto is missing; installing it: {' '.join(command)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env).returncode != 0:  # stale package lists: refresh them once
        subprocess.run([*command[:-3], "update", "-q"], env=env)
        if subprocess.run(command, env=env).returncode != 0:
            print(f"Installing Mosquitto failed ({' '.join(command)}); install it yourself or set "
                  "mqtt.host/mqtt.port in the config to a broker you have.", flush=True)
            return None
    return find_mosquitto()


def broker_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """A private Mosquitto on 127.0.0.1:``port`` (no persistence) that can be stopped and restarted on the same port."""

    def __init__(self, port: int, workdir: str | os.PathLike, extra_config: str = "", binary: str | None = None,
                 allow_anonymous: bool = True):
        self.port = port
        self.allow_anonymous = allow_anonymous
        self.workdir = Path(workdir)
        self.extra_config = extra_config
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed (sudo apt-get install mosquitto)")
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self._process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start the broker and wait until it accepts connections; RuntimeError with its log if it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(f"listener {self.port} 127.0.0.1\n"
                                    f"allow_anonymous {str(self.allow_anonymous).lower()}\n"
                                    f"persistence false\n{self.extra_config}")
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen([self.binary, "-c", str(self.config_file)], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not broker_answers("127.0.0.1", self.port, 0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 2 s)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(2)
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
