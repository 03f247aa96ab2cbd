"""``explaincam run --demo``: private broker when none answers, scenes, captions printed from MQTT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import yaml

from daemon.demo import LocalBroker, broker_answers, free_port
from tests.conftest import REPO, wait_until


def test_demo_starts_a_broker_and_prints_captions(tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1", "port": port}, "model": {"threads": 1}}))
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--demo", "-c", str(config)],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: output.read_text().count("frame ") >= 3, 60, interval=0.2, message="three printed captions")
        assert broker_answers("127.0.0.1", port)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(5) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    text = output.read_text()
    assert f"started a private Mosquitto on 127.0.0.1:{port}" in text
    assert "✓" in text and "exactly as the ground truth" in text
    assert (tmp_path / "build" / "snapshot" / "latest.jpg").is_file()
    assert not broker_answers("127.0.0.1", port)  # the private broker went with it


def test_local_broker_restarts_on_the_same_port(tmp_path):
    broker = LocalBroker(free_port(), tmp_path)
    broker.start()
    try:
        assert broker.running and broker_answers("127.0.0.1", broker.port)
        broker.restart()
        assert broker.running and broker_answers("127.0.0.1", broker.port)
    finally:
        broker.stop()
    assert not broker.running and not broker_answers("127.0.0.1", broker.port)
