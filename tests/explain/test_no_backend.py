"""A bundle without its explainer graph on a box without TensorFlow: the int8 methods still answer
over MQTT, and the answer names the methods that cannot run and why."""

from __future__ import annotations

import json
import shutil

from daemon.bundle import write_manifest
from daemon.explain.heatmap import heatmap_from_base64
from tests.conftest import CAPTION, SHIPPED_BUNDLE, START_TIMEOUT, child_pids, daemon_config, loaded_tensorflow
from tests.explain.test_mqtt_explain import EXPLAIN_TIMEOUT, FAST, Requester

# Python's own way to make an import fail, in the daemon and in the explainer process it spawns
NO_TENSORFLOW = "import sys\nsys.modules.update(tensorflow=None, keras=None, tf_keras=None)\n"


def bundle_without_graph(tmp_path):
    """A copy of the shipped bundle without explainer_float.tflite, as a failed gradient export leaves it."""
    copy = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / manifest["files"].pop("explainer")).unlink()
    del manifest["explainer"]
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "sha256"})
    return copy


def test_occlusion_and_rise_answer_without_the_graph_and_without_tensorflow(mosquitto, collect, daemon_process,
                                                                             tmp_path):
    blocker = tmp_path / "no-tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    config = daemon_config(tmp_path, mosquitto.port, explain=FAST, model={"bundle": str(bundle_without_graph(tmp_path))})
    daemon = daemon_process(config, env={"PYTHONPATH": str(blocker)})
    watcher = collect(mosquitto.port, CAPTION)
    watcher.wait_for(CAPTION, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port, "test/replies/no-backend")
    try:
        requester.send({"id": "int8", "methods": ["occlusion", "rise"]}, b"1")
        int8 = json.loads(requester.reply_for(b"1", EXPLAIN_TIMEOUT).payload)
        requester.send({"id": "mixed", "methods": ["gradcam", "occlusion", "saliency"], "words": [0]}, b"2")
        mixed = json.loads(requester.reply_for(b"2", EXPLAIN_TIMEOUT).payload)
    finally:
        requester.close()
    assert int8["status"] == "ok", int8["error"]
    assert int8["float_caption"] is None and "unavailable" not in int8  # no float model here, nothing refused
    assert [w["word"] for w in int8["words"]] == int8["caption"].split()
    for record in int8["words"]:
        for method in ("occlusion", "rise"):
            entry = record[method]
            assert heatmap_from_base64(entry["heatmap"]).shape == (224, 224)
            assert entry["model"] == "int8" and entry["peak"] is not None
    # a request that also names gradient methods gets the int8 ones and, per refused method, why
    assert mixed["status"] == "ok" and set(mixed["words"][0]) == {"index", "word", "occlusion"}
    assert set(mixed["unavailable"]) == {"gradcam", "saliency"}
    reason = mixed["unavailable"]["gradcam"]
    assert "no explainer graph" in reason and "TensorFlow is not installed" in reason and "occlusion, rise" in reason
    children = child_pids(daemon.process.pid)
    assert children and not any(loaded_tensorflow(pid) for pid in [daemon.process.pid, *children])
    assert "gradient explanations on this box will fail" in daemon.log() and "(occlusion, rise) still" in daemon.log()
    assert daemon.process.poll() is None
