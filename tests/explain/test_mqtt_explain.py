"""End to end: ``explaincam run`` as a subprocess, a real Mosquitto, explain requests over MQTT 5."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.bundle import load_bundle
from daemon.contract import CameraTopics
from daemon.explain.backends import choose_backend
from daemon.explain.heatmap import heatmap_from_base64
from daemon.imaging import decode_image, decode_png
from tests.conftest import (CAMERA, CAPTION, PREFIX, REPO, REQUEST, RESPONSE, START_TIMEOUT, child_pids,
                            daemon_config, loaded_tensorflow, wait_until)

IMAGE = CameraTopics.for_camera(PREFIX, CAMERA).explain_image
IMAGE_INFO = CameraTopics.for_camera(PREFIX, CAMERA).explain_image_info
EXPLAIN_TIMEOUT = 180  # backend load (TensorFlow: import + model) + explanation, niced, on a busy box
FAST = {"idle_exit_s": 120, "smoothgrad_samples": 2, "ig_steps": 4, "threads": 1}


class Requester:
    """A real MQTT 5 client that sends requests with Response Topic + Correlation Data."""

    def __init__(self, port: int, reply_topic: str):
        self.reply_topic = reply_topic
        self.replies: list[paho.MQTTMessage] = []
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"requester-{id(self)}", protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(reply_topic, 1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.replies.append(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10), "requester could not subscribe"

    def send(self, payload, correlation: bytes | None = None, reply: bool = True) -> None:
        """Publish a request (JSON of a dict, or raw bytes), with the MQTT 5 properties when asked."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        properties = None
        if reply:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = correlation
        self.client.publish(REQUEST, data, qos=1, properties=properties)

    def reply_for(self, correlation: bytes, timeout: float) -> paho.MQTTMessage:
        """The reply carrying this Correlation Data."""
        return wait_until(lambda: next((m for m in list(self.replies)
                                        if getattr(m.properties, "CorrelationData", None) == correlation), None),
                          timeout, message=f"a reply correlated with {correlation!r}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def explainer_pids(daemon_pid: int) -> list[int]:
    """The daemon's explainer processes: children started by multiprocessing ``spawn`` (the
    resource tracker, the daemon's other child, runs ``multiprocessing.resource_tracker``)."""
    found = []
    for child in child_pids(daemon_pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:  # it ended meanwhile
            continue
    return found


def test_latest_frame_explained_over_mqtt5_with_correlation_and_the_request_cli(mosquitto, collect,
                                                                                 daemon_process, tmp_path):
    config = daemon_config(tmp_path, mosquitto.port, explain=FAST)
    daemon = daemon_process(config)
    watcher = collect(mosquitto.port, CAPTION, RESPONSE, IMAGE, IMAGE_INFO)
    watcher.wait_for(CAPTION, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port, "test/replies/e2e")
    try:
        correlation = b"\x00corr-1\xff"
        sent = time.monotonic()
        requester.send({"id": "e2e-1", "frame": "latest", "methods": ["gradcam", "saliency"]}, correlation)
        reply = requester.reply_for(correlation, EXPLAIN_TIMEOUT)
        answered = time.monotonic()
    finally:
        requester.close()
    # captions kept coming while the explainer process started and worked
    during = [m for m in watcher.on(CAPTION, sent) if m.at <= answered]
    assert len(during) >= int(answered - sent) // 2, f"{len(during)} captions in {answered - sent:.1f} s"
    answer = json.loads(reply.payload)
    assert answer["id"] == "e2e-1" and answer["status"] == "ok", answer.get("error")
    assert answer["error"] is None
    published = {m.json()["frame_id"]: m.json() for m in watcher.on(CAPTION)}
    assert answer["caption"] == published[answer["frame_id"]]["caption"]  # the caption that was published
    assert isinstance(answer["float_caption"], str)
    assert [w["index"] for w in answer["words"]] == list(range(len(answer["caption"].split())))
    for record in answer["words"]:
        assert record["word"] == answer["caption"].split()[record["index"]]
        for method in ("gradcam", "saliency"):
            heat = heatmap_from_base64(record[method]["heatmap"])
            assert heat.shape == (224, 224) and heat.max() <= 1
            x, y = record[method]["peak"]
            assert 0 <= x < 224 and 0 <= y < 224
    assert {"gradcam_ms", "saliency_ms", "queue_ms", "total_ms", "load_ms"} <= set(answer["timings_ms"])
    assert not [m for m in watcher.on(RESPONSE) if m.json()["id"] == "e2e-1"]  # it went to the Response Topic
    grid = watcher.wait_for(IMAGE, timeout=10, since=sent)  # not the placeholder published at start
    assert grid.payload.startswith(b"\xff\xd8") and decode_image(grid.payload).shape[2] == 3  # a JPEG
    info = watcher.wait_for(IMAGE_INFO, lambda m: not m.json()["placeholder"], timeout=10).json()
    assert (info["request_id"], info["frame_id"]) == ("e2e-1", answer["frame_id"])
    assert info["methods"] == ["gradcam", "saliency"] and info["made_at"]
    snapshot = Path(config["snapshot"]["dir"])
    assert json.loads((snapshot / "explanation.json").read_text())["id"] == "e2e-1"
    assert decode_png((snapshot / "explanation.png").read_bytes()).ndim == 3
    # the capture process stays free of TensorFlow; the explainer child loads it only on the TensorFlow backend
    assert not loaded_tensorflow(daemon.process.pid)
    children = explainer_pids(daemon.process.pid)
    assert len(children) == 1  # the explainer process, started by the request
    on_tensorflow = choose_backend(load_bundle(config["model"]["bundle"])) == "tensorflow"
    assert any(loaded_tensorflow(child) for child in children) == on_tensorflow

    out = tmp_path / "cli"
    cli = subprocess.run([sys.executable, "-m", "daemon.cli", "request", "--host", "127.0.0.1",
                          "--port", str(mosquitto.port), "--camera", CAMERA, "--methods", "gradcampp",
                          "--words", "0", "--out", str(out), "--timeout", str(EXPLAIN_TIMEOUT)],
                         cwd=REPO, capture_output=True, text=True, timeout=EXPLAIN_TIMEOUT + 30,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert cli.returncode == 0, cli.stderr + cli.stdout
    saved = json.loads((out / "response.json").read_text())
    assert saved["status"] == "ok" and [w["index"] for w in saved["words"]] == [0]
    heat_file = next(out.glob("00_*_gradcampp.png"))
    assert decode_png(heat_file.read_bytes()).shape == (224, 224)
    assert base64.b64decode(saved["words"][0]["gradcampp"]["heatmap"]) == heat_file.read_bytes()
    assert decode_png((out / "grid.png").read_bytes()).ndim == 3
    assert "gradcampp peak" in cli.stdout
    assert daemon.process.poll() is None


def test_each_bad_request_gets_its_error_while_captions_keep_flowing(mosquitto, collect, daemon_process, tmp_path):
    config = daemon_config(tmp_path, mosquitto.port, explain=FAST, caption={"cache_size": 3})
    daemon = daemon_process(config)
    watcher = collect(mosquitto.port, CAPTION, RESPONSE)
    first = watcher.wait_for(CAPTION, timeout=START_TIMEOUT).json()["frame_id"]
    watcher.wait_for(CAPTION, lambda m: m.json()["frame_id"] >= first + 4, timeout=30)  # `first` is evicted
    bad = [
        ("bad-json", b'{"id": "bad-json", "frame": ', "bad_json"),
        ("bad-method", {"id": "bad-method", "methods": ["gradcam", "lime"]}, "unknown_method"),
        ("bad-word", {"id": "bad-word", "words": [0, 99]}, "bad_word_index"),
        ("bad-frame", {"id": "bad-frame", "frame": first}, "frame_not_cached"),
        ("too-big", b'{"id": "too-big", "pad": "' + b"x" * 20000 + b'"}', "too_large"),
        ("bad-field", {"id": "bad-field", "frame": "latest", "colour": "red"}, "bad_request"),
        ("bad-type", {"id": "bad-type", "frame": "one", "words": "0,1"}, "bad_request"),
    ]
    requester = Requester(mosquitto.port, "test/replies/bad")
    try:
        since = watcher.on(CAPTION)[-1].at
        for n, (request_id, payload, code) in enumerate(bad):
            correlation = f"c{n}".encode()
            requester.send(payload, correlation)
            answer = json.loads(requester.reply_for(correlation, 10).payload)
            assert (answer["id"], answer["status"], answer["error"]["code"]) == (request_id, "error", code), answer
            assert answer["error"]["message"]
        # without a Response Topic the answer goes to the default response topic
        requester.send({"id": "plain", "words": [42]}, reply=False)
        plain = watcher.wait_for(RESPONSE, lambda m: m.json()["id"] == "plain", timeout=10).json()
        assert plain["error"]["code"] == "bad_word_index"
    finally:
        requester.close()
    # captions kept flowing through all of it, and no explainer process was started for them
    wait_until(lambda: len(watcher.on(CAPTION, since)) >= 5, 30, message="captions after the bad requests")
    ids = [m.json()["frame_id"] for m in watcher.on(CAPTION, since)]
    assert ids == sorted(ids)
    assert daemon.process.poll() is None
    assert explainer_pids(daemon.process.pid) == []


def test_the_request_cli_says_when_nobody_answers_or_no_broker_is_there(mosquitto, tmp_path):
    base = [sys.executable, "-m", "daemon.cli", "request", "--host", "127.0.0.1", "--camera", "nobody",
            "--out", str(tmp_path / "out")]
    silent = subprocess.run(base + ["--port", str(mosquitto.port), "--timeout", "1"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert silent.returncode == 3 and "no answer" in silent.stderr
    mosquitto.stop()
    gone = subprocess.run(base + ["--port", str(mosquitto.port), "--timeout", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2 and "cannot connect" in gone.stderr
    bad = subprocess.run(base + ["--port", "1", "--words", "first"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "words" in bad.stderr
