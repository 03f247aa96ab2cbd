"""The LiteRT backend on the shipped bundle equals TensorFlow's GradientTape on captioner.keras.

The reference is the bundle's own Keras captioner (its LSTM as Keras runs it, TensorFlow's
own gradients) on held-out generated scenes; the backend runs the exported
``explainer_float.tflite`` without TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from daemon.bundle import load_bundle
from daemon.captioner import resize_for_encoder
from daemon.explain.backends.litert import LiteRTBackend
from daemon.scenes import scene_at
from daemon.vocab import Vocabulary
from tests.conftest import REPO, SHIPPED_BUNDLE

HELD_OUT_SEED = 9393  # scenes no other test, training or conversion step uses
SCENES = 5  # with the words below, more rows than the graph's batch


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps, flattened."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(SHIPPED_BUNDLE)


@pytest.fixture(scope="module")
def backend(bundle):
    return LiteRTBackend(bundle, threads=2)


@pytest.fixture(scope="module")
def held_out(bundle):
    """(images (N, S, S, 3) float32, teacher token rows (N, T) padded with 0, their lengths)."""
    special = bundle.manifest["special_tokens"]
    vocab = Vocabulary.load(bundle.file("vocab"), special["start"], special["end"])
    images, rows = [], []
    for i in range(SCENES):
        scene = scene_at(HELD_OUT_SEED, i)
        images.append(resize_for_encoder(scene.image, bundle.input_size).astype(np.float32))
        rows.append([vocab.start] + vocab.encode(scene.caption))
    return np.stack(images), rows


class TensorFlowReference:
    """GradientTape on the bundle's Keras captioner, the contract's score, one row at a time."""

    def __init__(self, bundle, layer: str):
        import tensorflow as tf

        from daemon.explain.backends.tensorflow import SplitCaptioner
        from daemon.explain.layers import MomentMap  # noqa: F401  registers the layer
        import keras

        self.tf = tf
        self.model = SplitCaptioner(keras.models.load_model(bundle.file("captioner"), compile=False), layer)

    def score(self, logits, tokens, weights):
        tf = self.tf
        logp = tf.nn.log_softmax(logits[0, :-1], axis=-1)
        picked = tf.gather(logp, tokens[1:], axis=1, batch_dims=1)
        return tf.reduce_sum(picked * weights)

    def run(self, image, tokens, weights):
        """(logits, layer acts, layer grads, image grads, score) of one row."""
        tf = self.tf
        x = tf.convert_to_tensor(image[None])
        tok = tf.convert_to_tensor(np.asarray(tokens, np.int32)[None])
        w = tf.convert_to_tensor(np.asarray(weights, np.float32))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            acts, logits = self.model.forward(x, tok)
            score = self.score(logits, tok[0], w)
        return (logits[0].numpy(), acts[0].numpy(), tape.gradient(score, acts)[0].numpy(),
                tape.gradient(score, x)[0].numpy(), float(score))


@pytest.fixture(scope="module")
def references(bundle, held_out):
    """Per held-out scene and word target (all words, and word 1 alone): the TensorFlow results."""
    images, rows = held_out
    gradcam = TensorFlowReference(bundle, bundle.manifest["explainer"]["gradcam_layer"])
    bottleneck = TensorFlowReference(bundle, bundle.manifest["explainer"]["bottleneck_layer"])
    cases = []
    for image, tokens in zip(images, rows):
        for target in ("caption", "word"):
            weights = np.ones(len(tokens) - 1, np.float32)
            if target == "word":
                weights = np.eye(len(tokens) - 1, dtype=np.float32)[1]
            logits, acts, grads, image_grads, score = gradcam.run(image, tokens, weights)
            _, b_acts, b_grads, _, _ = bottleneck.run(image, tokens, weights)
            cases.append(dict(image=image, tokens=tokens, weights=weights, logits=logits, acts=acts,
                              grads=grads, image_grads=image_grads, score=score, b_acts=b_acts, b_grads=b_grads))
    return cases


def _close(litert: np.ndarray, tf: np.ndarray, rtol: float = 1e-3) -> None:
    """Equal to within float32 accumulation: rtol of the map's largest magnitude, and Pearson >= 0.99."""
    scale = float(np.abs(tf).max()) or 1.0
    assert np.abs(litert - tf).max() <= rtol * scale + 1e-7, (np.abs(litert - tf).max(), scale)
    if np.ptp(tf) > 0:
        assert pearson(litert, tf) >= 0.99


def test_logits_match_tensorflow(backend, references):
    for case in references:
        tokens = case["tokens"]
        logits = backend.logits(case["image"][None], np.asarray(tokens))
        assert logits.shape == (1, len(tokens), backend.logits(case["image"][None], tokens[:1]).shape[-1])
        np.testing.assert_allclose(logits[0], case["logits"], atol=1e-3, rtol=1e-4)


def test_gradients_match_tensorflow_per_row_in_one_padded_call(backend, references):
    """All cases in one call: rows of different caption lengths, more rows than the graph's batch."""
    assert len(references) > backend.batch
    length = max(len(c["tokens"]) for c in references)
    images = np.stack([c["image"] for c in references])
    tokens = np.zeros((len(references), length), np.int32)
    weights = np.zeros((len(references), length - 1), np.float32)
    for i, case in enumerate(references):
        tokens[i, :len(case["tokens"])] = case["tokens"]
        weights[i, :len(case["weights"])] = case["weights"]
    acts, grads, scores = backend.layer_gradients(images, tokens, weights)
    image_grads, image_scores = backend.image_gradients(images, tokens, weights)
    b_acts, b_grads, b_scores = backend.bottleneck_gradients(images, tokens, weights)
    np.testing.assert_allclose(backend.bottleneck_activations(images), b_acts, rtol=1e-5, atol=1e-6)
    for i, case in enumerate(references):
        np.testing.assert_allclose([scores[i], image_scores[i], b_scores[i]], case["score"], rtol=1e-3, atol=1e-5)
        _close(acts[i], case["acts"])
        _close(grads[i], case["grads"])
        _close(image_grads[i], case["image_grads"], rtol=1e-2)  # 40-odd layers of float32 sums in another order
        _close(b_acts[i], case["b_acts"])
        _close(b_grads[i], case["b_grads"])
        # the Grad-CAM map the methods draw from them
        cam_lite = np.maximum((acts[i] * grads[i].mean(axis=(0, 1))).sum(-1), 0)
        cam_tf = np.maximum((case["acts"] * case["grads"].mean(axis=(0, 1))).sum(-1), 0)
        if cam_tf.max() > 0:
            assert np.unravel_index(cam_lite.argmax(), cam_lite.shape) == np.unravel_index(cam_tf.argmax(), cam_tf.shape)


def test_padding_of_batch_and_tokens_changes_nothing(backend, held_out):
    images, rows = held_out
    tokens = np.asarray(rows[0], np.int32)
    weights = np.ones(len(tokens) - 1, np.float32)
    one = backend.image_gradients(images[:1], tokens, weights)
    many = backend.image_gradients(np.repeat(images[:1], backend.batch + 1, 0), tokens, weights)
    for row in range(backend.batch + 1):  # the row alone, in a full batch, in a padded last batch
        np.testing.assert_allclose(many[0][row], one[0][0], rtol=1e-5, atol=1e-7)
    # the graph's own length with explicit zero padding and zero weights: the same as padded inside
    full = np.zeros(backend.tokens, np.int32)
    full[:len(tokens)] = tokens
    full_weights = np.zeros(backend.tokens - 1, np.float32)
    full_weights[:len(weights)] = 1
    padded = backend.image_gradients(images[:1], full, full_weights)
    np.testing.assert_array_equal(padded[0], one[0])
    np.testing.assert_array_equal(backend.logits(images[:1], full)[:, :len(tokens)], backend.logits(images[:1], tokens))


def test_bad_shapes_get_clear_errors(backend, held_out):
    images, rows = held_out
    with pytest.raises(ValueError, match="exceed"):
        backend.logits(images[:1], np.ones(backend.tokens + 1, np.int32))
    with pytest.raises(ValueError, match="images must be"):
        backend.logits(images[:1, :100], rows[0])
    with pytest.raises(ValueError, match="weights must be"):
        backend.image_gradients(images[:1], rows[0], np.ones(len(rows[0]) + 3, np.float32))


def test_litert_backend_never_imports_tensorflow():
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from daemon.explain.backends.litert import LiteRTBackend\n"
        f"b = LiteRTBackend({str(SHIPPED_BUNDLE)!r}, threads=1)\n"
        "x = np.zeros((1, *b.input_size, 3), np.float32)\n"
        "g, s = b.image_gradients(x, [1, 2, 3], [[1.0, 1.0]])\n"
        "a, g, s = b.layer_gradients(x, [1, 2, 3], [[1.0, 1.0]])\n"
        "print(json.dumps({'shape': list(g.shape),\n"
        "                  'heavy': sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["shape"][0] == 1
