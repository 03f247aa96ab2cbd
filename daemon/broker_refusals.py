"""What a broker refused, said once per topic: subscriptions (SUBACK), publishes (PUBACK), packets too large.

A broker answers every SUBSCRIBE with a reason code per topic filter and every QoS 1
PUBLISH with a PUBACK that, over MQTT 5, carries a reason code too; 0x80 and above is a
refusal (an ACL that denies the topic: 0x87 Not authorized). Logging each refused message
would flood the log at the caption rate, so :class:`RefusalNotices` says each problem once
per topic and counts every occurrence for the stats message.
"""

from __future__ import annotations

import logging
import threading

NOT_AUTHORIZED = 0x87

# what to do about a refusal, by MQTT 5 reason code (MQTT 3.1.1 SUBACK failures are 0x80)
REASON_HINTS = {
    NOT_AUTHORIZED: "allow it in the broker's ACL for this client's user name",
    0x80: "the broker's ACL or limits are the usual cause: check them for this client's user name",
    0x8F: "the topic filter is invalid for this broker",
    0x90: "the topic name is invalid for this broker",
    0x97: "the broker's quota for this client is used up",
    0x9E: "this broker does not support shared subscriptions",
    0xA1: "this broker does not support subscription identifiers",
    0xA2: "this broker does not support wildcard subscriptions",
}


def refusal_hint(code: int) -> str:
    """What usually fixes a refusal with reason code ``code``."""
    return REASON_HINTS.get(code, REASON_HINTS[0x80])


class RefusalNotices:
    """Logs each (kind, topic) problem once and counts every occurrence; thread-safe."""

    def __init__(self, logger: logging.Logger):
        self._log = logger
        self._said: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.topics: dict[str, list[str]] = {}

    def report(self, kind: str, topic: str, level: int, message: str) -> bool:
        """Count one ``kind`` problem on ``topic``; log ``message`` at ``level`` the first time (True then)."""
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            first = (kind, topic) not in self._said
            if first:
                self._said.add((kind, topic))
                self.topics.setdefault(kind, []).append(topic)
        if first:
            self._log.log(level, "%s (logged once for this topic)", message)
        return first

    def count(self, kind: str) -> int:
        """How many ``kind`` problems were reported."""
        with self._lock:
            return self.counts.get(kind, 0)

    def topics_of(self, kind: str) -> list[str]:
        """The topics with a ``kind`` problem, in the order they first had one."""
        with self._lock:
            return list(self.topics.get(kind, []))
