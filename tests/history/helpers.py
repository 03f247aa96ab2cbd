"""What the timeline tests share: a real MQTT 5 client that asks a camera's history, and the
caption stream cut into events the way a user would cut it by eye."""

from __future__ import annotations

import json
import threading
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.contract import CameraTopics


class HistoryAsker:
    """Sends history queries (raw bytes or dicts) with a Response Topic and Correlation Data; waits for answers."""

    def __init__(self, port: int, prefix: str = "explaincam"):
        self.prefix = prefix
        self.reply_topic = f"tests/history/{uuid.uuid4().hex[:8]}"
        self.replies: dict[bytes, dict] = {}
        self.others: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe([(self.reply_topic, 1), (f"{prefix}/+/history/event", 1)])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            correlation = getattr(message.properties, "CorrelationData", None)
            if message.topic == self.reply_topic and correlation is not None:
                self.replies[bytes(correlation)] = json.loads(message.payload)
            else:
                self.others.append((message.topic, message.payload))
            self._cond.notify_all()

    def ask(self, query: bytes | dict, camera: str = "testcam", timeout: float = 10.0) -> dict | None:
        """Send one query; its answer, or None after ``timeout`` s."""
        correlation = uuid.uuid4().bytes
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = correlation
        payload = query if isinstance(query, bytes) else json.dumps(query).encode()
        self.client.publish(CameraTopics.for_camera(self.prefix, camera).history_request, payload, qos=1,
                            properties=properties)
        with self._cond:
            self._cond.wait_for(lambda: correlation in self.replies, timeout)
            return self.replies.get(correlation)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def runs_of(captions: list[dict], hold_frames: int = 2) -> list[dict]:
    """The caption messages (frame_id order) as events: runs of one caption, where a run shorter than
    ``hold_frames`` between two runs of the same caption counts into them. Each: caption, start (the
    first frame's ts), end (the next run's start; None for the last), frames."""
    runs: list[dict] = []
    for message in captions:
        if runs and runs[-1]["caption"] == message["caption"]:
            runs[-1]["frames"] += 1
        else:
            runs.append({"caption": message["caption"], "start": message["ts"], "frames": 1})
    merged: list[dict] = []
    for run in runs:
        if (len(merged) >= 2 and merged[-2]["caption"] == run["caption"] and merged[-1]["frames"] < hold_frames):
            flicker = merged.pop()
            merged[-1]["frames"] += flicker["frames"] + run["frames"]
        else:
            merged.append(dict(run))
    for current, following in zip(merged, merged[1:] + [None]):
        current["end"] = following["start"] if following else None
    return merged
