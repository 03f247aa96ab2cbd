"""``explaincam run --demo``: private broker when none answers, scenes, captions printed from MQTT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import yaml

from daemon.broker import LocalBroker, broker_answers, free_port, mosquitto_install_command
from daemon.demo import CAPTION_HEADER
from tests.conftest import REPO, wait_until

CAPTION_LINE = re.compile(r"^ +\d+ +\d+\.\d +\S.*$", re.M)  # frame id, total ms, caption


def caption_lines(text: str) -> list[str]:
    """The caption lines the demo printed, under its header."""
    return CAPTION_LINE.findall(text)


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
        wait_until(lambda: len(caption_lines(output.read_text())) >= 3, 60, interval=0.2,
                   message="three printed captions")
        assert broker_answers("127.0.0.1", port)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(5) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    text = output.read_text()
    assert f"started a private Mosquitto on 127.0.0.1:{port}" in text
    assert CAPTION_HEADER in text and text.index(CAPTION_HEADER) < text.index(caption_lines(text)[0])
    assert "total ms: from grabbing the frame to publishing its caption" in text
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


def test_mosquitto_is_installed_with_apt_as_root_or_through_sudo():
    apt = "/usr/bin/apt-get"
    assert mosquitto_install_command(True, None, apt) == [apt, "install", "-y", "-q", "mosquitto"]
    assert mosquitto_install_command(False, "/usr/bin/sudo", apt) == ["/usr/bin/sudo", apt, "install", "-y", "-q",
                                                                      "mosquitto"]
    assert mosquitto_install_command(False, None, apt) is None  # neither root nor sudo: the demo says so
    assert mosquitto_install_command(True, None, None) is None  # no apt-get (not Debian)


def test_ctrl_c_after_an_explanation_leaves_a_quiet_terminal(tmp_path):
    """Ctrl-C reaches the whole foreground process group, the explainer too: no traceback, and no
    TensorFlow notices in the terminal either. The request finds broker and camera in the config."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1", "port": free_port()},
                                      "model": {"threads": 1}, "caption": {"rate": 2},
                                      "explain": {"threads": 1, "idle_exit_s": 120}}))
    output = tmp_path / "demo.out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with open(output, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--demo", "-c", str(config)],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group, as in a terminal
    try:
        wait_until(lambda: caption_lines(output.read_text()), 60, interval=0.2, message="a printed caption")
        asked = subprocess.run([sys.executable, "-m", "daemon.cli", "request", "-c", str(config), "--methods",
                                "gradcam", "--out", str(tmp_path / "explanation"), "--timeout", "180"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
        assert asked.returncode == 0, asked.stderr + asked.stdout
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(20) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    text = output.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert not re.search(r"cudart|cuda drivers|cuInit|oneDNN|absl::InitializeLog|cpu_feature_guard", text), text
