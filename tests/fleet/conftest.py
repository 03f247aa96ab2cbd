"""Fleet test helpers: a worker as a subprocess, an MQTT 5 requester for any camera."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import PREFIX, REPO, SHIPPED_BUNDLE, wait_until


def worker_config(port: int, worker_id: str, **values) -> dict:
    """A test worker config: the shipped bundle, one thread, quick announcements and reconnects."""
    config = {"id": worker_id, "bundles": [str(SHIPPED_BUNDLE)], "threads": 1, "announce_interval_s": 1,
              "mqtt": {"host": "127.0.0.1", "port": port, "protocol": 5, "keepalive": 5,
                       "reconnect_min_s": 1, "reconnect_max_s": 1}}
    config.update(values)
    return config


class WorkerProcess:
    """``explaincam worker -c CONFIG`` as a subprocess, its output in a log file."""

    def __init__(self, config: dict, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.id = config["id"]
        self.config_file = workdir / "worker.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = workdir / "worker.log"
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "worker", "-c", str(self.config_file)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        """Everything the worker wrote so far."""
        return self.log_file.read_text(errors="replace")

    def kill(self, sig=signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) if it still runs, and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)


class Requester:
    """A real MQTT 5 client asking any camera for explanations with Response Topic + Correlation Data."""

    def __init__(self, port: int, reply_topic: str = "test/fleet/replies"):
        self.reply_topic = reply_topic
        self.replies: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"requester-{id(self)}", protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(reply_topic, 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "requester could not subscribe"

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.replies.append(message)

    def send(self, camera: str, request: dict, correlation: bytes) -> None:
        """Publish a request to a camera."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = correlation
        self.client.publish(f"{PREFIX}/{camera}/explain/request", json.dumps(request), qos=1, properties=properties)

    def answers(self, correlation: bytes) -> list[dict]:
        """Every reply carrying this Correlation Data, parsed."""
        with self._lock:
            return [json.loads(m.payload) for m in self.replies
                    if getattr(m.properties, "CorrelationData", None) == correlation]

    def answer(self, correlation: bytes, timeout: float) -> dict:
        """The first reply carrying this Correlation Data."""
        return wait_until(lambda: (self.answers(correlation) or [None])[0], timeout,
                          message=f"a reply correlated with {correlation!r}")

    def close(self):
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
