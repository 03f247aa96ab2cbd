"""``explaincam run --demo``: the daemon on generated scenes, watched over MQTT, in one command.

``run`` enters the demo's surroundings, then runs the daemon as usual. If no broker answers
on the configured host and port, a private Mosquitto is started on loopback
(daemon/broker.py's ``LocalBroker``). The daemon then captions generated
scenes with the shipped bundle, writes snapshots to ./build/snapshot, and every caption
is printed as it arrives over MQTT, next to the scene's ground truth, until Ctrl-C.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from daemon.broker import LocalBroker, broker_answers, find_mosquitto, free_port, install_mosquitto
from daemon.captioner import DEFAULT_BUNDLE
from daemon.config import AppConfig
from daemon.config_file import load_config
from daemon.contract import CameraTopics

DEMO_SNAPSHOT_DIR = Path("build/snapshot")
DEMO_BROKER_DIR = Path("build/demo-broker")
# above the printed captions: frame id, milliseconds from grabbing the frame to publishing its caption, caption
CAPTION_HEADER = f"{'frame':>7}  {'total ms':>8}  caption (ground truth when it differs)"


def demo_config(path: str) -> AppConfig:
    """The config file's settings (defaults if it is missing) with the demo's source, bundle and snapshot dir."""
    cfg = load_config(path) if Path(path).is_file() else AppConfig()
    data = cfg.model_dump()
    data["camera"]["source"] = {"type": "scenes"}
    data["model"]["bundle"] = DEFAULT_BUNDLE
    data["snapshot"].update(enabled=True, dir=DEMO_SNAPSHOT_DIR.resolve(), min_interval_s=0)
    return AppConfig.model_validate(data)


class CaptionPrinter:
    """Subscribes to the caption topic and prints each live caption beside its ground truth."""

    def __init__(self, host: str, port: int, topic: str):
        self.topic = topic
        self.count = 0
        self.matches = 0
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"explaincam-demo-{os.getpid()}")
        self._client.on_connect = lambda client, *_: client.subscribe(topic)
        self._client.on_message = self._on_message
        self._client.connect_async(host, port)

    def start(self) -> None:
        """Connect and print in paho's thread."""
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
        if message.retain:  # a caption from before this run
            return
        record = json.loads(message.payload)
        truth = record.get("ground_truth")
        self.count += 1
        mark = ""
        if truth is not None:
            matched = truth == record["caption"]
            self.matches += matched
            mark = "  ✓" if matched else f"  ✗ (truth: {truth})"
        if record.get("out_of_distribution"):
            mark += f"  (unfamiliar scene, familiarity {record['familiarity']:.2f})"
        print(f"{record['frame_id']:>7}  {record['timings']['total_ms']:>8.1f}  {record['caption']}{mark}", flush=True)


class DemoError(Exception):
    """The demo cannot run here (no broker answers and none can be started); the message says what to do."""


@contextmanager
def demo_surroundings(cfg: AppConfig) -> Iterator[AppConfig]:
    """What the demo needs around the daemon: a private Mosquitto on loopback if no broker answers
    (installed with apt-get if missing) and the caption printer. Yields the config to run with
    (pointing at the private broker if one was started); everything is stopped on the way out."""
    broker = printer = None
    try:
        binary = None
        if not broker_answers(cfg.mqtt.host, cfg.mqtt.port):
            binary = find_mosquitto() or install_mosquitto()
            if binary is None:
                raise DemoError(f"No MQTT broker answers on {cfg.mqtt.host}:{cfg.mqtt.port}.")
        if binary is not None and not broker_answers(cfg.mqtt.host, cfg.mqtt.port):  # the package may start one
            port = cfg.mqtt.port if not broker_answers("127.0.0.1", cfg.mqtt.port) else free_port()
            broker = LocalBroker(port, DEMO_BROKER_DIR.resolve(), binary=binary)
            broker.start()
            cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"host": "127.0.0.1", "port": port})})
            print(f"started a private Mosquitto on 127.0.0.1:{port} (log: {broker.log_file})")
        caption_topic = CameraTopics.for_camera(cfg.mqtt.topic_prefix, cfg.camera.name).caption
        print(f"captions of generated scenes, as received on {caption_topic}; "
              f"snapshots in {cfg.snapshot.dir} (open index.html); Ctrl-C to stop\n"
              "(total ms: from grabbing the frame to publishing its caption)", flush=True)
        print(CAPTION_HEADER, flush=True)
        printer = CaptionPrinter(cfg.mqtt.host, cfg.mqtt.port, caption_topic)
        printer.start()
        yield cfg
    finally:
        try:
            if printer is not None:
                printer.stop()
                if printer.count:
                    print(f"{printer.count} captions, {printer.matches} exactly as the ground truth")
        finally:  # the private broker goes even if the terminal went away (broken pipe)
            if broker is not None:
                broker.stop()
