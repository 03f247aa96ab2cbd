"""MqttPublisher against a real Mosquitto: availability, retained state, queue, MQTT 5 properties, errors."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config import MqttConfig
from daemon.broker import LocalBroker, free_port
from daemon.mqtt import MqttPublisher, MqttSetupError, read_password, topic_problem
from daemon.packet_limits import payload_room, publish_packet_size
from tests.conftest import wait_until

AVAILABILITY = "t/availability"


@pytest.fixture
def publishers():
    """Factory for MqttPublisher objects that are stopped at teardown."""
    made = []

    def make(port: int, start: bool = True, **settings) -> MqttPublisher:
        config = MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=1, reconnect_max_s=1, **settings)
        publisher = MqttPublisher(config, f"test-{len(made)}-{time.monotonic_ns()}", AVAILABILITY)
        made.append(publisher)
        if start:
            publisher.start()
        return publisher

    yield make
    for publisher in made:
        publisher.stop()


def test_online_then_offline_retained(mosquitto, publishers, collect):
    publisher = publishers(mosquitto.port)
    assert publisher.wait_connected(5)
    watcher = collect(mosquitto.port, AVAILABILITY)
    assert watcher.wait_for(AVAILABILITY).payload == b"online"
    publisher.stop()
    watcher.wait_for(AVAILABILITY, lambda m: m.payload == b"offline")
    late = collect(mosquitto.port, AVAILABILITY)
    assert late.wait_for(AVAILABILITY).payload == b"offline" and late.on(AVAILABILITY)[0].retain


def test_last_will_says_offline_when_the_connection_dies(mosquitto, publishers, collect):
    publisher = publishers(mosquitto.port, keepalive=5)
    assert publisher.wait_connected(5)
    watcher = collect(mosquitto.port, AVAILABILITY)
    watcher.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
    since = time.monotonic()
    publisher._client.socket().close()  # the network goes away without a DISCONNECT
    watcher.wait_for(AVAILABILITY, lambda m: m.payload == b"offline", since=since)
    watcher.wait_for(AVAILABILITY, lambda m: m.payload == b"online", since=since, timeout=10)
    assert publisher.wait_connected(5) and publisher.reconnects == 1


def test_broker_restart_republishes_retained_state(mosquitto, publishers, collect):
    publisher = publishers(mosquitto.port)
    assert publisher.wait_connected(5)
    publisher.publish("t/cam/caption", '{"frame_id": 1}', retain=True)
    publisher.publish("t/cam/caption", '{"frame_id": 2}', retain=True)
    collect(mosquitto.port, "t/cam/caption").wait_for("t/cam/caption", lambda m: m.json()["frame_id"] == 2)
    mosquitto.restart()  # no persistence: the new broker knows no retained message
    wait_until(lambda: publisher.reconnects == 1, 10, message="reconnect")
    fresh = collect(mosquitto.port, "t/cam/caption", AVAILABILITY)
    assert fresh.wait_for("t/cam/caption").json() == {"frame_id": 2}
    assert fresh.wait_for(AVAILABILITY).payload == b"online"


def test_retained_values_published_while_away_are_coalesced(mosquitto, publishers, collect):
    mosquitto.stop()
    publisher = publishers(mosquitto.port, start=False)  # away: no broker to reach
    for i in range(20):
        assert publisher.publish("t/cam/caption", f'{{"frame_id": {i}}}', retain=True)
    publisher.publish("t/stats", "{}")
    mosquitto.start()
    watcher = collect(mosquitto.port, "t/#")  # listening before the publisher gets through
    publisher.start()
    assert publisher.wait_connected(5)
    watcher.wait_for("t/stats")
    time.sleep(0.3)
    assert [m.json()["frame_id"] for m in watcher.on("t/cam/caption")] == [19]


def test_the_outgoing_queue_is_bounded_and_counts_drops(publishers):
    publisher = publishers(free_port(), queue_size=3)  # nobody listens there
    results = [publisher.publish("t/stats", str(i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert publisher.status()["dropped"] == 2 and publisher.status()["queue_depth"] == 3


def test_a_topic_that_cannot_be_published_to_is_dropped_and_sending_goes_on(mosquitto, publishers, collect):
    publisher = publishers(mosquitto.port)
    assert publisher.wait_connected(5)
    watcher = collect(mosquitto.port, "t/after")
    for topic in ("t/#", "+", "", "t/\x00", "t/" + "x" * 70000):
        assert topic_problem(topic) is not None and publisher.publish(topic, b"x") is False
    assert topic_problem("t/after") is None and publisher.publish("t/after", b"still sending")
    assert watcher.wait_for("t/after").payload == b"still sending"
    assert publisher.status()["dropped"] == 5


def test_correlation_data_and_subscriptions_with_mqtt5_properties(mosquitto, publishers, collect):
    publisher = publishers(mosquitto.port)
    got = []
    received = threading.Event()
    publisher.subscribe("t/cam/explain/request", lambda payload, props: (got.append((payload, props)), received.set()))
    assert publisher.wait_connected(5)
    requester = collect(mosquitto.port, "t/cam/explain/reply")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "t/cam/explain/reply"
    props.CorrelationData = b"req-42"
    # Send until the subscription (made in on_connect) is in place at the broker.
    wait_until(lambda: requester.client.publish("t/cam/explain/request", b'{"id": "1"}', properties=props)
               and received.wait(0.2), 5, message="the request to reach the subscriber")
    payload, properties = got[0]
    assert payload == b'{"id": "1"}' and properties.ResponseTopic == "t/cam/explain/reply"
    publisher.publish(properties.ResponseTopic, b'{"id": "1", "status": "ok"}', correlation_data=properties.CorrelationData)
    reply = requester.wait_for("t/cam/explain/reply")
    assert reply.properties.CorrelationData == b"req-42"


def test_mqtt_311(mosquitto, publishers, collect):
    watcher = collect(mosquitto.port, "t/stats")
    publisher = publishers(mosquitto.port, protocol="3.1.1")
    got = []
    publisher.subscribe("t/in", lambda payload, props: got.append(props))
    assert publisher.wait_connected(5)
    publisher.publish("t/stats", "{}", correlation_data=b"ignored on 3.1.1")
    assert watcher.wait_for("t/stats").payload == b"{}"
    wait_until(lambda: watcher.client.publish("t/in", b"x") and got, 5, interval=0.2, message="a message on t/in")
    assert got[0] is None


def test_start_never_blocks_and_the_error_is_named(publishers):
    started = time.monotonic()
    publisher = publishers(free_port())
    assert time.monotonic() - started < 0.5
    wait_until(lambda: publisher.last_error, 5)
    assert "connection refused" in publisher.last_error and publisher.state == "disconnected"


def test_refused_credentials_are_named(tmp_path, publishers):
    broker = LocalBroker(free_port(), tmp_path / "auth", allow_anonymous=False)
    broker.start()
    try:
        publisher = publishers(broker.port)
        wait_until(lambda: publisher.last_error, 5)
        assert publisher.last_error == "broker refused the connection: Not authorized"
    finally:
        broker.stop()


def test_tls_against_a_plain_listener_says_tls_failed(mosquitto, publishers):
    publisher = publishers(mosquitto.port, tls={"enabled": True})
    wait_until(lambda: publisher.last_error, 5)
    assert publisher.last_error.startswith("TLS handshake failed")


def test_password_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "mqtt_password"
    secret.write_text("s3cret\n")
    assert read_password(MqttConfig(username="u", password_file=secret)) == "s3cret"
    monkeypatch.setenv("MQTT_PW", "from-env")
    assert read_password(MqttConfig(username="u", password_env="MQTT_PW")) == "from-env"
    with pytest.raises(MqttSetupError, match="not set"):
        read_password(MqttConfig(username="u", password_env="NOT_SET_ANYWHERE"))
    with pytest.raises(MqttSetupError, match="cannot read"):
        read_password(MqttConfig(username="u", password_file=tmp_path / "missing"))
    with pytest.raises(MqttSetupError, match="does not exist"):
        MqttPublisher(MqttConfig(tls={"ca_certs": tmp_path / "nope.pem"}), "x", AVAILABILITY)


@pytest.mark.parametrize("qos,properties", [(0, False), (1, False), (1, True)])
def test_the_largest_payload_that_fits_is_exactly_what_the_broker_takes(tmp_path, qos, properties):
    limit = 1024
    broker = LocalBroker(free_port(), tmp_path / "capped", extra_config=f"max_packet_size {limit}\n")
    broker.start()
    try:
        topic = "t/limit"
        extra = Properties(PacketTypes.PUBLISH)
        extra.CorrelationData = b"0123456789"
        packed = len(extra.pack()) if properties else 1
        room = payload_room(limit, len(topic), qos, packed)
        assert publish_packet_size(len(topic), room, qos, packed) == limit

        def survives(size: int) -> bool:
            """Whether the broker keeps a connection that sent ``size`` bytes: it takes packets in order,
            so a QoS 1 message after the large one is acknowledged only if the large one was taken."""
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{size}", protocol=paho.MQTTv5)
            connected, lost = threading.Event(), threading.Event()
            client.on_connect = lambda *a: connected.set()
            client.on_disconnect = lambda *a: lost.set()
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            try:
                assert connected.wait(10), "no CONNACK"
                client.publish(topic, b"x" * size, qos=qos, properties=extra if properties else None)
                after = client.publish(topic, b"after", qos=1)
                if after.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:  # the broker had closed the connection already
                    return False
                wait_until(lambda: after.is_published() or lost.is_set(), 10, message="a PUBACK or a disconnect")
                return after.is_published() and not lost.is_set()
            finally:
                client.disconnect()
                client.loop_stop()

        # MQTT 5 counts the whole packet; Mosquitto 2.0 checks only its Remaining Length, the fixed
        # header's 3 bytes less: the spec's room is always taken, and 4 bytes more never
        assert survives(room) and not survives(room + 4)
    finally:
        broker.stop()


def test_a_message_too_large_for_the_broker_is_made_smaller_or_dropped_once(tmp_path, publishers, collect, caplog):
    broker = LocalBroker(free_port(), tmp_path / "capped", extra_config="max_packet_size 2048\n")
    broker.start()
    try:
        publisher = publishers(broker.port)
        assert publisher.wait_connected(5)
        watcher = collect(broker.port, "t/#")
        with caplog.at_level("INFO", logger="daemon.mqtt"):
            for _ in range(3):
                publisher.publish("t/big", b"x" * 4000, qos=1)
                publisher.publish("t/fits", b"y" * 4000, qos=1, fit=lambda room: b"y" * room)
            publisher.publish("t/after", b"still connected", qos=1)
            watcher.wait_for("t/after", timeout=5)
        assert not watcher.on("t/big")
        # 2048 bytes less: fixed header 1 + Remaining Length 2, topic 2 + 6, packet id 2, properties 1
        assert [len(m.payload) for m in watcher.on("t/fits")] == [2048 - 14] * 3
        status = publisher.status()
        assert (status["too_large"], status["max_packet_size"], status["reconnects"]) == (3, 2048, 0)
        assert sum("t/big was not sent" in r.message for r in caplog.records) == 1
    finally:
        broker.stop()
