"""The daemon (``explaincam run -c CONFIG``, a subprocess) against Mosquitto with TLS and a
password file: it connects with the CA and the password, and when the password is wrong
it keeps running and says why in its log and in its systemd status.

The daemon's systemd side is checked too: a datagram socket stands in for systemd's
``NOTIFY_SOCKET`` and collects READY=1, STATUS= and WATCHDOG=1, as the unit's
Type=notify and WatchdogSec= expect.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from daemon.contract import CameraTopics
from tests.conftest import daemon_config, wait_until
from tests.service.conftest import PASSWORD, USER
from tests.service.tls_broker import Subscriber

START_TIMEOUT_S = 120  # model loading on a busy 2-core machine


class NotifySocket:
    """What systemd would receive from the daemon on NOTIFY_SOCKET."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="ecn")  # short: AF_UNIX paths are limited
        self.path = str(Path(self._dir.name) / "notify")
        self.messages: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._stop.is_set():
            try:
                self.messages.extend(self._socket.recv(4096).decode().splitlines())
            except socket.timeout:
                continue

    def find(self, predicate) -> str | None:
        """The first notify line that satisfies ``predicate``."""
        return next((line for line in list(self.messages) if predicate(line)), None)

    def close(self):
        self._stop.set()
        self._thread.join()
        self._socket.close()
        self._dir.cleanup()


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def tls_daemon_config(tmp_path: Path, broker, pki, password: str) -> dict:
    """The shared test config, pointed at the TLS broker with a password file and the test CA."""
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(password + "\n")
    return daemon_config(tmp_path, broker.port, mqtt={
        "topic_prefix": f"tls{int(time.time() * 1000) % 10**8}", "username": USER,
        "password_file": str(password_file), "tls": {"ca_certs": str(pki.ca_cert)}})


def test_daemon_connects_with_tls_and_password(tmp_path, tls_broker, tls_pki, daemon_process, notify_socket):
    config = tls_daemon_config(tmp_path, tls_broker, tls_pki, PASSWORD)
    prefix = config["mqtt"]["topic_prefix"]
    availability = CameraTopics.for_camera(prefix, config["camera"]["name"]).availability
    subscriber = Subscriber(tls_broker.port, availability, ca=tls_pki.ca_cert, user=USER, password=PASSWORD)
    online = lambda: any(m.payload == b"online" for m in subscriber.on(availability))  # noqa: E731
    try:
        daemon = daemon_process(config, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"})
        wait_until(lambda: online() or daemon.process.poll() is not None, START_TIMEOUT_S,
                   message=f"online on {availability}")
        assert daemon.process.poll() is None, daemon.log()
        assert online()
        wait_until(lambda: notify_socket.find(lambda line: line == "READY=1"), 10, message="READY=1")
        wait_until(lambda: notify_socket.find(lambda line: line == "WATCHDOG=1"), 10, message="WATCHDOG=1")
        daemon.stop()
        assert daemon.process.returncode == 0, daemon.log()
    finally:
        subscriber.close()


def test_daemon_refused_for_a_wrong_password_keeps_running_and_says_why(
        tmp_path, tls_broker, tls_pki, daemon_process, notify_socket):
    config = tls_daemon_config(tmp_path, tls_broker, tls_pki, "wrong password")
    daemon = daemon_process(config, env={"NOTIFY_SOCKET": notify_socket.path})
    wait_until(lambda: "not authori" in daemon.log().lower() or daemon.process.poll() is not None,
               START_TIMEOUT_S, message="'not authorized' in the daemon's log")
    assert "not authori" in daemon.log().lower()
    wait_until(lambda: notify_socket.find(lambda line: line.startswith("STATUS=") and "not authori" in line.lower()),
               15, message="a STATUS= line that says 'not authorized'")
    time.sleep(2)  # it retries instead of giving up
    assert daemon.process.poll() is None, daemon.log()
    daemon.stop()
    assert daemon.process.returncode == 0, daemon.log()
