"""A real Mosquitto for the service tests: optional TLS (a throw-away PKI made with
``openssl``), optional password file (``mosquitto_passwd``), on a free loopback port.

Not a conftest: tests and fixtures build what they need from these pieces::

    pki = make_pki(tmp / "pki")                      # CA, server cert for 127.0.0.1, client cert
    with MosquittoBroker(tmp / "broker", pki=pki, users={"cam": "secret"}) as broker:
        client.tls_set(ca_certs=str(pki.ca_cert)); client.connect("127.0.0.1", broker.port)

Without ``pki`` the listener is plain MQTT; without ``users`` anonymous clients are let in.
``Subscriber`` is a real client that records what arrives.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@dataclass(frozen=True)
class Pki:
    """Paths of a test CA and the server and client certificates it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, text=True)


def _signed_cert(directory: Path, name: str, subject: str, extensions: str, pki_ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """An EC P-256 key and a certificate for it, signed by the CA (cert, key)."""
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt", ".ext"))
    ca_cert, ca_key = pki_ca
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", subject)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", ext, "-out", cert)
    return cert, key


def make_pki(directory: str | Path) -> Pki:
    """Generate a CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-sha256", "-subj", "/CN=explaincam test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")
    leaf = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    server_cert, server_key = _signed_cert(
        directory, "server", "/CN=localhost",
        leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n", (ca_cert, ca_key))
    client_cert, client_key = _signed_cert(
        directory, "client", "/CN=explaincam", leaf + "extendedKeyUsage=clientAuth\n", (ca_cert, ca_key))
    return Pki(ca_cert, ca_key, server_cert, server_key, client_cert, client_key)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MosquittoBroker:
    """A mosquitto process with its own config, password file and log, started on ``start()``."""

    def __init__(self, directory: str | Path, pki: Pki | None = None, users: dict[str, str] | None = None,
                 require_certificate: bool = False):
        self.directory = Path(directory)
        self.pki = pki
        self.users = users
        self.require_certificate = require_certificate
        self.port = 0
        self.log_path = self.directory / "mosquitto.log"
        self._process: subprocess.Popen | None = None

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = ["per_listener_settings false", "persistence false", f"log_dest file {self.log_path}",
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "connection_messages true"]
        if self.users:
            passwd = self.directory / "passwd"
            passwd.unlink(missing_ok=True)
            for i, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run([MOSQUITTO_PASSWD, *create, "-b", str(passwd), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.pki:
            lines += [f"cafile {self.pki.ca_cert}", f"certfile {self.pki.server_cert}",
                      f"keyfile {self.pki.server_key}",
                      f"require_certificate {'true' if self.require_certificate else 'false'}"]
        if os.geteuid() == 0:
            lines.append("user root")  # keep reading the 0600 test files after start-up
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start mosquitto on a free port and wait until it accepts TCP connections."""
        self.port = free_port()
        config = self._write_config()
        self._process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self._process.returncode}): "
                                   f"{self._process.stderr.read()} {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s: {self.log()}")

    def log(self) -> str:
        """What mosquitto wrote to its log so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL after 5 s)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stderr.close()
        self._process = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A real MQTT 5 client (TLS and a password when given) that records what arrives on its topics."""

    def __init__(self, port: int, *topics: str, ca: Path | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = 5.0):
        self.received: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.on_connect = lambda client, *args: client.subscribe([(topic, 1) for topic in topics])
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = lambda client, userdata, message: self._keep(message)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"could not subscribe to {topics} on port {port}")

    def _keep(self, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(message)

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        """The messages received so far on ``topic``."""
        with self._lock:
            return [message for message in self.received if message.topic == topic]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[paho.MQTTMessage]:
        """Every message received, once there are ``count`` of them or ``timeout`` s have passed."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.received) >= count or time.monotonic() > deadline:
                    return list(self.received)
            time.sleep(0.02)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
