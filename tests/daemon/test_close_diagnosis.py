"""Why a broker closed an accepted connection: a packet too large or a twin client, never a packet that
did not leave."""

from daemon.close_diagnosis import SHORT_CONNECTIONS_HINT, UNSPECIFIED, CloseDiagnosis

TOPIC = "explaincam/cam/snapshot"


def test_a_close_right_after_an_oversized_packet_blames_its_size_on_the_second_connection():
    closes = CloseDiagnosis("cam-1")
    closes.connected()
    closes.sent(40_000, TOPIC)  # told before the packet leaves: the close can come before publish returns
    assert closes.closed(UNSPECIFIED) == (None, None)  # nothing acknowledged yet: one close proves nothing
    closes.connected()
    closes.sent(40_000, TOPIC)
    why, hint = closes.closed(UNSPECIFIED)
    assert why == f"connection lost right after a 40000-byte packet on {TOPIC}"
    assert "caps the packet size" in hint and "mqtt.max_packet_size" in hint and "client id" not in hint


def test_a_packet_that_did_not_leave_is_not_blamed_and_the_closes_point_at_a_twin():
    closes = CloseDiagnosis("cam-1")
    closes.taken(500)
    hints = []
    for _ in range(SHORT_CONNECTIONS_HINT):
        closes.connected()
        closes.sent(40_000, TOPIC)
        closes.not_sent(40_000, TOPIC)  # paho had no connection: it never reached the broker
        hints.append(closes.closed(UNSPECIFIED))
    assert [why for why, _ in hints] == [None] * SHORT_CONNECTIONS_HINT
    assert hints[-1][1] is not None and "same client id 'cam-1'" in hints[-1][1]
    assert all(hint is None for _, hint in hints[:-1])
