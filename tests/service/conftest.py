"""Fixtures of the service tests: real Mosquitto brokers on loopback, started per module.

``plain_broker``: anonymous, no TLS. ``tls_broker``: TLS with a test CA and a password
file (``USER``/``PASSWORD``). ``mtls_broker``: the same, and a client certificate is required.
"""

from __future__ import annotations

import pytest

from tests.service.tls_broker import MosquittoBroker, make_pki

USER, PASSWORD = "explaincam", "correct horse battery"


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory):
    """A test CA with server (127.0.0.1, localhost) and client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def plain_broker(tmp_path_factory):
    """Mosquitto without TLS or passwords."""
    with MosquittoBroker(tmp_path_factory.mktemp("plain-broker")) as broker:
        yield broker


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory, tls_pki):
    """Mosquitto with a TLS listener and a password file; anonymous clients are refused."""
    with MosquittoBroker(tmp_path_factory.mktemp("tls-broker"), pki=tls_pki, users={USER: PASSWORD}) as broker:
        yield broker


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory, tls_pki):
    """Like ``tls_broker``, and clients must show a certificate signed by the test CA."""
    with MosquittoBroker(tmp_path_factory.mktemp("mtls-broker"), pki=tls_pki, users={USER: PASSWORD},
                         require_certificate=True) as broker:
        yield broker
