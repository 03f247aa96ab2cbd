"""TLS and authentication against a real Mosquitto, with a plain paho-mqtt 2 client.

What the daemon relies on: with the CA and the right password the broker lets it in;
with a wrong or no password it says "not authorized"; without the CA the TLS handshake
fails; a broker that requires client certificates takes the client's.
"""

from __future__ import annotations

import ssl
import subprocess
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.service.conftest import PASSWORD, USER

REFUSED = {"Not authorized", "Bad user name or password"}


def connect(port: int, *, ca=None, user=None, password=None, cert=None, key=None,
            protocol=paho.MQTTv5, timeout: float = 10.0) -> str | None:
    """Connect once over TLS; the CONNACK reason as text, or None if the broker never answered.

    TLS handshake errors that the client sees at once are raised (ssl.SSLError).
    """
    answered = threading.Event()
    reason = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)

    def on_connect(client, userdata, flags, reason_code, properties):
        reason["text"] = str(reason_code)
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: answered.set()
    if user is not None:
        client.username_pw_set(user, password)
    if ca is None:
        client.tls_set()  # the system's CA store, which does not know the test CA
    else:
        client.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key))
    client.connect("127.0.0.1", port, keepalive=10)
    try:
        client.loop_start()
        answered.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return reason.get("text")


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311], ids=["mqtt5", "mqtt3.1.1"])
def test_connects_with_the_ca_and_the_password(tls_broker, tls_pki, protocol):
    assert connect(tls_broker.port, ca=tls_pki.ca_cert, user=USER, password=PASSWORD, protocol=protocol) == "Success"


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311], ids=["mqtt5", "mqtt3.1.1"])
def test_wrong_password_is_refused(tls_broker, tls_pki, protocol):
    assert connect(tls_broker.port, ca=tls_pki.ca_cert, user=USER, password="wrong", protocol=protocol) in REFUSED
    assert "not authorised" in tls_broker.log()


def test_anonymous_client_is_refused(tls_broker, tls_pki):
    assert connect(tls_broker.port, ca=tls_pki.ca_cert) in REFUSED


def test_tls_handshake_fails_without_the_ca(tls_broker):
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        connect(tls_broker.port, user=USER, password=PASSWORD)


def test_server_certificate_names_the_loopback_address(tls_pki):
    # What the client checks the broker against when it connects to 127.0.0.1.
    san = subprocess.run(["openssl", "x509", "-in", str(tls_pki.server_cert), "-noout", "-ext", "subjectAltName"],
                         check=True, capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in san


def test_client_certificate_is_accepted_when_required(mtls_broker, tls_pki):
    assert connect(mtls_broker.port, ca=tls_pki.ca_cert, user=USER, password=PASSWORD,
                   cert=tls_pki.client_cert, key=tls_pki.client_key) == "Success"


def test_missing_client_certificate_is_refused_when_required(mtls_broker, tls_pki):
    # TLS 1.3 checks the client certificate after the client's handshake is done, so the
    # refusal shows as a connection closed before any CONNACK.
    try:
        outcome = connect(mtls_broker.port, ca=tls_pki.ca_cert, user=USER, password=PASSWORD, timeout=5)
    except ssl.SSLError:
        outcome = None
    assert outcome is None
    assert "peer did not return a certificate" in mtls_broker.log()
