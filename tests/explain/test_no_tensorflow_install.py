"""``pip install -e .`` without extras explains every method over MQTT, with no TensorFlow anywhere.

A fresh venv (``python -m venv``; wheels from the package index or pip's cache) gets the
project alone; ``explaincam run`` from it with the shipped bundle answers gradcam, saliency
and ace requests on a real Mosquitto through the LiteRT backend. Needs the shipped bundle's
explainer graph (explainer_float.tflite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import CAPTION, REPO, START_TIMEOUT, child_pids, daemon_config
from tests.explain.test_mqtt_explain import EXPLAIN_TIMEOUT, FAST, Requester, loaded_tensorflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """A venv with ``pip install -e REPO`` and nothing else; its python."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "-e", str(REPO)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return python


def test_the_base_install_has_no_tensorflow(bare_venv):
    probe = subprocess.run([str(bare_venv), "-c", "import tensorflow"], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr


def test_the_base_install_explains_gradcam_saliency_and_ace_over_mqtt(bare_venv, mosquitto, collect, tmp_path):
    config = daemon_config(tmp_path, mosquitto.port, explain=FAST)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp_path / "daemon.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv has
    daemon = subprocess.Popen([str(bare_venv), "-m", "daemon.cli", "run", "-c", str(config_file)], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        watcher = collect(mosquitto.port, CAPTION)
        watcher.wait_for(CAPTION, timeout=START_TIMEOUT)
        requester = Requester(mosquitto.port, "test/replies/bare")
        try:
            requester.send({"id": "bare-1", "frame": "latest", "methods": ["gradcam", "saliency", "ace"]}, b"b1")
            answer = json.loads(requester.reply_for(b"b1", EXPLAIN_TIMEOUT).payload)
        finally:
            requester.close()
        assert answer["status"] == "ok", (answer.get("error"), (tmp_path / "daemon.log").read_text()[-2000:])
        words = answer["caption"].split()
        assert [w["index"] for w in answer["words"]] == list(range(len(words)))
        assert all({"gradcam", "saliency"} <= set(w) for w in answer["words"])
        assert [w["index"] for w in answer["ace"]["words"]] == list(range(len(words)))
        for pid in [daemon.pid, *child_pids(daemon.pid)]:  # capture process and explainer
            assert not loaded_tensorflow(pid)
        assert daemon.poll() is None
    finally:
        daemon.kill()
        daemon.wait()
        log.close()
