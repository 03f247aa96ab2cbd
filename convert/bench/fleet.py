"""``explaincam fleet-bench``: a fleet on a private Mosquitto on this box, measured.

It starts a private Mosquitto on loopback, N camera daemons (real ``explaincam run``
processes with the generated scenes source and ``explain.mode: remote``), then for each M of
``--workers`` starts M ``explaincam worker`` processes, keeps ``--in-flight`` requests per
worker outstanding (round robin over the cameras) until ``--requests`` are answered, and
prints requests answered per second, latency percentiles (request sent to answer received)
and the camera daemons' capture rate (captions per second) while they were explaining, beside
their rate before any request. The workers are stopped before the next M.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.broker import LocalBroker, find_mosquitto, free_port
from daemon.captioner import DEFAULT_BUNDLE
from daemon.contract import ONLINE, CameraTopics, PrefixTopics
from daemon.stats import percentiles

PREFIX = "explaincam"
START_TIMEOUT_S = 300.0  # backend load (TensorFlow import on that backend) and warm-up of M workers at once


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam fleet-bench``."""
    parser.add_argument("--cameras", type=int, default=3, help="camera daemons (default 3)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated (default 1,2)")
    parser.add_argument("--requests", type=int, default=12, help="requests answered per worker count (default 12)")
    parser.add_argument("--in-flight", type=int, default=2,
                        help="requests kept outstanding per worker (default 2; each camera queues 4 at most)")
    parser.add_argument("--methods", default="gradcam", help="methods of each request (default gradcam)")
    parser.add_argument("--threads", type=int, default=1, help="explainer backend threads per worker (default 1)")
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--fps", type=float, default=2.0, help="scenes per second of each camera (default 2)")


class _Requester:
    """An MQTT 5 client that sends requests with Correlation Data and times their answers."""

    def __init__(self, port: int):
        self.reply_topic = "bench/fleet/replies"
        self.sent: dict[bytes, float] = {}
        self.answered: dict[bytes, tuple[float, dict]] = {}
        self.captions: list[tuple[str, float]] = []
        self._cond = threading.Condition()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-bench", protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe([(self.reply_topic, 1), (f"{PREFIX}/+/caption", 0)])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the bench's MQTT client could not subscribe")

    def _on_message(self, client, userdata, message):
        now = time.monotonic()
        with self._cond:
            if message.topic.endswith("/caption"):
                if not message.retain:
                    self.captions.append((message.topic.split("/")[-2], now))
                return
            correlation = getattr(message.properties, "CorrelationData", None)
            if correlation in self.sent and correlation not in self.answered:
                self.answered[correlation] = (now, json.loads(message.payload))
                self._cond.notify_all()

    def send(self, camera: str, request: dict) -> None:
        """Publish one request (its id is its Correlation Data)."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = request["id"].encode()
        with self._cond:
            self.sent[request["id"].encode()] = time.monotonic()
        self.client.publish(CameraTopics.for_camera(PREFIX, camera).explain_request, json.dumps(request), qos=1,
                            properties=properties)

    def outstanding(self) -> int:
        """Requests sent and not answered yet."""
        with self._cond:
            return len(self.sent) - len(self.answered)

    def wait_answer(self, timeout: float) -> None:
        """Wait until one more answer arrives (or ``timeout`` s)."""
        with self._cond:
            count = len(self.answered)
            self._cond.wait_for(lambda: len(self.answered) > count, timeout)

    def capture_rate(self, since: float, until: float, cameras: int) -> float:
        """Captions per second and camera between two monotonic times."""
        with self._cond:
            count = sum(1 for _, at in self.captions if since <= at <= until)
        return count / max(until - since, 1e-9) / cameras

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    """An ``explaincam`` subcommand as a child process, its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL what is left after 10 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_workers(port: int, ids: list[str], timeout: float) -> None:
    """Wait until every worker's announcement says online; RuntimeError otherwise."""
    online: set[str] = set()
    done = threading.Event()

    def on_message(client, userdata, message):
        try:
            if json.loads(message.payload).get("state") == ONLINE:
                online.add(message.topic.split("/")[-1])
        except ValueError:
            return
        if online >= set(ids):
            done.set()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-bench-watch", protocol=paho.MQTTv5)
    client.on_connect = lambda c, *a: c.subscribe([(PrefixTopics(PREFIX).worker(w), 1) for w in ids])
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise RuntimeError(f"workers {sorted(set(ids) - online)} did not come online within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()


def main(args: argparse.Namespace) -> int:
    """Run the fleet for each worker count and print the table."""
    if find_mosquitto() is None:
        print("error: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    bundle = str(Path(args.bundle or DEFAULT_BUNDLE).resolve())
    counts = [int(m) for m in args.workers.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = Path(tempfile.mkdtemp(prefix="explaincam-fleet-bench-"))
    broker = LocalBroker(free_port(), work / "broker")
    broker.start()
    cameras = [f"bench{i + 1}" for i in range(args.cameras)]
    daemons, requester = [], None
    print(f"fleet bench: {args.cameras} camera daemons ({args.fps:g} scenes/s), workers {counts}, "
          f"{args.requests} requests of {'+'.join(methods)} (all words) per worker count, "
          f"{args.in_flight} in flight per worker; logs in {work}", flush=True)
    rows = []
    try:
        for camera in cameras:
            config = {"model": {"bundle": bundle, "threads": 1},
                      "camera": {"name": camera, "source": {"type": "scenes", "fps": args.fps}},
                      "caption": {"rate": 0},
                      "mqtt": {"host": "127.0.0.1", "port": broker.port, "discovery": {"enabled": False}},
                      "snapshot": {"dir": str(work / camera / "snapshot")},
                      "explain": {"mode": "remote", "remote": {"retry_s": 120, "max_tries": 2}}}
            (work / camera).mkdir()
            (work / camera / "config.yaml").write_text(yaml.safe_dump(config))
            daemons.append(_spawn(["run", "-c", str(work / camera / "config.yaml")], work / camera / "daemon.log"))
        requester = _Requester(broker.port)
        time.sleep(10.0)  # the daemons load their models and start captioning
        idle_from = time.monotonic()
        time.sleep(10.0)
        idle_rate = requester.capture_rate(idle_from, time.monotonic(), len(cameras))
        print(f"capture rate before any request: {idle_rate:.2f} captions/s per camera", flush=True)
        serial = itertools.count(1)
        for m in counts:
            ids = [f"bench-w{m}-{k + 1}" for k in range(m)]
            workers = []
            for worker_id in ids:
                config = {"id": worker_id, "bundles": [bundle], "threads": args.threads,
                          "mqtt": {"host": "127.0.0.1", "port": broker.port, "protocol": 5}}
                (work / worker_id).mkdir()
                (work / worker_id / "worker.yaml").write_text(yaml.safe_dump(config))
                workers.append(_spawn(["worker", "-c", str(work / worker_id / "worker.yaml")],
                                      work / worker_id / "worker.log"))
            try:
                _wait_workers(broker.port, ids, START_TIMEOUT_S)
                rows.append(_measure(requester, cameras, m, args, methods, serial))
            finally:
                _stop(workers)
    finally:
        if requester is not None:
            requester.close()
        _stop(daemons)
        broker.stop()
    print(flush=True)
    print(f"{'workers':>7} {'answered/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6} {'captions/s/cam':>14}", flush=True)
    for row in rows:
        print(f"{row['workers']:>7} {row['rate']:>10.2f} {row['p50']:>8.0f} {row['p95']:>8.0f} {row['errors']:>6} "
              f"{row['capture']:>14.2f}", flush=True)
    print(f"(captions/s/cam before any request: {idle_rate:.2f}; {os.cpu_count()} CPUs on this box)", flush=True)
    return 0


def _measure(requester: _Requester, cameras: list[str], m: int, args, methods: list[str], serial) -> dict:
    """Keep ``in_flight * m`` requests outstanding until ``args.requests`` are answered; the row of figures."""
    first = len(requester.answered)
    started = time.monotonic()
    sent = 0
    camera_cycle = itertools.cycle(cameras)
    deadline = started + 600
    while len(requester.answered) - first < args.requests and time.monotonic() < deadline:
        while sent < args.requests and requester.outstanding() < args.in_flight * m:
            requester.send(next(camera_cycle), {"id": f"bench-{next(serial)}", "methods": methods})
            sent += 1
        requester.wait_answer(1.0)
    finished = time.monotonic()
    answers = [(at, response, requester.sent[c]) for c, (at, response) in requester.answered.items()
               if requester.sent[c] >= started]
    ok = [(at - sent_at) * 1e3 for at, response, sent_at in answers if response.get("status") == "ok"]
    spread = percentiles(ok)
    return {"workers": m, "rate": len(ok) / (finished - started), "p50": spread["p50"] or 0,
            "p95": spread["p95"] or 0, "errors": len(answers) - len(ok),
            "capture": requester.capture_rate(started, finished, len(cameras))}
