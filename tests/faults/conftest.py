"""Fixtures of the fault suite: ``broker``, each MQTT fault test once per broker implementation."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest

from daemon.broker import LocalBroker, free_port
from tests.faults.brokers import AmqttBroker


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request, tmp_path):
    """A running broker on a free loopback port: Mosquitto (the daemon speaks MQTT 5 to it) or amqtt
    (MQTT 3.1.1 only); ``.protocol`` is the daemon's ``mqtt.protocol`` for it, ``.paho_protocol`` a
    test client's."""
    if request.param == "mosquitto":
        made = LocalBroker(free_port(), tmp_path / "mosquitto")
        made.protocol, made.paho_protocol = "5", paho.MQTTv5
    else:
        made = AmqttBroker(free_port(), tmp_path / "amqtt")
        made.paho_protocol = paho.MQTTv311
    made.start()
    yield made
    made.stop()
