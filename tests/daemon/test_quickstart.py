"""The README's quick start, as written, in a fresh virtualenv: captions arrive over MQTT.

The command's apt-get part is the box's (python3-venv); the rest runs here exactly as the
README says, in a scratch folder: ``python3 -m venv .venv``, ``pip install -e`` of this
checkout (from the package index, as a user's would), and the demo, whose caption lines
are printed from MQTT. An explain request then gets the answer that says what to install.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess

from tests.conftest import REPO, wait_until
from tests.daemon.test_demo import caption_lines

INSTALL_TIMEOUT = 600


def quick_start_command() -> list[str]:
    """The parts (split at ``&&``) of the README's quick-start command line."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    (line,) = [ln.strip() for ln in section.splitlines() if ln.startswith("    ") and "run --demo" in ln]
    return [part.strip() for part in line.split("&&")]


def test_readme_quick_start_in_a_fresh_venv_prints_captions_from_mqtt(tmp_path):
    parts = quick_start_command()
    assert parts[0] == "sudo apt-get install -y python3-venv" and parts[1:3] == [
        "python3 -m venv .venv", ".venv/bin/pip install -e ."]
    demo = shlex.split(parts[3])
    assert demo == [".venv/bin/explaincam", "run", "--demo", "-c", "config.yaml"]
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    install = subprocess.run(f"python3 -m venv .venv && .venv/bin/pip install -e {shlex.quote(str(REPO))}",
                             shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=INSTALL_TIMEOUT)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(demo, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until(lambda: len(caption_lines(output.read_text())) >= 3, 90, interval=0.2,
                   message=f"three captions printed from MQTT:\n{output.read_text()}")
        asked = subprocess.run([".venv/bin/explaincam", "request", "--timeout", "60"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
        assert asked.returncode == 1, asked.stdout + asked.stderr
        assert re.search(r"explanations need TensorFlow.*pip install -e '\.\[explain\]'", asked.stderr), asked.stderr
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.read_text()
    assert "Traceback" not in text, text
    assert "exactly as the ground truth" in text
