"""The daemon under the unit's seccomp policy (tests/service/sandbox.py): W^X memory, the
address families and the system call allow-list of systemd/explaincam.service.

The sandbox is checked to bite first (each refused call would succeed outside it); then
the real daemon captions and answers an explanation request under it, against a real
Mosquitto, on each explainer backend: LiteRT (what ``auto`` picks for the shipped bundle)
and the TensorFlow fallback (JIT-compiling code is what ``MemoryDenyWriteExecute=`` can
break), each in the spawned explainer process, niced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import child_pids, daemon_config, loaded_tensorflow, wait_until
from tests.service.tls_broker import Subscriber

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "explaincam.service"
SANDBOX = [sys.executable, "-m", "tests.service.sandbox", str(UNIT), "--"]
START_TIMEOUT_S = 120
EXPLAIN_TIMEOUT_S = 240  # the explainer process imports TensorFlow first (its backend)

PROBE = r"""
import errno, json, mmap, os, socket
def attempt(call):
    try:
        call()
        return "allowed"
    except OSError as exc:
        return errno.errorcode[exc.errno]
print(json.dumps({
    "write+exec memory": attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
    "netlink socket": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
    "setuid": attempt(lambda: os.setuid(os.getuid())),
    "sched_setaffinity": attempt(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
    "lower own priority": attempt(lambda: os.nice(1)),
    "ipv6 socket": attempt(lambda: socket.socket(socket.AF_INET6).close()),
    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
}))
"""


def probe(*sandbox: str) -> dict:
    result = subprocess.run([*sandbox, sys.executable, "-c", PROBE], cwd=REPO, check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def test_the_sandbox_refuses_what_the_unit_refuses():
    outside, inside = probe(), probe(*SANDBOX)
    assert set(outside.values()) <= {"allowed", None}
    assert inside == {"write+exec memory": "EPERM", "netlink socket": "EAFNOSUPPORT", "setuid": "EPERM",
                      "sched_setaffinity": "EPERM", "lower own priority": "allowed", "ipv6 socket": "allowed",
                      "TF_ENABLE_ONEDNN_OPTS": "0"}


@pytest.mark.parametrize("backend", ["litert", "tensorflow"])
def test_daemon_captions_and_explains_inside_the_sandbox(tmp_path, plain_broker, backend):
    config = daemon_config(tmp_path, plain_broker.port, mqtt={"topic_prefix": f"sandboxed-{backend}"},
                           explain={"backend": backend, "idle_exit_s": 120})
    config_file, log_file = tmp_path / "config.yaml", tmp_path / "daemon.log"
    config_file.write_text(yaml.safe_dump(config))
    base = f"sandboxed-{backend}/{config['camera']['name']}"
    subscriber = Subscriber(plain_broker.port, f"{base}/caption", f"{base}/explain/response")
    with open(log_file, "wb") as log:
        daemon = subprocess.Popen([*SANDBOX, sys.executable, "-m", "daemon.cli", "run", "-c", str(config_file)],
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: subscriber.on(f"{base}/caption") or daemon.poll() is not None, START_TIMEOUT_S,
                   message="a caption")
        assert daemon.poll() is None, log_file.read_text()

        request = {"id": "sandbox", "frame": "latest", "methods": ["gradcam", "saliency"], "words": "all"}
        subscriber.client.publish(f"{base}/explain/request", json.dumps(request), qos=1).wait_for_publish(5)
        wait_until(lambda: subscriber.on(f"{base}/explain/response") or daemon.poll() is not None,
                   EXPLAIN_TIMEOUT_S, message="the explanation")
        assert daemon.poll() is None, log_file.read_text()
        answer = json.loads(subscriber.on(f"{base}/explain/response")[-1].payload)
        assert (answer["id"], answer["status"]) == ("sandbox", "ok"), answer
        # the answer came from the configured backend, in the explainer process under the same filters
        explainers = child_pids(daemon.pid)
        assert any(loaded_tensorflow(pid) for pid in explainers) == (backend == "tensorflow"), explainers
        daemon.terminate()
        assert daemon.wait(20) == 0, log_file.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subscriber.close()
