"""Why a broker closed a connection it had accepted, when its reason code does not say.

A broker that hands this client's session to another client with the same client id
(MQTT 5 reason "Session taken over", or, from brokers that just close the old connection,
connections closed again and again soon after they were accepted, each at no sign of
another cause) is named with a hint. A close that has another reason (an MQTT 5 DISCONNECT
reason code, or a larger packet than the broker ever took sent just before it) is named as
that instead. ``CloseDiagnosis`` is told what the connection did (accepted, packets sent
and taken) and, at a close, gives the reason to record and the line to log.
"""

from __future__ import annotations

import time
from collections import deque

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code
UNSPECIFIED = 0x80  # paho's reason code for a connection that just closed (no DISCONNECT packet)
SHORT_CONNECTION_S = 10.0  # a connection the broker closes sooner than this is suspicious...
SHORT_CONNECTIONS_HINT = 3  # ...and this many in a row get the duplicate-client-id hint
PACKET_SUSPECT_S = 1.0  # a close this soon after a packet larger than any the broker took blames its size


class CloseDiagnosis:
    """What one client's connections did, and why the last one was closed; the caller serialises its calls."""

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.largest_taken = 0  # the largest packet the broker has acknowledged
        self._connected_at = 0.0
        self._short_connections = 0
        # (monotonic time, bytes, topic) of packets sent in the last PACKET_SUSPECT_S larger than any the broker took
        self._recent_large: deque[tuple[float, int, str]] = deque()
        self._packet_hinted: set[str] = set()  # topics named in a packet-size hint

    def connected(self) -> None:
        """The broker accepted a connection."""
        self._connected_at = time.monotonic()

    def taken(self, size: int) -> None:
        """The broker acknowledged a packet of ``size`` bytes (or one sent after it)."""
        self.largest_taken = max(self.largest_taken, size)

    def sent(self, size: int, topic: str) -> None:
        """A packet goes to the broker (told before it leaves): one larger than any it took is kept for
        PACKET_SUSPECT_S, so that a close right after it blames its size."""
        now = time.monotonic()
        while self._recent_large and now - self._recent_large[0][0] > PACKET_SUSPECT_S:
            self._recent_large.popleft()
        if size > self.largest_taken:
            self._recent_large.append((now, size, topic))

    def not_sent(self, size: int, topic: str) -> None:
        """The packet last announced with ``sent(size, topic)`` did not leave after all (no connection)."""
        for entry in reversed(self._recent_large):
            if entry[1:] == (size, topic):
                self._recent_large.remove(entry)
                return

    def closed(self, reason_code) -> tuple[str | None, str | None]:
        """(the reason to record instead of the reason code, or None; the line to log, or None) for a close
        of an accepted connection: a session takeover or a packet too large; nothing otherwise."""
        if reason_code == SESSION_TAKEN_OVER:
            return (f"session taken over by another client with client id {self.client_id!r}",
                    f"the broker handed this session to another client with the same client id "
                    f"{self.client_id!r}: give each daemon its own mqtt.client_id (or leave it unset)")
        if reason_code != UNSPECIFIED:  # an MQTT 5 DISCONNECT that names its cause: no guessing
            self._short_connections = 0
            return None, None
        now = time.monotonic()
        # with nothing acknowledged yet (a large packet sent first on each connection), a close is
        # blamed on a packet only when it happens again on the next connection
        judged = self.largest_taken > 0 or self._short_connections > 0
        suspects = [(size, topic) for sent, size, topic in self._recent_large
                    if now - sent <= PACKET_SUSPECT_S and size > self.largest_taken and judged]
        self._recent_large.clear()
        if suspects:
            self._short_connections = 0
            size, topic = max(suspects)
            why = f"connection lost right after a {size}-byte packet on {topic}"
            if topic in self._packet_hinted:
                return why, None
            self._packet_hinted.add(topic)
            accepted = (f"larger than any it accepted ({self.largest_taken} bytes)" if self.largest_taken
                        else "twice in a row, before it had acknowledged any message")
            return why, (f"the broker closed the connection right after a {size}-byte packet on {topic}, {accepted}: "
                         "it probably caps the packet size (Mosquitto's max_packet_size); set mqtt.max_packet_size "
                         "to its limit")
        return None, self._takeover_hint()

    def _takeover_hint(self) -> str | None:
        """The duplicate-client-id hint after SHORT_CONNECTIONS_HINT short connections in a row."""
        if time.monotonic() - self._connected_at >= SHORT_CONNECTION_S:
            self._short_connections = 0
            return None
        self._short_connections += 1
        if self._short_connections != SHORT_CONNECTIONS_HINT:
            return None
        return (f"the broker closed the connection {SHORT_CONNECTIONS_HINT} times in a row within "
                f"{SHORT_CONNECTION_S:.0f} s of accepting it; the usual cause is another client with the same "
                f"client id {self.client_id!r} taking the session over: give each daemon its own "
                "mqtt.client_id (or leave it unset)")
