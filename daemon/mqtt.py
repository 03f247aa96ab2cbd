"""MQTT for the daemon: paho-mqtt 2 (callback API v2), MQTT 3.1.1 or 5.

``MqttPublisher`` connects in the background (a missing broker never blocks captioning),
reconnects with backoff, and keeps the broker's view right after every (re)connect:
``online`` on the camera's availability topic (``daemon.contract``; the last will says
``offline``), then the newest
value of every retained topic, then whatever waits in the bounded outgoing queue.
Subscriptions are made in ``on_connect``, so they survive reconnects; a subscription that
must not act on retained messages (explain requests) asks MQTT 5 brokers not to send them
(retain handling 2) and drops any message that still carries the retain flag.

``publish()`` never blocks: messages go through a bounded queue (the oldest are dropped
and counted when it is full) to one sender thread, the only one that hands messages to
paho, so retained topics are written to the broker in order. A retained message that a
newer one of the same topic has replaced before it was sent is not sent at all.

The figures tell what reached the broker: a QoS 1/2 message counts as ``delivered`` when
the broker acknowledges it; a QoS 0 message when the broker acknowledges a QoS 1/2
message handed over after it (one connection is read in order). Until then it is
``pending``; a QoS 0 message still pending when the connection is lost counts as
``dropped`` (a hanging broker swallows them silently until the keep-alive notices).

Why the broker closed an accepted connection, when its reason code does not say (another
client with the same client id, a packet too large), is ``daemon.close_diagnosis``'s.

What brokers in the wild do (``daemon.packet_limits``, ``daemon.broker_refusals``): a packet
above the broker's Maximum Packet Size (CONNACK, or ``mqtt.max_packet_size``) is never sent;
a message given a ``fit`` is made smaller, others are dropped, said once per topic and
counted (``too_large``). Every SUBACK and PUBACK reason code is read: a refused
subscription is an error naming the topic and what stops working, refused publishes are
said once per topic and counted (``refused``). A CONNECT that gets no CONNACK within
``mqtt.connack_timeout_s`` is a failed attempt with its reason; over MQTT 5 (no answer, or
"Unsupported protocol version") the log names ``mqtt.protocol``.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.broker_refusals import RefusalNotices, refusal_hint
from daemon.close_diagnosis import CloseDiagnosis
from daemon.config import MqttConnectionConfig
from daemon.contract import OFFLINE, ONLINE
from daemon.packet_limits import PacketLimit, payload_room, publish_packet_size

log = logging.getLogger(__name__)

MessageCallback = Callable[[bytes, "Properties | None"], None]
PayloadFit = Callable[[int], "bytes | None"]  # room in bytes -> a payload that fits, or None
MAX_TOPIC_BYTES = 65535  # an MQTT string's length is two bytes
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK: the broker does not speak this MQTT version
SOCKET_READ_FAILED = "failed to receive on socket:"  # paho's log line when a read fails (TLS alerts too)
PROTOCOL_HINT = ("the broker may speak only MQTT 3.1.1: set mqtt.protocol: 3.1.1 in the config "
                 "(or upgrade the broker to one that speaks MQTT 5)")


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (empty, wildcards, NUL, too long), or None when it can."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "has wildcards (+ or #)"
    if "\x00" in topic:
        return "holds a NUL character"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return f"is {size} bytes long; at most {MAX_TOPIC_BYTES} are allowed" if size > MAX_TOPIC_BYTES else None


def topic_filter(subscription: str) -> str:
    """The topic filter of a subscription: ``$share/GROUP/FILTER`` (MQTT 5 shared) -> ``FILTER``."""
    if subscription.startswith("$share/"):
        return subscription.split("/", 2)[2] if subscription.count("/") >= 2 else subscription
    return subscription


class MqttSetupError(Exception):
    """The MQTT settings cannot be used (unreadable password file, missing variable, TLS files)."""


def read_password(config: MqttConnectionConfig) -> str | None:
    """The password from ``password_file`` or ``password_env`` (None when neither is set)."""
    if config.password_file is not None:
        try:
            return Path(config.password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise MqttSetupError(f"cannot read mqtt.password_file {config.password_file}: {exc.strerror}") from None
    if config.password_env is not None:
        if config.password_env not in os.environ:
            raise MqttSetupError(f"mqtt.password_env names {config.password_env}, which is not set")
        return os.environ[config.password_env]
    return None


def describe_connect_error(exc: BaseException | None, host: str, port: int, tls: bool = False) -> str:
    """A short human reason for a failed connection attempt."""
    if exc is None:
        return f"cannot connect to {host}:{port}"
    if tls and isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return f"TLS handshake failed: the broker closed the connection (is {host}:{port} a TLS listener?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}:{port} (is the broker running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve broker host {host!r}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"connection to {host}:{port} timed out"
    return f"cannot connect to {host}:{port}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


@dataclass
class OutgoingMessage:
    """A message waiting for the sender thread; ``seq`` orders messages of one topic."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    seq: int
    fit: PayloadFit | None = None


class MqttPublisher:
    """A resilient MQTT connection: availability, retained state, bounded outgoing queue, subscriptions."""

    def __init__(self, config: MqttConnectionConfig, client_id: str, availability_topic: str,
                 session_expiry_s: int = 0):
        self.config = config
        self.client_id = client_id
        # MQTT 5: > 0 keeps this client's session (subscriptions, queued QoS 1 messages) that long
        # after a disconnect, and every connect resumes it (clean_start False)
        self.session_expiry_s = session_expiry_s
        self.availability_topic = availability_topic
        self.is_v5 = config.protocol == "5"
        self.state = "idle"  # idle | connecting | connected | disconnected | stopped
        self.last_error: str | None = None
        self.connects = 0
        self.dropped = 0
        self.sent = 0
        self.delivered = 0
        # mid -> (QoS, topic, packet bytes), in the order handed to paho
        self._unconfirmed: OrderedDict[int, tuple[int, str, int]] = OrderedDict()
        self._early_acks: dict[int, int] = {}  # mid -> reason code of acks that came before their mid was recorded
        self._ignored_retained: set[str] = set()
        self.limit = PacketLimit(configured=config.max_packet_size)
        self.notices = RefusalNotices(log)
        self.closes = CloseDiagnosis(client_id)
        self._attempt = 0  # connection attempts whose socket opened
        self._connack_missed = 0  # the last attempt closed for want of a CONNACK
        self._answered = 0  # the last attempt that got a CONNACK
        self._socket_error: tuple[int, str] | None = None  # (attempt, why paho's last read failed)
        self._suback_topics: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its topics, in order
        self._queue: deque[OutgoingMessage] = deque()
        self._retained: dict[str, OutgoingMessage] = {}
        self._retained_sent: dict[str, int] = {}
        self._republish_pending = False
        # topic -> (qos, callback, retained, with_topic)
        self._subscriptions: dict[str, tuple[int, MessageCallback, bool, bool]] = {}
        self._purposes: dict[str, str] = {}  # topic -> what stops working if the broker refuses it
        self._seq = 0
        self._stopping = False
        self._cond = threading.Condition()
        self._sender: threading.Thread | None = None
        self._client = self._make_client(client_id)

    # -- setup -------------------------------------------------------------------------
    def _make_client(self, client_id: str) -> paho.Client:
        c = self.config
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5 if self.is_v5 else paho.MQTTv311,
                             clean_session=None if self.is_v5 else True)
        client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        if c.username is not None:
            client.username_pw_set(c.username, read_password(c))
        if c.tls.active:
            for name in ("ca_certs", "certfile", "keyfile"):
                path = getattr(c.tls, name)
                if path is not None and not Path(path).is_file():
                    raise MqttSetupError(f"mqtt.tls.{name}: {path} does not exist")
            try:
                client.tls_set(ca_certs=_str_or_none(c.tls.ca_certs), certfile=_str_or_none(c.tls.certfile),
                               keyfile=_str_or_none(c.tls.keyfile), cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise MqttSetupError(f"mqtt.tls: cannot load the certificates: {exc}") from None
            client.tls_insecure_set(c.tls.insecure)
        client.reconnect_delay_set(c.reconnect_min_s, max(c.reconnect_max_s, c.reconnect_min_s))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_log = self._on_paho_log
        return client

    def start(self) -> None:
        """Connect in the background and start the sender; returns at once even if no broker answers."""
        self.state = "connecting"
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-send", daemon=True)
        self._sender.start()
        session = {}
        if self.is_v5 and self.session_expiry_s > 0:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry_s
            session = {"clean_start": False, "properties": properties}
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive, **session)
        self._client.loop_start()
        log.info("MQTT: connecting to %s:%d (MQTT %s%s) as client id %s", self.config.host, self.config.port,
                 self.config.protocol, ", TLS" if self.config.tls.active else "", self.client_id)

    # -- public API --------------------------------------------------------------------
    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        return max(0, self.connects - 1)

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a connection; True if connected."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.state != "connected":
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    return False
                self._cond.wait(remaining)
        return True

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                correlation_data: bytes | None = None, response_topic: str | None = None,
                message_expiry_s: int | None = None, fit: PayloadFit | None = None) -> bool:
        """Queue a message without blocking; False if the queue was full and the oldest was dropped,
        or if ``topic`` cannot be published to (the message is dropped with a log line).

        ``correlation_data``, ``response_topic`` and ``message_expiry_s`` (the broker drops the
        message, retained or queued, after that many seconds) are MQTT 5 properties (ignored on 3.1.1).
        A retained message is also remembered and re-published after every reconnect.
        ``fit(room)`` makes a payload of at most ``room`` bytes (or None) when the message's
        packet would be larger than the broker accepts; without it such a message is dropped.
        """
        problem = topic_problem(topic)
        if problem is not None:
            log.warning("MQTT: message dropped: the topic %r %s", topic, problem)
            with self._cond:
                self.dropped += 1
            return False
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        properties = None
        if self.is_v5 and (correlation_data is not None or response_topic is not None or message_expiry_s):
            properties = Properties(PacketTypes.PUBLISH)
            if message_expiry_s:
                properties.MessageExpiryInterval = int(message_expiry_s)
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
            if response_topic is not None:
                properties.ResponseTopic = response_topic
        with self._cond:
            self._seq += 1
            message = OutgoingMessage(topic, data, qos, retain, properties, self._seq, fit)
            if retain:
                self._retained[topic] = message
                if self.state != "connected":
                    return True  # sent by the re-publish after the next connect
            accepted = True
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self.dropped += 1
                accepted = False
            self._queue.append(message)
            self._cond.notify_all()
        return accepted

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 0, retained: bool = True,
                  with_topic: bool = False, purpose: str = "") -> None:
        """Call ``callback(payload, properties)`` for each message on ``topic`` (wildcards allowed),
        or ``callback(payload, properties, topic)`` with ``with_topic``.

        The callback runs on paho's network thread: it must return quickly. Subscriptions
        are renewed on every reconnect. ``properties`` is None on MQTT 3.1.1. With
        ``retained=False`` retained messages are never handed to ``callback`` (a command
        someone published with the retain flag would otherwise run again at every reconnect).
        ``purpose`` says what stops working when the broker refuses the subscription
        ("explain requests are not answered"), for the log line.
        """
        with self._cond:
            self._subscriptions[topic] = (qos, callback, retained, with_topic)
            self._purposes[topic] = purpose
            if self.state == "connected":  # under the lock: the SUBACK's handler needs the mid recorded
                self._send_subscribe(self._client, [topic])

    def _send_subscribe(self, client: paho.Client, topics: list[str]) -> None:
        """SUBSCRIBE to ``topics`` (known subscriptions) and remember them for the SUBACK (caller holds the lock)."""
        result, mid = client.subscribe([self._subscription(t, self._subscriptions[t][0], self._subscriptions[t][2])
                                        for t in topics])
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._suback_topics[mid] = list(topics)

    def _subscription(self, topic: str, qos: int, retained: bool) -> tuple:
        """``(topic, qos)`` for paho; on MQTT 5 with retain handling 2 when retained messages are unwanted."""
        if self.is_v5 and not retained:
            return topic, SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        return topic, qos

    def status(self) -> dict:
        """Connection figures for the stats message: ``sent`` handed to the network, ``delivered``
        acknowledged by the broker, ``pending`` not yet, ``dropped`` lost on the way."""
        with self._cond:
            depth = len(self._queue)
            return {"state": self.state, "last_error": self.last_error, "reconnects": self.reconnects,
                    "sent": self.sent, "delivered": self.delivered, "pending": len(self._unconfirmed),
                    "dropped": self.dropped, "queue_depth": depth,
                    "refused": self.notices.count("refused"), "too_large": self.notices.count("too_large"),
                    "refused_subscriptions": self.notices.topics_of("refused_subscription"),
                    "max_packet_size": self.limit.bytes}

    def stop(self, timeout: float = 1.0) -> None:
        """Flush what can be sent, publish ``offline``, disconnect; bounded by about ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(max(0.0, deadline - time.monotonic()) / 2)
        if self.state == "connected":
            info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.05, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish offline: %s", exc)
        was_connected, self.state = self.state == "connected", "stopped"
        self._client.disconnect()
        # loop_stop() joins paho's thread, which may sleep up to 1 s in its reconnect wait:
        # wait for it only when it is connected (and so quick to end).
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        if was_connected:
            stopper.join(max(0.1, deadline - time.monotonic()))

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._answered = self._attempt
        if reason_code.is_failure:
            reason = f"broker refused the connection: {reason_code}"
            if self.is_v5 and reason_code == UNSUPPORTED_PROTOCOL:
                reason = f"{reason}; {PROTOCOL_HINT}"
            self._connect_failed(reason, logging.ERROR)
            return
        with self._cond:
            if self._stopping:
                return
            self.state = "connected"
            self.last_error = None
            self.connects += 1
            self.closes.connected()
            self._republish_pending = True
            self.limit.broker = getattr(properties, "MaximumPacketSize", None) if self.is_v5 else None
            for qos, topic, size in self._unconfirmed.values():  # paho sends these again now, unseen by the sender
                if qos > 0:
                    self.closes.sent(size, topic)
            # SUBSCRIBE is queued before the sender wakes (it needs this lock), so the broker
            # has the subscriptions before anything queued is published: a reply to what we
            # publish (Home Assistant's birth after discovery) cannot arrive unheard
            if self._subscriptions:
                self._send_subscribe(client, list(self._subscriptions))
            self._cond.notify_all()
        limit = self.limit.bytes
        log.info("MQTT: connected to %s:%d%s%s", self.config.host, self.config.port,
                 f" (reconnect {self.reconnects})" if self.reconnects else "",
                 f"; packets up to {limit} bytes ({self.limit.source})" if limit else "")
        info = client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        with self._cond:
            self._track(info.mid, 1, self.availability_topic, 0)

    def _on_socket_open(self, client, userdata, sock) -> None:
        """paho opened a connection and sends CONNECT: a CONNACK must follow within ``connack_timeout_s``."""
        with self._cond:
            self._attempt += 1
            attempt = self._attempt
        timer = threading.Timer(self.config.connack_timeout_s, self._connack_overdue, args=(attempt, sock))
        timer.daemon = True
        timer.start()

    def _connack_overdue(self, attempt: int, sock) -> None:
        """Timer: no CONNACK came for ``attempt``: a failed attempt; close its socket so paho tries again."""
        with self._cond:
            if attempt != self._attempt or self.state in ("connected", "stopped") or self._stopping:
                return
            self._connack_missed = attempt
        reason = (f"no CONNACK from {self.config.host}:{self.config.port} within {self.config.connack_timeout_s:g} s "
                  f"of CONNECT (MQTT {self.config.protocol})")
        if self.is_v5:
            reason = f"{reason}; {PROTOCOL_HINT}"
        self._connect_failed(reason, logging.ERROR)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # paho's loop reads the end of file and reconnects
        except OSError:
            pass

    def _on_paho_log(self, client, userdata, level, text: str) -> None:
        """Keep why paho's last socket read failed (a TLS alert, a reset): it names why a broker closed
        a connection before CONNACK better than any guess."""
        if level == paho.MQTT_LOG_ERR and text.startswith(SOCKET_READ_FAILED):
            with self._cond:
                self._socket_error = (self._attempt, text.removeprefix(SOCKET_READ_FAILED).strip())

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its `except OSError:` block, so the exception is still at hand.
        reason = describe_connect_error(sys.exc_info()[1], self.config.host, self.config.port, self.config.tls.active)
        self._connect_failed(reason, logging.WARNING)

    def _connect_failed(self, reason: str, level: int) -> None:
        """Record a failed connection attempt; log ``reason`` at ``level`` when it is new, else at debug."""
        with self._cond:
            changed = reason != self.last_error
            self.state = "disconnected"
            self.last_error = reason
        log.log(level if changed else logging.DEBUG, "MQTT: %s; retrying", reason)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        hint = None
        with self._cond:
            was_connected = self.state == "connected"
            before_connack = not was_connected and self._answered != self._attempt
            if self.state != "stopped":
                self.state = "disconnected"
            lost = [mid for mid, (qos, _, _) in self._unconfirmed.items() if qos == 0]
            for mid in lost:  # a QoS 0 message the broker never confirmed is gone with the connection
                del self._unconfirmed[mid]
            self.dropped += len(lost)
            timed_out = self._connack_missed == self._attempt
            if was_connected and not self._stopping:
                why, hint = self.closes.closed(reason_code)
                self.last_error = why or f"connection lost: {reason_code}"
            self._cond.notify_all()
        if was_connected and not self._stopping:
            log.warning("MQTT: %s; reconnecting%s", self.last_error,
                        f" ({len(lost)} unconfirmed messages lost)" if lost else "")
            if hint:
                log.error("MQTT: %s", hint)
        elif before_connack and not timed_out and not self._stopping and self._attempt:
            self._connect_failed(self._closed_before_connack(), logging.ERROR)

    def _closed_before_connack(self) -> str:
        """Why the broker closed an attempt before its CONNACK: the socket's error where paho saw one
        (a TLS alert: a client certificate the broker requires), else the protocol version guess."""
        reason = f"{self.config.host}:{self.config.port} closed the connection without answering CONNECT"
        with self._cond:
            error = self._socket_error[1] if self._socket_error and self._socket_error[0] == self._attempt else None
        if error is None:
            return f"{reason}; {PROTOCOL_HINT}" if self.is_v5 else reason
        reason = f"{reason} ({error})"
        if "certificate required" in error.lower():
            return (f"{reason}; the broker requires a client certificate: set mqtt.tls.certfile and "
                    f"mqtt.tls.keyfile")
        return reason

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        with self._cond:
            matching = [(topic, cb, retained, with_topic)
                        for topic, (_, cb, retained, with_topic) in self._subscriptions.items()
                        if paho.topic_matches_sub(topic_filter(topic), message.topic)]
        for topic, callback, retained, with_topic in matching:
            if message.retain and not retained:
                if topic not in self._ignored_retained:
                    self._ignored_retained.add(topic)
                    log.warning("MQTT: ignored a retained message on %s (logged once): requests must not be "
                                "retained; clear it with: mosquitto_pub -r -n -t '%s'", message.topic, message.topic)
                continue
            try:
                properties = message.properties if self.is_v5 else None
                callback(message.payload, properties, *((message.topic,) if with_topic else ()))
            except Exception:
                log.exception("MQTT: handler for %s failed", message.topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        """paho: a QoS 0 message was written to the socket, or a QoS 1/2 one acknowledged (PUBACK/PUBREC,
        whose MQTT 5 reason code may refuse it)."""
        code = getattr(reason_code, "value", 0)
        with self._cond:
            entry = self._unconfirmed.get(mid)
            if entry is None:
                self._early_acks[mid] = code  # a QoS 1/2 ack can beat the sender's bookkeeping
                return
            if entry[0] > 0:
                self._confirm(mid, code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """paho: a SUBACK; a refused topic is an error naming it and what stops working."""
        with self._cond:
            topics = self._suback_topics.pop(mid, [])
            purposes = [self._purposes.get(topic, "") for topic in topics]
        for topic, purpose, code in zip(topics, purposes, reason_codes):
            if code.is_failure:
                self.notices.report("refused_subscription", topic, logging.ERROR,
                                    f"MQTT: the broker refused the subscription to {topic} ({code}): "
                                    f"{purpose or 'its messages never arrive'}; {refusal_hint(code.value)}")

    def _confirm(self, mid: int, code: int = 0) -> None:
        """The broker acknowledged ``mid`` (refused it with a ``code`` of 0x80 or more): every QoS 0
        message handed over before it is delivered, and so is ``mid`` unless refused (caller holds the lock)."""
        earlier = []
        for other, (qos, _, size) in self._unconfirmed.items():
            if other == mid:
                break
            if qos == 0:
                earlier.append((other, size))
        for other, size in earlier:
            del self._unconfirmed[other]
            self.closes.taken(size)
        _, topic, size = self._unconfirmed.pop(mid)
        self.delivered += len(earlier)
        if code >= 0x80:
            self.notices.report("refused", topic, logging.WARNING,
                                f"MQTT: the broker refused a message on {topic} (reason code 0x{code:02X}): "
                                f"subscribers of {topic} get nothing; {refusal_hint(code)}")
            return
        self.delivered += 1
        self.closes.taken(size)

    def _track(self, mid: int, qos: int, topic: str, size: int) -> None:
        """Remember a message of ``size`` bytes handed to paho until the broker confirms it (caller holds the lock)."""
        self._unconfirmed.pop(mid, None)  # message ids wrap around after 65535
        self._unconfirmed[mid] = (qos, topic, size)
        if mid in self._early_acks:
            code = self._early_acks.pop(mid)
            if qos > 0:
                self._confirm(mid, code)

    # -- sender thread ------------------------------------------------------------------
    def _next_batch(self) -> list[OutgoingMessage] | None:
        """Messages to send now (waiting for some), or None when stopping with nothing sendable."""
        with self._cond:
            while True:
                connected = self.state == "connected"
                if connected and self._republish_pending:
                    # After a (re)connect the broker may have lost its retained values: send them all.
                    self._republish_pending = False
                    batch = list(self._retained.values())
                    self._retained_sent.update((m.topic, m.seq) for m in batch)
                    if batch:
                        return batch
                elif connected and self._queue:
                    message = self._queue.popleft()
                    if message.retain:
                        if (self._retained.get(message.topic) is not message
                                or self._retained_sent.get(message.topic) == message.seq):
                            continue  # replaced by a newer value, or already sent by the re-publish
                        self._retained_sent[message.topic] = message.seq
                    return [message]
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()

    def _fitted(self, message: OutgoingMessage) -> bytes | None:
        """The payload to send: as given when its packet fits the broker's limit, else made smaller by the
        message's ``fit``, else None (dropped, said once per topic and counted)."""
        limit = self.limit.bytes
        topic_bytes = len(message.topic.encode())
        properties_bytes = (len(message.properties.pack()) if message.properties is not None else 1) if self.is_v5 else 0
        size = publish_packet_size(topic_bytes, len(message.payload), message.qos, properties_bytes)
        if limit is None or size <= limit:
            return message.payload
        room = payload_room(limit, topic_bytes, message.qos, properties_bytes)
        smaller = message.fit(room) if message.fit is not None and room > 0 else None
        if smaller is not None and len(smaller) <= room:
            self.notices.report("made_smaller", message.topic, logging.INFO,
                                f"MQTT: messages on {message.topic} are larger than {self.limit.source} "
                                f"({limit} bytes): sent smaller ({len(message.payload)} -> {len(smaller)} bytes)")
            return smaller
        self.notices.report("too_large", message.topic, logging.WARNING,
                            f"MQTT: a message on {message.topic} was not sent: its packet ({size} bytes) is larger "
                            f"than {self.limit.source} ({limit} bytes)")
        return None

    def _send_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            for message in batch:
                payload = self._fitted(message)
                if payload is None:
                    continue
                size = publish_packet_size(len(message.topic.encode()), len(payload), message.qos, 0)
                with self._cond:  # before it leaves: a broker's close can reach paho's thread before publish returns
                    self.closes.sent(size, message.topic)
                try:
                    info = self._client.publish(message.topic, payload, message.qos, message.retain,
                                                message.properties)
                except (ValueError, TypeError) as exc:  # paho refuses the message: drop it, keep sending
                    log.warning("MQTT: message on %r dropped: %s", message.topic, exc)
                    with self._cond:
                        self.closes.not_sent(size, message.topic)
                        self.dropped += 1
                    continue
                sent = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                # paho keeps a QoS 1/2 message it could not send yet and sends it after the reconnect
                kept = message.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
                with self._cond:
                    if sent:
                        self.sent += 1
                    else:
                        self.closes.not_sent(size, message.topic)
                    if sent or kept:
                        self._track(info.mid, message.qos, message.topic, size)
                    elif not message.retain:  # retained values are re-published after the reconnect
                        self.dropped += 1
                if not sent:
                    log.debug("MQTT: message on %s not sent: %s", message.topic, paho.error_string(info.rc))


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)
