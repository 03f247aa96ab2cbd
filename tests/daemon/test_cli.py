"""Small things of the command line: --version, and `explaincam request`'s defaults."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from daemon.explain import client
from daemon.config_file import ConfigError
from tests.conftest import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})  # help lines unwrapped


def test_version_is_the_packages():
    from importlib.metadata import version

    run = run_cli("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"explaincam {version('explaincam')}"


def request_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    client.configure(parser)
    return parser.parse_args(argv)


def test_request_takes_broker_camera_and_prefix_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = request_args()
    client.apply_config_defaults(args)  # no config.yaml here: the daemon's own defaults
    assert (args.host, args.port, args.camera, args.prefix) == ("localhost", None, "cam", "explaincam")
    (tmp_path / "config.yaml").write_text("camera:\n  name: porch\nmqtt:\n  host: broker.lan\n  port: 1884\n"
                                          "  topic_prefix: house\n")
    args = request_args()
    client.apply_config_defaults(args)
    assert (args.host, args.port, args.camera, args.prefix) == ("broker.lan", 1884, "porch", "house")
    args = request_args("--host", "other", "--camera", "gate")  # the command line wins
    client.apply_config_defaults(args)
    assert (args.host, args.port, args.camera) == ("other", 1884, "gate")
    with pytest.raises(ConfigError):
        client.apply_config_defaults(request_args("-c", str(tmp_path / "missing.yaml")))


def test_request_help_shows_its_defaults():
    text = run_cli("request", "--help").stdout
    assert "default 120" in text and "else localhost" in text and "else cam" in text


def test_help_lists_the_device_commands_and_the_offline_tools_the_convert_package_registers():
    run = run_cli("--help")
    assert run.returncode == 0
    listed = {line.split()[0] for line in run.stdout.split("commands:\n", 1)[1].splitlines() if line.strip()}
    assert {"run", "request", "worker", "install-service"} <= listed  # daemon/cli.py's own
    assert {"scenes", "train", "convert", "bench", "fleet-bench"} <= listed  # convert/commands.py, by entry point


def test_an_offline_tool_without_tensorflow_installed_says_what_to_install():
    blocked = ("import sys; sys.modules.update(tensorflow=None, keras=None); "  # as on a box without the extra
               "from daemon.cli import main; sys.exit(main(['train', '--help']))")
    run = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "explaincam train needs the Python package" in run.stderr and "explaincam[convert]" in run.stderr
    assert "Traceback" not in run.stderr
