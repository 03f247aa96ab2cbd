"""The config schema, the shipped config.yaml, ${ENV} substitution and check-config's errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import typing

import pytest
from pydantic import BaseModel

from daemon.config import AppConfig, ModelConfig, OpenCVSourceConfig
from daemon.config_file import ConfigError, load_config, parse_config
from tests.conftest import REPO


def all_models(model: type[BaseModel], seen=None) -> set[type[BaseModel]]:
    """Every config model reachable from ``model`` (through unions and lists too)."""
    seen = set() if seen is None else seen
    seen.add(model)
    def walk(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
            all_models(annotation, seen)
        for arg in typing.get_args(annotation):
            walk(arg)
    for info in model.model_fields.values():
        walk(info.annotation)
    return seen


def problems_of(text: str, environ=None) -> list:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "test.yaml", environ or {})
    return caught.value.problems


def test_shipped_config_is_valid_and_shows_the_true_defaults():
    assert load_config(REPO / "config.yaml") == AppConfig()


def test_every_key_is_documented_in_config_yaml_and_described_in_the_schema():
    text = (REPO / "config.yaml").read_text()
    models = all_models(AppConfig)
    assert OpenCVSourceConfig in models
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert re.search(rf"^\s*(#\s*)?{name}:", text, re.M), f"config.yaml does not document {name}"


def test_contract_keys_of_design_md_exist():
    cfg = AppConfig()
    assert (cfg.model.bundle.name, cfg.model.threads, cfg.camera.name, cfg.camera.source.type) == ("scenes-mnv3s", 2, "cam", "scenes")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.mqtt.username, cfg.mqtt.password_file) == ("localhost", 1883, "explaincam", None, None)
    assert (cfg.mqtt.tls.ca_certs, cfg.mqtt.tls.certfile, cfg.mqtt.tls.keyfile) == (None, None, None)
    assert str(cfg.snapshot.dir) == "/var/lib/explaincam"
    assert (cfg.explain.idle_exit_s, cfg.explain.queue_size, cfg.explain.nice, cfg.explain.max_request_bytes,
            cfg.explain.default_methods) == (300, 4, 10, 16384, ["gradcam", "saliency"])


def test_empty_file_gives_the_defaults():
    assert parse_config("", "empty.yaml", {}) == AppConfig()


def test_env_substitution_with_and_without_default():
    cfg = parse_config(textwrap.dedent("""
        mqtt:
          host: ${BROKER}
          port: ${BROKER_PORT:-1884}
          password_file: ${CREDENTIALS_DIRECTORY}/mqtt-password
    """), "t.yaml", {"BROKER": "hub.local", "CREDENTIALS_DIRECTORY": "/run/credentials/explaincam.service"})
    assert cfg.mqtt.host == "hub.local" and cfg.mqtt.port == 1884
    assert str(cfg.mqtt.password_file) == "/run/credentials/explaincam.service/mqtt-password"


def test_unset_env_variable_is_reported_with_key_and_line():
    (problem,) = problems_of("""
        mqtt:
          host: localhost
          password_file: ${MQTT_SECRET_FILE}
    """)
    assert (problem.path, problem.line) == ("mqtt.password_file", 4)
    assert "MQTT_SECRET_FILE is not set" in problem.message


def test_errors_name_dotted_path_and_line():
    problems = problems_of("""
        model:
          threads: 0
        camera:
          source:
            type: scenes
            fps: -1
            colour: red
        mqtt:
          port: 70000
          tls:
            ca_cert: /etc/ssl/ca.pem
        bogus: 1
    """)
    found = {(p.path, p.line) for p in problems}
    assert found == {("model.threads", 3), ("camera.source.fps", 7), ("camera.source.colour", 8),
                     ("mqtt.port", 10), ("mqtt.tls.ca_cert", 12), ("bogus", 13)}
    by_path = {p.path: p.message for p in problems}
    assert "unknown key" in by_path["bogus"] and "70000" in by_path["mqtt.port"]


def test_source_kind_errors():
    (unknown,) = problems_of("camera:\n  source:\n    type: webcam\n")
    assert (unknown.path, unknown.line) == ("camera.source.type", 3) and "webcam" in unknown.message
    (untyped,) = problems_of("camera:\n  source:\n    fps: 3\n")
    assert untyped.path == "camera.source" and "type" in untyped.message
    (two_targets,) = problems_of("camera:\n  source:\n    type: opencv\n    device: 0\n    url: rtsp://x\n")
    assert two_targets.path == "camera.source" and "exactly one of device, url or path" in two_targets.message
    (missing,) = problems_of("camera:\n  source:\n    type: images\n")
    assert (missing.path, missing.message) == ("camera.source.path", "required key is missing")


def test_mqtt_protocol_and_password_rules():
    assert parse_config("mqtt:\n  protocol: 5\n", "t", {}).mqtt.protocol == "5"
    assert parse_config("mqtt:\n  protocol: 3.1.1\n", "t", {}).mqtt.protocol == "3.1.1"
    (bad,) = problems_of("mqtt:\n  protocol: 4\n")
    assert bad.path == "mqtt.protocol"
    (both,) = problems_of("mqtt:\n  password_file: /p\n  password_env: P\n")
    assert both.path == "mqtt" and "not both" in both.message
    (topic,) = problems_of("camera:\n  name: front/door\n")
    assert topic.path == "camera.name"


def test_yaml_syntax_error_has_a_line():
    (problem,) = problems_of("mqtt:\n  host: [broken\n  port: 1\n")
    assert problem.line >= 2 and "not valid YAML" in problem.message


def test_check_config_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera:\n  name: cam\nmqtt:\n  port: 0\n")
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config", "-c", str(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"{bad}:4: mqtt.port: Input should be greater than or equal to 1" in run.stderr
    good = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config", "-c", str(REPO / "config.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and "OK" in good.stdout


def test_bundle_path_is_looked_up_in_the_current_directory_then_the_install_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ModelConfig(bundle="convert")  # a folder that exists in the install folder (the repository)
    assert model.bundle_path() == REPO / "convert"
    (tmp_path / "convert").mkdir()
    assert model.bundle_path() == model.bundle


def test_problems_come_in_line_order():
    problems = problems_of("""
        mqtt:
          port: 70000
        model:
          threads: 0
        bogus: 1
        camera:
          source:
            type: scenes
            fps: -1
    """)
    assert [p.line for p in problems] == sorted(p.line for p in problems) == [3, 5, 6, 10]


def test_check_config_refuses_a_missing_or_damaged_bundle_naming_the_file(tmp_path):
    def check(bundle) -> subprocess.CompletedProcess:
        config = tmp_path / "config.yaml"
        config.write_text(f"camera:\n  name: cam\nmodel:\n  bundle: {bundle}\n")
        return subprocess.run([sys.executable, "-m", "daemon.cli", "check-config", "-c", str(config)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    missing = check("models/nope")
    assert missing.returncode == 1 and "OK" not in missing.stdout
    assert missing.stderr.strip().splitlines() == [
        f"{tmp_path / 'config.yaml'}:4: model.bundle: model bundle models/nope does not exist or is not a folder"]
    damaged = tmp_path / "damaged"
    shutil.copytree(REPO / "models" / "scenes-mnv3s", damaged)
    with open(damaged / "decoder.npz", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    run = check(damaged)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
    assert "decoder.npz does not match its sha256" in run.stderr and ":4: model.bundle:" in run.stderr
