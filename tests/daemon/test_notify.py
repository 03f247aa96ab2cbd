"""sd_notify on a real AF_UNIX datagram socket (path and abstract namespace), no-op without one."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from daemon.notify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_on_a_socket_path(notify_socket):
    path, sock = notify_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("model loaded")
    assert sock.recv(1024) == b"READY=1\nSTATUS=model loaded"
    notifier.status("captioning")
    assert sock.recv(1024) == b"STATUS=captioning"
    notifier.stopping()
    assert sock.recv(1024) == b"STOPPING=1"


def test_abstract_namespace_address():
    name = f"explaincam-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(1024) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_period(notify_socket):
    path, sock = notify_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert notifier.watchdog_interval_s == 2.0
    assert notifier.watchdog() and not notifier.watchdog()  # the second comes too soon
    assert sock.recv(1024) == b"WATCHDOG=1"


def test_watchdog_for_another_pid_is_ignored():
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval_s == 10.0


def test_no_socket_means_no_op():
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()


def test_a_vanished_socket_is_not_an_error(tmp_path):
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False
