"""``explaincam request``: ask a running daemon over MQTT to explain a frame, save what comes back.

MQTT 5: the request carries a Response Topic private to this client and random
Correlation Data; the answer with that Correlation Data is the one waited for. The grid
picture is the ``explain/image`` message the daemon publishes for this request (it comes
just before the response); if none arrives, it is redrawn from the heatmaps.

Exit status: 0 explanation saved, 1 the daemon answered ``error`` or ``busy``, 2 bad
arguments or no broker, 3 no answer in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.client_args import add_broker_arguments, apply_config_defaults, connect
from daemon.config_file import ConfigError
from daemon.contract import CameraTopics, explain_request
from daemon.explain.requests import parse_words, save_explanation, summary_lines
from daemon.explain_settings import METHODS

IMAGE_GRACE_S = 2.0  # how long to wait for the grid picture after the response


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam request``."""
    add_broker_arguments(parser)
    parser.add_argument("--frame", default="latest", help="frame_id to explain, or 'latest' (default)")
    parser.add_argument("--event", type=int, default=None, metavar="ID",
                        help="explain a stored event of the timeline (explaincam history lists them) instead")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None, metavar="METHOD",
                        help=f"methods ({', '.join(METHODS)}; default: the daemon's)")
    parser.add_argument("--words", default="all", help="'all' (default) or word indices, e.g. 0,2")
    parser.add_argument("--out", default="explanation", help="folder for response.json, heatmaps and grid.png")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the answer (default %(default)g: the first request also "
                             "starts the explainer)")
    parser.add_argument("--id", default=None, help="request id (default: a random one)")


def build_request(args: argparse.Namespace) -> dict:
    """The request JSON object for the arguments; ValueError on a bad --frame or --words."""
    frame = "latest"
    if args.frame != "latest":
        try:
            frame = int(args.frame)
        except ValueError:
            raise ValueError(f"--frame must be 'latest' or a frame_id, not {args.frame!r}") from None
    return explain_request(args.id or uuid.uuid4().hex[:16], frame, args.methods or None, parse_words(args.words),
                           event=getattr(args, "event", None))


class _Exchange:
    """One MQTT 5 request/response exchange; ``run`` returns (response or None, grid PNG or None)."""

    def __init__(self, args: argparse.Namespace, request: dict):
        self.args, self.request = args, request
        self.client_id = f"explaincam-request-{uuid.uuid4().hex[:12]}"
        topics = CameraTopics.for_camera(args.prefix, args.camera)
        self.request_topic, self.image_topic = topics.explain_request, topics.explain_image
        self.reply_topic = topics.private_response(self.client_id)
        self.correlation = uuid.uuid4().bytes
        self.subscribed, self.answered = threading.Event(), threading.Event()
        self.response: dict | None = None
        self.image: bytes | None = None
        self.image_at = 0.0
        self.sent_at = float("inf")
        self.connect_error: str | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.connect_error = f"the broker refused the connection: {reason_code}"
            self.subscribed.set()
            return
        client.subscribe([(self.reply_topic, 1), (self.image_topic, 0)])

    def _on_message(self, client, userdata, message):
        if message.topic == self.image_topic:
            if not message.retain and time.monotonic() >= self.sent_at:
                self.image, self.image_at = message.payload, time.monotonic()
            return
        correlation = getattr(message.properties, "CorrelationData", None)
        if message.topic == self.reply_topic and correlation == self.correlation:
            try:
                self.response = json.loads(message.payload)
            except ValueError:
                self.response = {"status": "error", "error": {"code": "bad_json", "message": "unreadable response"}}
            self.answered.set()

    def run(self) -> tuple[dict | None, bytes | None]:
        """Connect, send, wait; raise ConnectionError when the broker cannot be used."""
        args = self.args
        port = connect(self.client, args)
        try:
            if not self.subscribed.wait(10) or self.connect_error:
                raise ConnectionError(self.connect_error or f"no answer from the broker at {args.host}:{port}")
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = self.correlation
            self.sent_at = time.monotonic()
            self.client.publish(self.request_topic, json.dumps(self.request), qos=1, properties=properties)
            if not self.answered.wait(args.timeout):
                return None, None
            if self.response.get("status") == "ok" and self.image is None:
                deadline = time.monotonic() + IMAGE_GRACE_S
                while self.image is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            return self.response, self.image
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def main(args: argparse.Namespace) -> int:
    """Send the request, wait for the correlated answer, save and summarise it."""
    try:
        apply_config_defaults(args)
        request = build_request(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.password_file and not os.path.isfile(args.password_file):
        print(f"error: password file {args.password_file} does not exist", file=sys.stderr)
        return 2
    exchange = _Exchange(args, request)
    try:
        response, image = exchange.run()
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if response is None:
        print(f"error: no answer to request {request['id']!r} within {args.timeout:g} s; is the daemon for "
              f"camera {args.camera!r} running and connected to {args.host}?", file=sys.stderr)
        return 3
    if response.get("status") != "ok":
        error = response.get("error") or {}
        print(f"{response.get('status', 'error')}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return 1
    written = save_explanation(args.out, response, image)
    print("\n".join(summary_lines(response)))
    print(f"saved {len(written)} files to {args.out} (grid.png {'from the daemon' if image else 'redrawn'})")
    return 0
