"""The broker's limit on packet size, and how big an MQTT PUBLISH packet is.

A broker may cap the size of the packets it accepts (Mosquitto's ``max_packet_size``, most
hosted brokers). Over MQTT 5 it states the cap in CONNACK (Maximum Packet Size); over
MQTT 3.1.1 it just closes the connection of a client that sends a larger packet, so the cap
comes from the config (``mqtt.max_packet_size``). A packet above the limit is never sent:
the sender makes the message smaller where it knows how (``fit``), else drops it.

Pure arithmetic (MQTT 5 §2.1.4, §3.3); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_VARINT = 268_435_455  # the largest Remaining Length MQTT can state


def varint_size(value: int) -> int:
    """Bytes of an MQTT Variable Byte Integer holding ``value``."""
    size = 1
    while value >= 128:
        value //= 128
        size += 1
    return size


def publish_packet_size(topic_bytes: int, payload_bytes: int, qos: int, properties_bytes: int) -> int:
    """Bytes of a PUBLISH packet: fixed header, topic, packet id (QoS 1/2), properties, payload.

    ``properties_bytes`` is the properties field as sent, its length prefix included (MQTT 5:
    1 for none; MQTT 3.1.1: 0).
    """
    remaining = 2 + topic_bytes + (2 if qos > 0 else 0) + properties_bytes + payload_bytes
    return 1 + varint_size(remaining) + remaining


def payload_room(limit: int, topic_bytes: int, qos: int, properties_bytes: int) -> int:
    """The largest payload whose PUBLISH packet fits in ``limit`` bytes (0 or less: none does)."""
    room = limit - publish_packet_size(topic_bytes, 0, qos, properties_bytes)
    while room > 0 and publish_packet_size(topic_bytes, room, qos, properties_bytes) > limit:
        room -= 1  # a longer Remaining Length field took a byte or two
    return room


@dataclass
class PacketLimit:
    """The largest packet this connection may send: the config's cap and the broker's (CONNACK),
    whichever is smaller; None when neither states one."""

    configured: int | None = None
    broker: int | None = None

    @property
    def bytes(self) -> int | None:
        """The limit in bytes, or None for no limit."""
        stated = [v for v in (self.configured, self.broker) if v]
        return min(stated) if stated else None

    @property
    def source(self) -> str:
        """Who set the limit, for log lines."""
        if self.broker and (not self.configured or self.broker <= self.configured):
            return "the broker's Maximum Packet Size (CONNACK)"
        return "mqtt.max_packet_size"
