"""Targets, the TensorFlow backend and the explanation methods on the shipped bundle's float model."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.decoder import log_softmax
from daemon.explain import heatmap
from daemon.explain.picture import TILE
from daemon.explain.targets import CaptionLogProb, WordLogProb, teacher_tokens, weight_rows, word_logprobs
from daemon.explain_settings import MAP_METHODS, ExplainOptions
from daemon.scenes import scene_at
from tests.conftest import SHIPPED_BUNDLE

HELD_OUT_SEED = 8181  # neither training (1), calibration (4242) nor the converter's report (4343)


@pytest.fixture(scope="module")
def explainer():
    from daemon.explain.explainer import Explainer

    return Explainer(SHIPPED_BUNDLE, ExplainOptions(smoothgrad_samples=4, ig_steps=8), backend="tensorflow")


@pytest.fixture(scope="module")
def single_object_scene():
    """The first large single-object scene of the held-out stream."""
    for i in range(200):
        scene = scene_at(HELD_OUT_SEED, i)
        if len(scene.objects) == 1 and scene.objects[0].size == "large":
            return scene
    raise AssertionError("no large single-object scene in the first 200")


def test_split_model_equals_the_captioner(explainer):
    scene = scene_at(HELD_OUT_SEED, 0)
    tokens = teacher_tokens(explainer.vocab.start, explainer.vocab.encode(scene.caption))
    x = explainer.prepare(scene.image)[None]
    backend = explainer.backend
    expected = backend.captioner([x, np.array([tokens], np.int32)], training=False).numpy()
    assert np.abs(backend.logits(x, tokens) - expected).max() < 1e-4


def test_teacher_forced_logprobs_equal_the_numpy_step_decoder(explainer):
    from daemon.captioner import Captioner

    captioner = Captioner.from_path(SHIPPED_BUNDLE)
    for i in range(3):
        image = scene_at(HELD_OUT_SEED, i).image
        published = captioner.caption(image).tokens
        teacher = teacher_tokens(explainer.vocab.start, published)
        x = explainer.prepare(image)
        model_logp = word_logprobs(explainer.backend.logits(x[None], teacher), teacher)[0]
        numpy_logits = explainer.decoder.teacher_forced_logits(explainer.backend.features(x[None])[0], teacher)
        numpy_logp = log_softmax(numpy_logits)[np.arange(len(published)), published]
        assert np.abs(model_logp - numpy_logp).max() < 1e-4
        assert np.allclose(explainer.word_logprobs(x[None], published)[0], model_logp, atol=1e-4)


def test_the_backends_scores_are_the_weighted_word_logprobs(explainer):
    """A word target scores its word's log-probability, the caption target their sum (the Backend convention)."""
    scene = scene_at(HELD_OUT_SEED, 3)
    tokens = explainer.vocab.encode(scene.caption)
    teacher = teacher_tokens(explainer.vocab.start, tokens)
    x = explainer.prepare(scene.image)
    logp = word_logprobs(explainer.backend.logits(x[None], teacher), teacher)[0]
    targets = [WordLogProb(0), WordLogProb(len(tokens) - 1), CaptionLogProb()]
    weights = weight_rows(targets, len(tokens))
    assert weights[0].tolist() == [1.0] + [0.0] * (len(tokens) - 1) and weights[2].tolist() == [1.0] * len(tokens)
    images = np.repeat(x[None], 3, 0)
    _, scores = explainer.backend.image_gradients(images, teacher, weights)
    acts, grads, layer_scores = explainer.backend.layer_gradients(images, teacher, weights)
    expected = [logp[0], logp[-1], logp.sum()]
    assert np.allclose(scores, expected, atol=1e-4) and np.allclose(layer_scores, expected, atol=1e-4)
    assert acts.shape == grads.shape and acts.shape[0] == 3


def test_image_gradient_matches_a_finite_difference(explainer, single_object_scene):
    """The gradient of the colour word's log-probability, checked along its own direction.

    The model is so sure of its words that their log-probabilities barely move in float32:
    on a dimmed copy of the frame it is less sure, and a step of a few grey levels shows.
    """
    scene = single_object_scene
    tokens = explainer.vocab.encode(scene.caption)
    teacher = teacher_tokens(explainer.vocab.start, tokens)
    x = explainer.prepare(scene.image) * 0.3 + 90
    weights = weight_rows([WordLogProb(2)], len(tokens))
    g = explainer.backend.image_gradients(x[None], teacher, weights)[0][0]
    direction = g / np.linalg.norm(g)
    eps = 2.0
    logp = word_logprobs(explainer.backend.logits(np.stack([x + eps * direction, x - eps * direction]), teacher),
                         teacher)
    assert (logp[0, 2] - logp[1, 2]) / (2 * eps) == pytest.approx(np.linalg.norm(g), rel=0.1)


@pytest.mark.parametrize("method", list(MAP_METHODS))
def test_each_method_gives_a_finite_map_per_word(explainer, method):
    scene = scene_at(HELD_OUT_SEED, 1)
    tokens = explainer.vocab.encode(scene.caption)
    explanation = explainer.explain(scene.image, tokens, [0, len(tokens) - 1], [method])
    maps = explanation.maps[method]
    assert len(maps) == 2 and explanation.words == [scene.caption.split()[0], scene.caption.split()[-1]]
    for heat, (x, y) in zip(maps, explanation.peaks[method]):
        assert heat.shape == (224, 224) and np.isfinite(heat).all()
        assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        assert 0 <= x < 224 and 0 <= y < 224
    assert explanation.timings_ms[f"{method}_ms"] > 0


def test_the_converter_reads_the_moment_map_of_a_moments_head():
    from convert.pack import default_gradcam_layer
    from convert.model import build_captioner, build_encoder

    captioner = build_captioner(build_encoder(pooling="moments", stride=16, minimalistic=True), vocab_size=24)
    assert default_gradcam_layer(captioner, pretrained=False) == "moment_map"
    assert default_gradcam_layer(captioner, pretrained=True) == "moment_map"


@pytest.mark.parametrize("pooling", ["spatial", "avg"])
def test_other_heads_read_the_last_map_if_pretrained_else_an_early_one(pooling):
    import keras

    from convert.pack import default_gradcam_layer
    from convert.model import build_captioner, build_encoder

    captioner = build_captioner(build_encoder(pooling=pooling), vocab_size=24)
    backbone = captioner.get_layer("encoder").get_layer("backbone")
    assert default_gradcam_layer(captioner, pretrained=True) == backbone.layers[-1].name
    layer = backbone.get_layer(default_gradcam_layer(captioner, pretrained=False))
    assert tuple(layer.output.shape[1:3]) == (28, 28) and isinstance(layer, keras.layers.ReLU)


def test_cam_methods_point_at_the_named_objects_as_the_readme_measured():
    """The README's pointing game on seed 5150 (40 scenes, 138 object words), default backend:
    Grad-CAM 0.96, Grad-CAM++ 0.90. A word hits when its map's peak lies on an object the word
    names. Allowed: about two words fewer than documented (another CPU rounds differently)."""
    from convert.faithfulness import pointing_hit
    from daemon.captioner import Captioner
    from daemon.explain.explainer import Explainer

    explainer, captioner = Explainer(SHIPPED_BUNDLE), Captioner.from_path(SHIPPED_BUNDLE)
    hits, words = {"gradcam": 0, "gradcampp": 0}, 0
    for i in range(40):
        scene = scene_at(5150, i)
        caption = captioner.caption(scene.image)  # what the daemon publishes, and so explains
        assert caption.caption == scene.caption
        named = sorted({k for obj in scene.objects for k in obj.token_indices})
        explanation = explainer.explain(scene.image, list(caption.tokens), named, list(hits))
        for j, k in enumerate(named):
            words += 1
            for method in hits:
                hits[method] += pointing_hit(explanation.peaks[method][j], scene.mask(k))
    pointing = {method: n / words for method, n in hits.items()}
    print(f"pointing game on {words} object words of seed 5150:", pointing)
    assert words == 138
    assert pointing["gradcam"] >= 0.94 and pointing["gradcampp"] >= 0.88, pointing


def test_word_records_and_picture(explainer):
    scene = scene_at(HELD_OUT_SEED, 2)
    tokens = explainer.vocab.encode(scene.caption)
    explanation = explainer.explain(scene.image, tokens, None, ["gradcam", "saliency"])
    records = explanation.word_records()
    assert [r["index"] for r in records] == list(range(len(tokens)))
    assert set(records[0]) == {"index", "word", "gradcam", "saliency"}
    assert isinstance(records[0]["gradcam"]["heatmap"], str) and len(records[0]["gradcam"]["peak"]) == 2
    # one row per word: the frame and a panel per method, each TILE px wide
    one_word = explainer.explain(scene.image, tokens, [0], ["gradcam", "saliency"]).picture()
    assert one_word.shape[1] == 3 * TILE and one_word.shape[0] > TILE
    assert explanation.picture().shape == (len(tokens) * one_word.shape[0], 3 * TILE, 3)


def test_an_all_zero_map_reports_no_peak():
    assert heatmap.peak(np.zeros((224, 224), np.float32)) is None
    assert heatmap.peak(heatmap.to_image_map(np.full((7, 7), 3.0), (224, 224))) is None  # flat: nothing stands out
    spot = np.zeros((224, 224), np.float32)
    spot[100:110, 30:40] = 1.0
    x, y = heatmap.peak(spot)
    assert 30 <= x < 40 and 100 <= y < 110


def test_an_all_zero_map_answers_a_null_peak_and_draws_no_marker():
    """What a word whose probability is 1 in float32 gets (its gradients are all zero)."""
    from daemon.explain.base import MethodResult
    from daemon.explain.explainer import Explanation
    from daemon.explain.picture import labelled, overlay

    image = scene_at(HELD_OUT_SEED, 0).image
    spot = np.zeros((224, 224), np.float32)
    spot[10:20, 10:20] = 1.0
    maps = [np.zeros((224, 224), np.float32), spot]
    explanation = Explanation(image, [0, 1], ["a", "b"],
                              {"saliency": MethodResult(maps=maps, peaks=[heatmap.peak(m) for m in maps])})
    records = explanation.word_records()
    assert records[0]["saliency"]["peak"] is None and records[1]["saliency"]["peak"] is not None
    picture = explanation.picture()
    unmarked = labelled(overlay(image, maps[0]), "a / saliency", TILE)
    assert np.array_equal(picture[:unmarked.shape[0], TILE:2 * TILE], unmarked)  # no peak marker drawn


@pytest.mark.slow
def test_integrated_gradients_meets_completeness_at_the_default_steps():
    """Median |sum of attributions - score change| / |score change| <= 5% over every word of
    held-out scenes (a fresh seed), at the default ``ig_steps``, on the default backend."""
    from daemon.explain.explainer import Explainer

    explainer = Explainer(SHIPPED_BUNDLE)
    assert explainer.options.ig_steps == ExplainOptions().ig_steps
    errors = []
    for i in range(4):
        scene = scene_at(9696, i)
        tokens = explainer.vocab.encode(scene.caption)
        result = explainer.explain(scene.image, tokens, None, ["integrated_gradients"]).results["integrated_gradients"]
        errors += [f["completeness_error"] for f in result.word_fields if f["completeness_error"] is not None]
    print(f"IG completeness error over {len(errors)} words: median {np.median(errors):.4f}, max {max(errors):.3f}")
    assert len(errors) >= 8
    assert np.median(errors) <= 0.05


def test_completeness_error_is_relative_to_the_score_change():
    from daemon.explain.integrated_gradients import completeness_error

    assert completeness_error(0.9, 1.0) == pytest.approx(0.1)
    assert completeness_error(-2.2, -2.0) == pytest.approx(0.1)
    assert completeness_error(0.3, 0.0) is None  # the score did not change: no relative error
