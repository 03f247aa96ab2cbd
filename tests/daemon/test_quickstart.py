"""The README's quick start, as written, in a fresh virtualenv: captions arrive over MQTT,
and explanations come from the LiteRT backend with no TensorFlow anywhere.

The command's apt-get part is the box's (python3-venv); the rest runs here exactly as the
README says, in a scratch folder: ``python3 -m venv .venv``, ``pip install -e`` of this
checkout (no extras; from the package index, as a user's would), and the demo, whose caption
lines are printed from MQTT. ``explaincam request`` then gets an explanation. The same venv
(built once for this module) runs the daemon on a test broker and answers a request for every
method (the map methods and ace), with neither the capture process nor the explainer loading
TensorFlow.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess

import pytest

from daemon.explain_settings import MAP_METHODS
from tests.conftest import CAPTION, REPO, START_TIMEOUT, child_pids, daemon_config, wait_until
from tests.daemon.test_demo import caption_lines
from tests.explain.test_mqtt_explain import EXPLAIN_TIMEOUT, FAST, Requester, loaded_tensorflow

INSTALL_TIMEOUT = 600


def quick_start_command() -> list[str]:
    """The parts (split at ``&&``) of the README's quick-start command line."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    (line,) = [ln.strip() for ln in section.splitlines() if ln.startswith("    ") and "run --demo" in ln]
    return [part.strip() for part in line.split("&&")]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """A scratch folder where the README's venv and install commands ran: ``.venv`` and ``config.yaml``."""
    parts = quick_start_command()
    assert parts[0] == "sudo apt-get install -y python3-venv" and parts[1:3] == [
        "python3 -m venv .venv", ".venv/bin/pip install -e ."]
    folder = tmp_path_factory.mktemp("quickstart")
    shutil.copy(REPO / "config.yaml", folder / "config.yaml")
    install = subprocess.run(f"python3 -m venv .venv && .venv/bin/pip install -e {shlex.quote(str(REPO))}",
                             shell=True, cwd=folder, env=bare_env(), capture_output=True, text=True,
                             timeout=INSTALL_TIMEOUT)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return folder


def bare_env() -> dict:
    """The environment without this checkout's venv on the path: only what the fresh venv has."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_readme_quick_start_in_a_fresh_venv_prints_captions_from_mqtt(quick_start):
    demo = shlex.split(quick_start_command()[3])
    assert demo == [".venv/bin/explaincam", "run", "--demo", "-c", "config.yaml"]
    tmp_path, env = quick_start, bare_env()
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(demo, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until(lambda: len(caption_lines(output.read_text())) >= 3, 90, interval=0.2,
                   message=f"three captions printed from MQTT:\n{output.read_text()}")
        asked = subprocess.run([".venv/bin/explaincam", "request", "--timeout", "60"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
        assert asked.returncode == 0, asked.stdout + asked.stderr  # explained on LiteRT, no TensorFlow installed
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.read_text()
    assert "Traceback" not in text, text
    assert "exactly as the ground truth" in text


def test_the_base_install_has_no_tensorflow(quick_start):
    probe = subprocess.run([str(quick_start / ".venv/bin/python"), "-c", "import tensorflow"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr


def test_the_base_install_explains_every_method_and_ace_over_mqtt(quick_start, mosquitto, collect, tmp_path):
    config = daemon_config(tmp_path, mosquitto.port, explain=FAST)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen([str(quick_start / ".venv/bin/python"), "-m", "daemon.cli", "run", "-c", str(config_file)],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=bare_env())
    try:
        watcher = collect(mosquitto.port, CAPTION)
        watcher.wait_for(CAPTION, timeout=START_TIMEOUT)
        requester = Requester(mosquitto.port, "test/replies/bare")
        try:
            requester.send({"id": "bare-1", "frame": "latest", "methods": [*MAP_METHODS, "ace"]}, b"b1")
            answer = json.loads(requester.reply_for(b"b1", EXPLAIN_TIMEOUT).payload)
        finally:
            requester.close()
        assert answer["status"] == "ok", (answer.get("error"), (tmp_path / "daemon.log").read_text()[-2000:])
        words = answer["caption"].split()
        assert [w["index"] for w in answer["words"]] == list(range(len(words)))
        assert all(set(MAP_METHODS) <= set(w) for w in answer["words"])
        assert [w["index"] for w in answer["ace"]["words"]] == list(range(len(words)))
        for pid in [daemon.pid, *child_pids(daemon.pid)]:  # capture process and explainer
            assert not loaded_tensorflow(pid)
        assert daemon.poll() is None
    finally:
        daemon.kill()
        daemon.wait()
        log.close()
