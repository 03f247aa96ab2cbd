"""The daemon's MQTT connection (``daemon.mqtt.MqttPublisher``, built from an ``mqtt:`` config
section) against a real Mosquitto with TLS and passwords.

What a user configures and expects: with the CA and the right password (file or
environment variable) it connects, over MQTT 5 and 3.1.1; with a wrong or no password, or
without the CA, it stays disconnected and ``status()["last_error"]`` (what the stats
message and the log show) says why; a broker that requires client certificates takes the
configured ``certfile``/``keyfile`` and refuses a client without them.
"""

from __future__ import annotations

import pytest

from daemon.config import MqttConnectionConfig
from daemon.mqtt import MqttPublisher
from tests.conftest import wait_until
from tests.service.conftest import PASSWORD, USER

CONNECT_TIMEOUT_S = 15


def publisher(broker, tmp_path, password: str | None = None, **settings) -> MqttPublisher:
    """A started publisher for ``broker`` configured like the daemon's ``mqtt:`` section."""
    config = {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 1, "reconnect_max_s": 1, **settings}
    if password is not None:
        (tmp_path / "mqtt-password").write_text(password + "\n")
        config.update(username=USER, password_file=str(tmp_path / "mqtt-password"))
    client = MqttPublisher(MqttConnectionConfig.model_validate(config), f"tls-test-{tmp_path.name}",
                           f"tls-test/{tmp_path.name}/availability")
    client.start()
    return client


def last_error_after_failing(client: MqttPublisher) -> str:
    """The reason the publisher gives once a connection attempt has failed."""
    wait_until(lambda: client.status()["last_error"], CONNECT_TIMEOUT_S, message="a failed connection attempt")
    assert client.status()["state"] != "connected"
    return client.status()["last_error"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_connects_with_the_ca_and_the_password_file(tls_broker, tls_pki, tmp_path, protocol):
    client = publisher(tls_broker, tmp_path, PASSWORD, protocol=protocol, tls={"ca_certs": str(tls_pki.ca_cert)})
    try:
        assert client.wait_connected(CONNECT_TIMEOUT_S), client.status()
        assert client.status()["last_error"] is None
    finally:
        client.stop()


def test_connects_with_the_password_from_an_environment_variable(tls_broker, tls_pki, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLAINCAM_TEST_MQTT_PASSWORD", PASSWORD)
    client = publisher(tls_broker, tmp_path, username=USER, password_env="EXPLAINCAM_TEST_MQTT_PASSWORD",
                       tls={"ca_certs": str(tls_pki.ca_cert)})
    try:
        assert client.wait_connected(CONNECT_TIMEOUT_S), client.status()
    finally:
        client.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_wrong_password_is_refused_and_said(tls_broker, tls_pki, tmp_path, protocol):
    client = publisher(tls_broker, tmp_path, "wrong", protocol=protocol, tls={"ca_certs": str(tls_pki.ca_cert)})
    try:
        reason = last_error_after_failing(client).lower()
        assert "broker refused the connection" in reason and "not authori" in reason, reason
    finally:
        client.stop()


def test_an_anonymous_client_is_refused(tls_broker, tls_pki, tmp_path):
    client = publisher(tls_broker, tmp_path, tls={"ca_certs": str(tls_pki.ca_cert)})
    try:
        assert "not authori" in last_error_after_failing(client).lower()
    finally:
        client.stop()


def test_without_the_ca_the_certificate_check_fails_and_says_so(tls_broker, tmp_path):
    client = publisher(tls_broker, tmp_path, PASSWORD, tls={"enabled": True})  # the system's CAs only
    try:
        reason = last_error_after_failing(client)
        assert reason.startswith("TLS certificate verification failed") and "certificate" in reason, reason
    finally:
        client.stop()


def test_the_configured_client_certificate_is_shown_when_the_broker_requires_one(mtls_broker, tls_pki, tmp_path):
    client = publisher(mtls_broker, tmp_path, PASSWORD, tls={"ca_certs": str(tls_pki.ca_cert),
                                                             "certfile": str(tls_pki.client_cert),
                                                             "keyfile": str(tls_pki.client_key)})
    try:
        assert client.wait_connected(CONNECT_TIMEOUT_S), client.status()
    finally:
        client.stop()


def test_without_a_client_certificate_a_broker_that_requires_one_keeps_it_out_and_says_why(mtls_broker, tls_pki,
                                                                                          tmp_path):
    client = publisher(mtls_broker, tmp_path, PASSWORD, tls={"ca_certs": str(tls_pki.ca_cert)})
    try:
        # TLS 1.3 checks the client certificate after the client's handshake is done, so the
        # refusal comes as a TLS alert on the first read, before any CONNACK
        reason = last_error_after_failing(client)
        assert "mqtt.tls.certfile" in reason and "certificate required" in reason, reason
        assert "3.1.1" not in reason, reason  # not blamed on the protocol version
        wait_until(lambda: "peer did not return a certificate" in mtls_broker.log(), CONNECT_TIMEOUT_S,
                   message="the broker's refusal in its log")
    finally:
        client.stop()
