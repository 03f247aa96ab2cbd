"""Helpers of the fault suite: figures lines, /proc readings of the daemon, an MQTT 5 requester."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import CAPTION, REQUEST

NODELAY = "set_tcp_nodelay true\n"  # broker option: small packets go out at once (no 40 ms Nagle waits)


def figures(test: str, **values) -> str:
    """Print (and return) one ``FIGURES test: key=value ...`` line; pytest shows it with -s or -rA."""
    line = f"FIGURES {test}: " + " ".join(f"{key}={value}" for key, value in values.items())
    print(line, flush=True)
    return line


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (VmRSS of /proc/PID/status)."""
    return _status_kb(pid, "VmRSS") / 1024


def thread_count(pid: int) -> int:
    """Threads of a process (entries of /proc/PID/task)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_targets(pid: int) -> list[str]:
    """What each open file descriptor of a process points at (sockets, pipes, files), sorted."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed between the listing and the read
            continue
    return sorted(targets)


def steady(probe, pid: int, samples: int = 20, interval: float = 0.05):
    """The smallest of readings spread over about a second (lists compare by length): a thread or
    descriptor open for a moment, such as a frame file the source is decoding, is not counted."""
    readings = []
    for _ in range(samples):
        readings.append(probe(pid))
        time.sleep(interval)
    return min(readings, key=lambda reading: reading if isinstance(reading, int) else len(reading))


def live_captions(collector, since: float = 0.0) -> list:
    """Caption messages published while the collector listened (not a retained one from before)."""
    return [m for m in collector.on(CAPTION, since) if not m.retain]


class Requester:
    """A real MQTT 5 client that sends requests with a Response Topic and numbered Correlation Data.

    Replies are kept by Correlation Data; ``wait_reply`` wakes as soon as one arrives.
    """

    def __init__(self, port: int, reply_topic: str = "faults/replies"):
        self.reply_topic = reply_topic
        self.replies: dict[bytes, tuple[float, bytes]] = {}
        self.others: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"faults-requester-{id(self)}",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "requester could not subscribe"

    def _on_connect(self, client, *args) -> None:
        # Small requests go out at once instead of waiting for the previous packet's ACK (Nagle).
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(self.reply_topic, 1)

    def _on_message(self, client, userdata, message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._cond:
            if message.topic == self.reply_topic and correlation is not None:
                self.replies[bytes(correlation)] = (time.monotonic(), message.payload)
            else:
                self.others.append((message.topic, message.payload))
            self._cond.notify_all()

    def subscribe(self, topic: str, timeout: float = 5.0) -> None:
        """Also collect messages on ``topic`` (in ``others``), waiting for the broker's acknowledgement."""
        done = threading.Event()
        previous = self.client.on_subscribe
        self.client.on_subscribe = lambda *a: done.set()
        try:
            self.client.subscribe(topic, 1)
            assert done.wait(timeout), f"could not subscribe to {topic!r}"
        finally:
            self.client.on_subscribe = previous

    def send(self, payload: bytes | dict, correlation: bytes | None, response_topic: str | None = None,
             qos: int = 1) -> None:
        """Publish a request; with ``correlation`` it names this client's reply topic (or ``response_topic``)."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic if response_topic is None else response_topic
            properties.CorrelationData = correlation
        self.client.publish(REQUEST, data, qos=qos, properties=properties)

    def wait_reply(self, correlation: bytes, timeout: float) -> dict | None:
        """The JSON reply with this Correlation Data, or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while correlation not in self.replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return json.loads(self.replies[correlation][1])

    def wait_other(self, predicate, timeout: float):
        """The first (topic, payload) outside the reply topic that satisfies ``predicate``, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((m for m in self.others if predicate(*m)), None)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._cond.wait(remaining)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
