"""Shared fixtures: a real Mosquitto on loopback, an MQTT message collector, the daemon as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from daemon.contract import CameraTopics, PrefixTopics
from daemon.broker import LocalBroker, find_mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
SHIPPED_BUNDLE = REPO / "models" / "scenes-mnv3s"
# the topics of the daemon that daemon_config sets up (prefix explaincam, camera testcam)
PREFIX, CAMERA = "explaincam", "testcam"
TOPICS = CameraTopics.for_camera(PREFIX, CAMERA)
AVAILABILITY = TOPICS.availability
CAPTION = TOPICS.caption
SOURCE = TOPICS.source
STATS = PrefixTopics(PREFIX).stats
REQUEST = TOPICS.explain_request
RESPONSE = TOPICS.explain_response
START_TIMEOUT = 60  # model loading on a busy 2-core box
# timing-sensitive tests (the fault suite, and files asserting wall-clock limits): tests/run.sh runs them
# alone, after the parallel run, so that other tests' load does not make them late
FAULT_TESTS = REPO / "tests" / "faults"
TIMING_FILES = {REPO / "tests" / name for name in (
    "daemon/test_app_e2e.py",  # the daemon stops within 2 s of SIGTERM
    "daemon/test_mqtt.py",  # publishing while the broker is away returns within 0.5 s
    "fleet/test_dispatcher.py", "fleet/test_fleet_e2e.py",  # retries at their set delays
    "convert/test_bench.py")}  # compares rates measured minutes apart (idle vs explaining captions/s)
# timing-sensitive files that load both cores themselves (the bench's loops, the soak's 20,000 frames as fast as
# they come, the request flood's explainer): tests/run.sh runs them (marker `alone`) one at a time after the
# other timing tests, which mostly wait on brokers, retries and signals and run two at a time
ALONE_FILES = {REPO / "tests" / name for name in (
    "convert/test_bench.py", "faults/test_soak.py", "faults/test_request_flood.py")}
# the longest files of the parallel run (minutes each on 2 cores), handed out first so that the run does
# not end waiting on one of them started late (pytest-xdist deals files out in collection order)
LONGEST_FILES = [REPO / "tests" / name for name in (
    "convert/test_large_seed_export.py", "convert/test_weights.py",
    "convert/test_train_convert.py", "convert/test_explainer_export.py", "convert/test_own_data.py")]
# niceness an xdist worker takes once it runs anything but LONGEST_FILES[0]: that file alone is as long as
# the rest of a worker's share, so it gets the CPU first and does not set the end of the run
OTHER_FILES_NICENESS = 5
BROKER_START_TRIES = 3  # a free port can be taken by another xdist worker before the broker binds it


def pytest_collection_modifyitems(config, items):
    """Mark the timing-sensitive tests ``timing`` (FAULT_TESTS, TIMING_FILES), those of ALONE_FILES also
    ``alone``; LONGEST_FILES first."""
    for item in items:
        path = Path(str(item.fspath))
        if FAULT_TESTS in path.parents or path in TIMING_FILES:
            item.add_marker(pytest.mark.timing)
        if path in ALONE_FILES:
            item.add_marker(pytest.mark.alone)
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)), len(rank)))  # stable: the rest keep their order


def pytest_runtest_setup(item):
    """Under pytest-xdist, lower this worker's CPU priority (once) when it runs a file other than the longest
    (not in the timing part, where the workers are equals)."""
    if ("PYTEST_XDIST_WORKER" in os.environ and not item.get_closest_marker("timing")
            and Path(str(item.fspath)) != LONGEST_FILES[0] and os.nice(0) == 0):
        os.nice(OTHER_FILES_NICENESS)


def child_running(marker: str) -> int | None:
    """The pid of a child of this process whose command line holds ``marker``, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and marker in command:
            return int(entry)
    return None


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def mosquitto(tmp_path):
    """A running Mosquitto on a free 127.0.0.1 port (``.port``, ``.stop()``, ``.start()``, ``.restart()``)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (tests/run.sh does)")
    broker = LocalBroker(free_port(), tmp_path / "mosquitto")
    for attempt in range(BROKER_START_TRIES):
        try:
            broker.start()
            break
        except RuntimeError:  # the port was taken meanwhile (parallel workers): another one
            if attempt == BROKER_START_TRIES - 1:
                raise
            broker.port = free_port()
    yield broker
    broker.stop()


@dataclass
class Received:
    """One message a collector got."""

    topic: str
    payload: bytes
    retain: bool
    properties: object
    at: float = field(default_factory=time.monotonic)

    def json(self):
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class MessageCollector:
    """A real MQTT 5 client that subscribes (again after every reconnect) and keeps what arrives;
    ``connected`` is set once the broker has its subscriptions."""

    def __init__(self, port: int, topics: list[str], host: str = "127.0.0.1", protocol=paho.MQTTv5):
        self.topics = topics
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{id(self)}",
                                  protocol=protocol)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self.topics:
            client.subscribe([(t, 0) for t in self.topics])
        else:
            self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        # Ready once the broker has the subscriptions: a message published before then would be missed.
        self.connected.set()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append(Received(message.topic, message.payload, bool(message.retain), message.properties))

    def on(self, topic: str, since: float = 0.0) -> list[Received]:
        """Messages received on ``topic`` (exact name) at or after monotonic time ``since``."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic and m.at >= since]

    def on_prefix(self, prefix: str, since: float = 0.0) -> list[Received]:
        """Messages received on any topic starting with ``prefix`` at or after ``since``."""
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix) and m.at >= since]

    def wait_for(self, topic: str, predicate=lambda m: True, timeout: float = 10.0, since: float = 0.0) -> Received:
        """The first message on ``topic`` that satisfies ``predicate``, waiting up to ``timeout`` s."""
        return wait_until(lambda: next((m for m in self.on(topic, since) if predicate(m)), None), timeout,
                          message=f"a matching message on {topic}")

    def close(self):
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collect():
    """Factory: ``collect(port, topic, ..., protocol=paho.MQTTv5)`` -> a connected MessageCollector,
    closed at teardown (``protocol=paho.MQTTv311`` for brokers that speak only MQTT 3.1.1)."""
    collectors = []

    def make(port: int, *topics: str, wait: bool = True, protocol=paho.MQTTv5) -> MessageCollector:
        collector = MessageCollector(port, list(topics), protocol=protocol)
        collectors.append(collector)
        if wait:
            assert collector.connected.wait(5), "collector could not connect"
        return collector

    yield make
    for collector in collectors:
        collector.close()


def daemon_config(tmp_path: Path, port: int, **sections) -> dict:
    """A test config for the daemon: scenes source, shipped bundle, fast reconnects, tmp snapshot dir."""
    config = {
        "model": {"bundle": str(SHIPPED_BUNDLE), "threads": 1},
        "camera": {"name": CAMERA,
                   "source": {"type": "scenes", "fps": 5, "retry_initial_s": 0.2, "retry_max_s": 1}},
        "caption": {"rate": 0},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_min_s": 1,
                 "reconnect_max_s": 1, "stats_interval_s": 1},
        "snapshot": {"dir": str(tmp_path / "snapshot"), "min_interval_s": 0},
        # no background explanations unless a test asks: their explainer would stir the explainer's own tests
        "history": {"explain": []},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


class DaemonProcess:
    """``explaincam run -c CONFIG`` as a subprocess, its stderr in a log file."""

    def __init__(self, config: dict, workdir: Path, env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = workdir / "daemon.log"
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run", "-c", str(self.config_file)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def log(self) -> str:
        """Everything the daemon wrote so far."""
        return self.log_file.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> float:
        """Send ``sig`` and wait for the exit; the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(sig)
        self.process.wait(timeout)
        return time.monotonic() - started

    def kill(self):
        """SIGKILL if still running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def daemon_process(tmp_path):
    """Factory: ``daemon_process(config, env=None)`` -> a started DaemonProcess, killed at teardown."""
    processes = []

    def start(config: dict, env: dict | None = None) -> DaemonProcess:
        process = DaemonProcess(config, tmp_path / f"daemon{len(processes)}", env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


def loaded_tensorflow(pid: int) -> bool:
    """Whether the process has a TensorFlow library mapped."""
    return "_pywrap_tensorflow" in Path(f"/proc/{pid}/maps").read_text()


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                children.append(int(entry.name))
    return children
