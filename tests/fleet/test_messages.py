"""Fleet payloads, the worker's config and the shared-subscription topic filter (no broker, no TensorFlow)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from daemon.bundle import write_manifest
from daemon.config import WorkerConfig
from daemon.config_file import ConfigError, parse_config
from daemon.contract import JobMessage, MessageError, ResultMessage, encode_result, job_id_of
from daemon.mqtt import topic_filter
from tests.conftest import REPO, SHIPPED_BUNDLE


def a_job(**changes) -> JobMessage:
    """A job with a random frame."""
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    fields = dict(job_id="j1", camera="cam", request_id="r1", frame_id=7, caption="a red circle", tokens=[3, 9, 4],
                  indices=[0, 2], methods=["gradcam"], bundle_name="m", bundle_sha256="f" * 64, image=image,
                  options={"smoothgrad_samples": 16, "ig_steps": 32, "gradcam_layer": None})
    fields.update(changes)
    return JobMessage(**fields)


def test_a_job_round_trips_with_the_frame_bit_exact():
    job = a_job()
    decoded = JobMessage.decode(job.encode())
    assert (decoded.image == job.image).all() and decoded.image.dtype == np.uint8
    assert {k: v for k, v in vars(decoded).items() if k != "image"} == {k: v for k, v in vars(job).items() if k != "image"}


@pytest.mark.parametrize("mangle, reason", [
    (lambda d: b"{not json", "not valid JSON"),
    (lambda d: json.dumps(dict(d, format=2)).encode(), "format 2 is not supported"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "tokens"}).encode(), "lacks the field 'tokens'"),
    (lambda d: json.dumps(dict(d, frame_png="!!")).encode(), "malformed"),
    (lambda d: json.dumps(dict(d, frame_png=base64.b64encode(b"GIF89a").decode())).encode(), "malformed"),
    (lambda d: json.dumps(dict(d, options=dict(d["options"], ig_steps=10**6))).encode(), "out of range"),
])
def test_a_malformed_job_is_refused_with_the_reason(mangle, reason):
    payload = mangle(json.loads(a_job().encode()))
    with pytest.raises(MessageError, match=reason):
        JobMessage.decode(payload)
    assert job_id_of(payload) in ("j1", None)


def test_results_round_trip_and_garbage_is_refused():
    result = ResultMessage.decode(encode_result("j1", 2, "w1", {"status": "ok", "id": "r1"}, b"\x89PNG"))
    assert (result.job_id, result.attempt, result.worker, result.grid_png) == ("j1", 2, "w1", b"\x89PNG")
    for payload in (b"[]", b'{"job_id": "j"}', json.dumps({"job_id": "j", "response": [1]}).encode()):
        with pytest.raises(MessageError):
            ResultMessage.decode(payload)


def test_worker_config_shares_the_daemons_mqtt_rules_and_needs_mqtt5():
    cfg = parse_config("id: w1\nmqtt:\n  host: broker\n  password_env: PW\n  tls: {enabled: true}\n",
                       model=WorkerConfig)
    assert (cfg.worker_id(), cfg.group, cfg.mqtt.host, cfg.mqtt.tls.active) == ("w1", "explainers", "broker", True)
    with pytest.raises(ConfigError) as caught:  # publish_jpeg is the daemon's, not the connection's
        parse_config("group: g\nqueue: 3\nmqtt:\n  publish_jpeg: false\n", "w.yaml", model=WorkerConfig)
    assert sorted(str(caught.value).splitlines()) == ["w.yaml:2: queue: unknown key (not part of the config schema; check "
                                              "its spelling and indentation)",
                                              "w.yaml:4: mqtt.publish_jpeg: unknown key (not part of the config "
                                              "schema; check its spelling and indentation)"]
    with pytest.raises(ConfigError, match="w.yaml:1: mqtt: a worker needs MQTT 5"):
        parse_config("mqtt:\n  protocol: 3.1.1\n", "w.yaml", model=WorkerConfig)
    with pytest.raises(ConfigError, match="give password_file or password_env, not both"):
        parse_config("mqtt: {password_file: /x, password_env: Y}\n", model=WorkerConfig)
    with pytest.raises(ConfigError, match="group"):
        parse_config("group: a/b\n", model=WorkerConfig)


def test_workers_get_client_ids_of_their_own():
    cfg = parse_config("id: w1\n", model=WorkerConfig)
    first, second = (cfg.mqtt.resolved_client_id("worker-w1", f"/etc/explaincam/{n}.yaml") for n in ("a", "b"))
    assert first.startswith("explaincam-") and "-worker-w1-" in first and first != second
    assert first == cfg.mqtt.resolved_client_id("worker-w1", "/etc/explaincam/a.yaml")  # the same after a restart
    assert parse_config("mqtt: {client_id: mine}\n", model=WorkerConfig).mqtt.resolved_client_id("worker-x") == "mine"


def test_the_worker_command_refuses_a_bad_config_with_exit_status_2(tmp_path):
    config = tmp_path / "worker.yaml"
    config.write_text("bundles: []\n")
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "worker", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{config}:1: bundles:" in result.stderr, result.stderr


def test_a_worker_whose_backend_cannot_run_exits_2_saying_what_to_do(tmp_path):
    bundle = tmp_path / "graphless"  # the shipped bundle as a converter without the graph export leaves it
    shutil.copytree(SHIPPED_BUNDLE, bundle, ignore=shutil.ignore_patterns("explainer_float.tflite"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["explainer"]
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("sha256", "explainer")})
    config = tmp_path / "worker.yaml"
    config.write_text(f"id: w1\nbackend: litert\nbundles: [{bundle}]\nmqtt: {{port: 1}}\n")
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "worker", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "explain backend litert" in result.stderr and "explaincam export-explainer" in result.stderr


def test_subscriptions_match_by_their_topic_filter():
    assert topic_filter("$share/explainers/explaincam/+/explain/job") == "explaincam/+/explain/job"
    assert topic_filter("explaincam/+/caption") == "explaincam/+/caption"


def test_the_documented_worker_yaml_holds_every_key_with_its_default():
    from daemon.config_file import load_config

    documented = load_config(REPO / "systemd" / "worker.yaml", WorkerConfig)
    assert documented == WorkerConfig()
    text = (REPO / "systemd" / "worker.yaml").read_text()
    for name in WorkerConfig.model_fields:
        assert f"\n{name}:" in text, name
    for name in type(documented.mqtt).model_fields:
        assert f"\n  {name}:" in text, name
