"""The explainer graph export: builtin ops only, the unrolled decoder equals Keras', other backbones, clear failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

import keras
import tensorflow as tf

from convert.explainer_export import (EXPLAINER_FILE, SIGNATURES, ExplainerGraphs, ExportError, UnrolledDecoder,
                                      add_to_bundle, convert_graphs, export_in_subprocess,
                                      operator_names)
from convert.model import build_captioner, build_encoder, load_captioner
from daemon.bundle import load_bundle, write_manifest
from daemon.captioner import resize_for_encoder
from daemon.explain.backends.tensorflow import SplitCaptioner
from daemon.explain.layers import MomentMap
from daemon.scenes import scene_at
from tests.conftest import SHIPPED_BUNDLE, child_running, wait_until

HELD_OUT_SEED = 9494  # scenes no other test, training or conversion step uses


def litert_runner(model: bytes, key: str):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model, num_threads=2).get_signature_runner(key)


@pytest.fixture(scope="module")
def shipped():
    bundle = load_bundle(SHIPPED_BUNDLE)  # verifies every hash, the explainer's included
    return bundle, load_captioner(bundle.file("captioner"))


@pytest.fixture(scope="module")
def scenes(shipped):
    bundle, _ = shipped
    return np.stack([resize_for_encoder(scene_at(HELD_OUT_SEED, i).image, bundle.input_size)
                     for i in range(4)]).astype(np.float32)


def test_shipped_bundle_carries_a_builtin_only_explainer(shipped):
    bundle, _ = shipped
    entry = bundle.manifest["explainer"]
    assert bundle.manifest["files"]["explainer"] == entry["file"] == EXPLAINER_FILE
    assert entry["tokens"] == bundle.max_length + 1 and entry["batch"] >= 1
    assert entry["gradcam_layer"] == bundle.manifest["gradcam_layer"] == "moment_map"
    assert entry["bottleneck_layer"] == "spatial_reduce"
    model = bundle.file("explainer").read_bytes()
    ops = operator_names(model)
    assert ops and not [op for op in ops if op.startswith("CUSTOM") or "FLEX" in op.upper()], ops
    assert "WHILE" not in ops and "VAR_HANDLE" not in ops  # unrolled, and constants folded in
    from ai_edge_litert.interpreter import Interpreter

    assert sorted(Interpreter(model_content=model).get_signature_list()) == sorted(SIGNATURES)


def test_unrolled_decoder_equals_keras_lstm_and_padding_is_causal(shipped, scenes):
    bundle, captioner = shipped
    features = SplitCaptioner(captioner, "moment_map").encode(tf.constant(scenes))[1]
    decoder = keras.Model([captioner.get_layer("feat_dropout").input, captioner.inputs[1]], captioner.output)
    length = bundle.max_length + 1
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, bundle.manifest["vocab_size"], (len(scenes), length)).astype(np.int32)
    tokens[1, 5:] = 0  # a short caption padded after its end
    tokens[2, 3:] = 0
    tokens = tf.constant(tokens)
    keras_logits = decoder([features, tokens], training=False).numpy()
    unrolled = UnrolledDecoder(captioner)(features, tokens).numpy()
    difference = np.abs(unrolled - keras_logits).max()
    print(f"unrolled vs Keras LSTM: max |logit difference| {difference:.2e}")
    assert difference < 1e-5  # every position, the padded ones included
    # causal: a row's logits before its padding do not depend on the padding
    short = decoder([features[1:2], tokens[1:2, :5]], training=False).numpy()
    np.testing.assert_allclose(keras_logits[1, :5], short[0], atol=1e-5)


def _tiny_captioner(pool: keras.layers.Layer) -> keras.Model:
    """A small captioner of the project's layout with ``pool`` inside its backbone."""
    image = keras.Input((32, 32, 3), name="image")
    inner = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inner)
    backbone = keras.Model(inner, pool(x), name="backbone")
    x = keras.layers.Conv2D(4, 1, name="spatial_conv")(backbone(image))
    x = keras.layers.ReLU(name="spatial_reduce")(x)
    x = MomentMap(name="moment_map")(x)
    encoder = keras.Model(image, keras.layers.GlobalAveragePooling2D(name="features")(x), name="encoder")
    return build_captioner(encoder, vocab_size=24, embedding_dim=8, units=8)


def test_an_op_without_builtin_gradient_is_named_and_the_bundle_keeps_working(tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle_dir)
    (bundle_dir / EXPLAINER_FILE).unlink()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    del manifest["files"]["explainer"], manifest["explainer"]
    write_manifest(bundle_dir, manifest)
    before = (bundle_dir / "manifest.json").read_bytes()
    # max pooling's gradient (MaxPoolGrad) has no TFLite builtin
    captioner = _tiny_captioner(keras.layers.MaxPooling2D(2))
    with pytest.raises(ExportError, match="MaxPoolGrad") as raised:
        add_to_bundle(bundle_dir, batch=1, captioner=captioner)
    assert "TensorFlow backend" in str(raised.value) and len(str(raised.value).splitlines()) == 1
    assert not (bundle_dir / EXPLAINER_FILE).exists()
    assert (bundle_dir / "manifest.json").read_bytes() == before
    assert not load_bundle(bundle_dir).has("explainer")


@pytest.mark.slow
def test_efficientnetv2_captioner_exports_op_clean_and_matches_tensorflow(tmp_path):
    """Swish, squeeze-excite sigmoids, strided depthwise convolutions and the in-model rescaling.

    The two gradient signatures hold every op the others have (a forward pass of the whole
    model); exporting only them keeps the test to a couple of minutes.
    """
    keras.utils.set_random_seed(7)
    encoder = build_encoder("EfficientNetV2B0", input_size=64, weights=None, pooling="moments")
    captioner = build_captioner(encoder, vocab_size=24)
    backbone_layer = encoder.get_layer("backbone").layers[-1].name
    graphs = ExplainerGraphs(captioner, "moment_map", backbone_layer, batch=2, tokens=6,
                             signatures=("image_gradients", "bottleneck_gradients"))
    size = convert_graphs(graphs, tmp_path / EXPLAINER_FILE)
    model = (tmp_path / EXPLAINER_FILE).read_bytes()
    assert size == len(model)
    assert not [op for op in operator_names(model) if op.startswith("CUSTOM")]
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    tokens = np.array([[1, 5, 7, 9, 3, 2], [1, 4, 4, 0, 0, 0]], np.int32)
    weights = np.array([[1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], np.float32)

    split = SplitCaptioner(captioner, backbone_layer)
    x = tf.constant(images)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        acts, logits = split.forward(x, tf.constant(tokens))
        logp = tf.nn.log_softmax(logits[:, :-1], axis=-1)
        scores = tf.reduce_sum(tf.gather(logp, tokens[:, 1:], axis=2, batch_dims=2) * weights, axis=1)
        total = tf.reduce_sum(scores)
    tf_image_grads, tf_grads = tape.gradient(total, x).numpy(), tape.gradient(total, acts).numpy()

    lite = litert_runner(model, "image_gradients")(images=images, tokens=tokens, weights=weights)
    lite_b = litert_runner(model, "bottleneck_gradients")(images=images, tokens=tokens, weights=weights)
    np.testing.assert_allclose(lite["scores"], scores.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lite_b["activations"], acts.numpy(), rtol=1e-4, atol=1e-5)
    for row in range(2):
        for ours, theirs in ((lite["gradients"][row], tf_image_grads[row]), (lite_b["gradients"][row], tf_grads[row])):
            assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
            assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99


def test_a_graph_at_a_larger_batch_answers_every_row_as_alone(tmp_path):
    """The backend cuts rows into the graph's batch and pads the last one (the shipped graph takes 1)."""
    from daemon.explain.backends.litert import LiteRTBackend

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle_dir)
    keras.utils.set_random_seed(3)
    add_to_bundle(bundle_dir, batch=2, captioner=_tiny_captioner(keras.layers.Identity()))
    backend = LiteRTBackend(load_bundle(bundle_dir), threads=2)
    assert backend.batch == 2 and backend.input_size == (32, 32)
    images = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    tokens = np.array([1, 5, 7, 9], np.int32)
    weights = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], np.float32)
    together = backend.image_gradients(images, tokens, weights)  # a full batch, then one padded
    for row in range(3):
        alone = backend.image_gradients(images[row:row + 1], tokens, weights[row:row + 1])
        np.testing.assert_allclose(together[0][row], alone[0][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(together[1][row], alone[1][0], rtol=1e-5, atol=1e-7)
    assert np.abs(together[0]).max() > 0


def _saved(tmp_path, captioner: keras.Model):
    """``captioner`` saved as a bundle's captioner.keras in ``tmp_path``."""
    path = tmp_path / "captioner.keras"
    captioner.save(path)
    return path


def test_one_process_and_a_process_per_signature_export_the_same_graph(tmp_path):
    """A small captioner exports in one process, a large one (EfficientNetV2L) signature by signature."""
    keras.utils.set_random_seed(4)
    saved = _saved(tmp_path, _tiny_captioner(keras.layers.Identity()))
    graphs = {}
    for apart in (False, True):
        out = tmp_path / f"apart-{apart}.tflite"
        entry = export_in_subprocess(saved, out, "moment_map", "spatial_reduce", tokens=9, apart=apart)
        assert entry["bytes"] == out.stat().st_size and entry["peak_rss_bytes"] > 0, entry
        graphs[apart] = out.read_bytes()
    assert graphs[False] == graphs[True]  # the same conversions of the same SavedModels, merged alike
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apart-False.tflite", "apart-True.tflite", "captioner.keras"]


@pytest.mark.parametrize("apart", [False, True])
def test_an_export_apart_that_fails_says_why_in_one_line_and_writes_nothing(tmp_path, apart):
    """``convert`` runs the export in processes of its own and writes the bundle without it when it fails."""
    saved = _saved(tmp_path, _tiny_captioner(keras.layers.MaxPooling2D(2)))
    entry = export_in_subprocess(saved, tmp_path / EXPLAINER_FILE, "moment_map", "spatial_reduce", tokens=9,
                                 apart=apart)
    assert set(entry) == {"error"} and "MaxPoolGrad" in entry["error"] and len(entry["error"].splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioner.keras"]


def test_an_export_killed_for_memory_is_reported_and_can_run_again(tmp_path):
    """The kernel's OOM killer sends SIGKILL; here the test sends it, a few seconds into the export."""
    keras.utils.set_random_seed(5)
    saved = _saved(tmp_path, _tiny_captioner(keras.layers.Identity()))
    out = tmp_path / EXPLAINER_FILE
    answer = {}
    exporting = threading.Thread(target=lambda: answer.update(
        export_in_subprocess(saved, out, "moment_map", "spatial_reduce", tokens=9)))
    exporting.start()
    child = wait_until(lambda: child_running("convert.explainer_export"), timeout=60, message="the export process")
    time.sleep(3)
    os.kill(child, signal.SIGKILL)
    exporting.join(timeout=60)
    assert "killed (SIGKILL)" in answer["error"] and "lack of memory" in answer["error"], answer
    assert len(answer["error"].splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioner.keras"]
    entry = export_in_subprocess(saved, out, "moment_map", "spatial_reduce", tokens=9)  # run again, it completes
    assert entry["bytes"] == out.stat().st_size and entry["peak_rss_bytes"] > 0
    assert sorted(litert_runner(out.read_bytes(), "logits")(
        images=np.zeros((1, 32, 32, 3), np.float32), tokens=np.ones((1, 9), np.int32))) == ["logits"]


