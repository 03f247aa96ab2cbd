"""``explaincam history``: search a camera's timeline (or every camera's) over MQTT 5.

The query goes to ``{prefix}/{camera}/history/request`` with a Response Topic private to
this client and Correlation Data; the answers with that Correlation Data are the ones
waited for. ``--all-cameras`` reads which cameras of the prefix are online (their retained
``availability``), asks each and merges the answers: a site with many boxes searches them
all through its broker, without a server of its own.

Exit status: 0 answered, 1 a camera answered ``error``, 2 bad arguments or no broker,
3 no answer in time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config_file import ConfigError
from daemon.contract import ONLINE, CameraTopics, history_query, parse_iso_time
from daemon.client_args import add_broker_arguments, apply_config_defaults, connect
from daemon.imaging import from_base64

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DISCOVERY_WAIT_S = 1.0  # how long retained availability messages are collected for --all-cameras


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam history``."""
    parser.add_argument("text", nargs="?", default=None,
                        help='words and "quoted phrases" the caption must hold (all of them)')
    parser.add_argument("--since", default=None, help="events since: 90s, 30m, 2h, 7d ago, or an ISO time")
    parser.add_argument("--until", default=None, help="events until: a duration ago or an ISO time")
    parser.add_argument("--unfamiliar", action="store_true", help="only events the model found unfamiliar")
    parser.add_argument("--similar", type=int, default=None, metavar="ID", help="events most like event ID")
    parser.add_argument("--limit", type=int, default=20, help="events to show (default %(default)s)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many (the next page)")
    parser.add_argument("--json", action="store_true", help="print the merged answer as JSON")
    parser.add_argument("--thumbnails", default=None, metavar="DIR", help="save each event's thumbnail in DIR")
    parser.add_argument("--all-cameras", action="store_true", help="ask every online camera of the prefix")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for answers")
    add_broker_arguments(parser)


def parse_when(text: str | None, now: float) -> float | None:
    """Unix seconds of ``90s`` / ``30m`` / ``2h`` / ``7d`` ago, an ISO 8601 time or Unix seconds; ValueError."""
    if text is None:
        return None
    match = DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * SECONDS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_iso_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90s, 30m, 2h, 7d) nor a time") from None


class HistoryClient:
    """An MQTT 5 connection that sends history queries and collects the correlated answers."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.client_id = f"explaincam-history-{uuid.uuid4().hex[:12]}"
        self.reply_topic = CameraTopics.for_camera(args.prefix, "_").private_history_response(self.client_id)
        self.answers: dict[bytes, dict] = {}
        self.online: set[str] = set()
        self.ready = threading.Event()
        self.changed = threading.Condition()
        self.connect_error: str | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.connect_error = f"the broker refused the connection: {reason_code}"
            self.ready.set()
            return
        topics = [(self.reply_topic, 1)]
        if self.args.all_cameras:
            topics.append((f"{self.args.prefix}/+/availability", 0))
        client.subscribe(topics)

    def _on_message(self, client, userdata, message):
        with self.changed:
            if message.topic.endswith("/availability"):
                camera = message.topic[len(self.args.prefix) + 1:-len("/availability")]
                if message.payload.decode(errors="replace") == ONLINE:
                    self.online.add(camera)
                else:
                    self.online.discard(camera)
            else:
                correlation = getattr(message.properties, "CorrelationData", None)
                try:
                    self.answers[correlation] = json.loads(message.payload)
                except ValueError:
                    self.answers[correlation] = {"status": "error",
                                                 "error": {"code": "bad_json", "message": "unreadable answer"}}
            self.changed.notify_all()

    def connect(self) -> None:
        """Connect and subscribe; ConnectionError when the broker cannot be used."""
        args = self.args
        port = connect(self.client, args)
        if not self.ready.wait(10) or self.connect_error:
            self.close()
            raise ConnectionError(self.connect_error or f"no answer from the broker at {args.host}:{port}")

    def cameras(self) -> list[str]:
        """The cameras of the prefix whose retained availability says online."""
        time.sleep(DISCOVERY_WAIT_S)
        with self.changed:
            return sorted(self.online)

    def ask(self, cameras: list[str], query: dict, timeout: float) -> dict[str, dict | None]:
        """Send ``query`` to each camera; its answer, or None when none came within ``timeout``."""
        sent = {}
        for camera in cameras:
            correlation = uuid.uuid4().bytes
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = correlation
            topic = CameraTopics.for_camera(self.args.prefix, camera).history_request
            self.client.publish(topic, json.dumps(query), qos=1, properties=properties)
            sent[camera] = correlation
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(c in self.answers for c in sent.values()) and time.monotonic() < deadline:
                self.changed.wait(max(0.0, deadline - time.monotonic()))
            return {camera: self.answers.get(correlation) for camera, correlation in sent.items()}

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def merge(answers: dict[str, dict | None], limit: int, by_similarity: bool) -> dict:
    """One answer from every camera's: events newest first (most similar first), at most ``limit``;
    ``next_offset`` the smallest a camera gave (a broker's packet limit may shorten a page), what
    the packet limit left out per camera under ``omitted``; the cameras that failed or did not
    answer under ``errors``."""
    events, errors = [], {}
    for camera, answer in answers.items():
        if answer is None:
            errors[camera] = {"code": "timeout", "message": "no answer in time"}
        elif answer.get("status") != "ok":
            errors[camera] = answer.get("error") or {"code": answer.get("status"), "message": ""}
        else:
            events += [{**event, "camera": camera} for event in answer.get("events", [])]
    key = (lambda e: -e.get("similarity", 0.0)) if by_similarity else (lambda e: -e["start"])
    events.sort(key=key)
    offsets = [a["next_offset"] for a in answers.values() if a and a.get("next_offset") is not None]
    more = bool(offsets) or len(events) > limit
    omitted = {camera: a["omitted"] for camera, a in answers.items() if a and a.get("omitted")}
    return {"status": "ok" if not errors else "partial" if events or len(errors) < len(answers) else "error",
            "cameras": sorted(answers), "events": events[:limit], "more": more,
            "next_offset": min(offsets, default=None), "omitted": omitted, "errors": errors}


def event_line(event: dict) -> str:
    """One event as a line for people."""
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["start"]))
    seconds = max(0.0, event["end"] - event["start"])
    flags = " [unfamiliar]" if event.get("out_of_distribution") else ""
    similarity = f" ({event['similarity']:.2f})" if "similarity" in event else ""
    explained = f" explained: {','.join(event['explained'])}" if event.get("explained") else ""
    return (f"{start} {seconds:6.0f}s {event['camera']}#{event['event_id']}{flags}{similarity}: "
            f"{event['caption']}{explained}")


def main(args: argparse.Namespace) -> int:
    """Send the query, wait for the answers, print them."""
    try:
        apply_config_defaults(args)
        now = time.time()
        query = history_query(uuid.uuid4().hex[:16], args.text, parse_when(args.since, now),
                              parse_when(args.until, now), args.unfamiliar, args.similar, args.limit, args.offset,
                              thumbnails=bool(args.thumbnails))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = HistoryClient(args)
    try:
        client.connect()
    except (ConnectionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        cameras = client.cameras() if args.all_cameras else [args.camera]
        if not cameras:
            print(f"error: no camera of prefix {args.prefix!r} is online", file=sys.stderr)
            return 3
        merged = merge(client.ask(cameras, query, args.timeout), args.limit, args.similar is not None)
    finally:
        client.close()
    if args.thumbnails:
        folder = Path(args.thumbnails)
        folder.mkdir(parents=True, exist_ok=True)
        for event in merged["events"]:
            if event.get("thumbnail_jpeg"):
                (folder / f"{event['camera']}-{event['event_id']}.jpg").write_bytes(
                    from_base64(event.pop("thumbnail_jpeg")))
    if args.json:
        print(json.dumps(merged, indent=2))
    else:
        for event in merged["events"]:
            print(event_line(event))
        if merged["more"]:
            offset = merged["next_offset"] if merged["next_offset"] is not None else args.offset + args.limit
            print(f"(more: --offset {offset})")
    for camera, omitted in merged["omitted"].items():
        print(f"{camera}: {omitted.get('reason')}: sent without thumbnails"
              + (f" and {omitted['events']} events" if omitted.get("events") else ""), file=sys.stderr)
    for camera, error in merged["errors"].items():
        print(f"{camera}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    if all(error.get("code") == "timeout" for error in merged["errors"].values()) and merged["errors"] \
            and not merged["events"] and len(merged["errors"]) == len(cameras):
        return 3
    return 1 if merged["errors"] else 0
