"""Small things of the command line: --version, and `explaincam request`'s defaults."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from daemon import request
from daemon.config import ConfigError
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
    request.configure(parser)
    return parser.parse_args(argv)


def test_request_takes_broker_camera_and_prefix_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = request_args()
    request.apply_config_defaults(args)  # no config.yaml here: the daemon's own defaults
    assert (args.host, args.port, args.camera, args.prefix) == ("localhost", None, "cam", "explaincam")
    (tmp_path / "config.yaml").write_text("camera:\n  name: porch\nmqtt:\n  host: broker.lan\n  port: 1884\n"
                                          "  topic_prefix: house\n")
    args = request_args()
    request.apply_config_defaults(args)
    assert (args.host, args.port, args.camera, args.prefix) == ("broker.lan", 1884, "porch", "house")
    args = request_args("--host", "other", "--camera", "gate")  # the command line wins
    request.apply_config_defaults(args)
    assert (args.host, args.port, args.camera) == ("other", 1884, "gate")
    with pytest.raises(ConfigError):
        request.apply_config_defaults(request_args("-c", str(tmp_path / "missing.yaml")))


def test_request_help_shows_its_defaults():
    text = run_cli("request", "--help").stdout
    assert "default 120" in text and "else localhost" in text and "else cam" in text
