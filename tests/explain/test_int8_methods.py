"""Occlusion and RISE: explanations of the int8 captioner that published the caption (no gradients)."""

from __future__ import annotations

import numpy as np
import pytest

from convert import faithfulness as ff
from daemon.captioner import Captioner
from daemon.explain.explainer import Explainer
from daemon.explain.occlusion import METHOD as OCCLUSION
from daemon.explain.perturbation import PerturbationMethod, neutral_fill, word_logprob_and_logodds
from daemon.explain_settings import INT8_METHODS, ExplainOptions
from daemon.explain.targets import teacher_tokens
from daemon.scenes import scene_at
from tests.conftest import SHIPPED_BUNDLE

HELD_OUT_SEED = 9393  # used by no other test, nor by training (1), calibration (4242) or the report (4343)


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(SHIPPED_BUNDLE, backend="litert")


def test_the_int8_scores_are_the_published_captions_own(explainer):
    """What the methods score is what the daemon's captioner computed for the caption it published."""
    captioner = Captioner.from_path(SHIPPED_BUNDLE)
    frames = [scene_at(HELD_OUT_SEED, i).image for i in range(3)]
    scorer = explainer.int8_scorer()
    for frame in frames:
        caption = captioner.decoder.greedy(captioner.encode(frame), explainer.bundle.max_length)
        teacher = teacher_tokens(explainer.vocab.start, caption.tokens)
        # the frame alone and inside a batch of other frames (the resized interpreter) score the same
        batch = np.stack([frame, *frames])
        alone = scorer.word_logprobs(frame[None], teacher)[0]
        batched = scorer.word_logprobs(batch, teacher)[0]
        np.testing.assert_allclose(alone, caption.word_logprobs, atol=1e-4)
        np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_the_log_odds_of_a_near_certain_word_is_computed_from_the_logits():
    """log p saturates at 0 for a near-certain word; its log-odds still says how certain it is."""
    logits = np.array([[[40.0, 0.0, 0.0], [10.0, 9.0, -5.0]]])  # word 0 after the start, then word 0 again
    logp, logodds = word_logprob_and_logodds(logits, [2, 0, 0])
    assert logp[0, 0] > -1e-15  # p = 1 - 2e-17: log p is 0 in float64 too
    assert logodds[0, 0] == pytest.approx(40.0 - np.log(2.0))
    p = np.exp(10.0) / (np.exp(10.0) + np.exp(9.0) + np.exp(-5.0))
    assert logodds[0, 1] == pytest.approx(np.log(p / (1 - p)))
    assert logp[0, 1] == pytest.approx(np.log(p))


def test_occlusions_painted_patches_are_the_blend_of_the_frame_and_its_fill():
    """Occlusion paints its rectangles by slicing; the frames are those of the general blend."""
    image = scene_at(HELD_OUT_SEED, 7).image.astype(np.float32)
    keep = OCCLUSION.keep(image.shape[:2], ExplainOptions())
    fill = neutral_fill(image)
    painted = OCCLUSION.copies(image, fill, keep)
    np.testing.assert_array_equal(painted, PerturbationMethod.copies(OCCLUSION, image, fill, keep))
    assert (painted != image.astype(np.uint8)).any(axis=-1).sum(axis=(1, 2)).min() > 0  # each hides something


def test_occlusion_and_rise_point_at_the_named_objects_and_delete_faster_than_random(explainer):
    """On held-out scenes the int8 maps point at the object each word names, and deleting pixels in
    their order lowers the int8 model's word probability faster than deleting them at random."""
    rng = np.random.default_rng(0)
    scorer = explainer.int8_scorer()
    hits = {m: 0 for m in INT8_METHODS}
    deletion = {m: [] for m in (*INT8_METHODS, "random")}
    words = 0
    for n in range(24):
        scene = scene_at(HELD_OUT_SEED, n)
        tokens = explainer.vocab.encode(scene.caption)
        indices = sorted({i for obj in scene.objects for i in obj.token_indices})
        explanation = explainer.explain(scene.image, tokens, indices, list(INT8_METHODS))
        for method in INT8_METHODS:
            fields = explanation.results[method].word_fields
            assert all(f["model"] == "int8" and 0 < f["int8_probability"] <= 1 for f in fields)
        teacher = teacher_tokens(explainer.vocab.start, tokens)
        x = explainer.prepare(scene.image)
        for k, i in enumerate(indices):
            words += 1
            for method in INT8_METHODS:
                hits[method] += ff.pointing_hit(explanation.peaks[method][k], scene.mask(i))
            if n < 6:  # deletion curves of the first scenes: 21 frames per word and ordering
                score = lambda images, i=i: np.exp(scorer.word_logprobs(images, teacher)[:, i])  # noqa: E731
                orders = {m: ff.importance_order(explanation.maps[m][k], rng) for m in INT8_METHODS}
                orders["random"] = ff.random_order(x.shape[0] * x.shape[1], rng)
                for name, order in orders.items():
                    deletion[name].append(ff.auc(ff.deletion_curve(score, x, order)))
    pointing = {m: hits[m] / words for m in INT8_METHODS}
    print("FIGURES", {"words": words, "pointing": pointing, "deletion_auc_int8": {
        m: round(float(np.mean(v)), 3) for m, v in deletion.items()}})
    assert all(p >= 0.85 for p in pointing.values()), pointing
    for method in INT8_METHODS:
        assert np.mean(deletion[method]) < np.mean(deletion["random"]), deletion


def test_a_repeated_request_repeats_its_maps_and_the_settings_change_them(explainer):
    scene = scene_at(HELD_OUT_SEED, 40)
    tokens = explainer.vocab.encode(scene.caption)
    first = explainer.explain(scene.image, tokens, [0, 1], ["rise", "occlusion"])
    again = explainer.explain(scene.image, tokens, [0, 1], ["rise", "occlusion"])
    for method in ("rise", "occlusion"):
        for a, b in zip(first.maps[method], again.maps[method]):
            np.testing.assert_array_equal(a, b)
    other = Explainer(explainer.bundle, ExplainOptions(rise_masks=64, seed=3, occlusion_steps=6), backend="litert")
    changed = other.explain(scene.image, tokens, [0, 1], ["rise", "occlusion"])
    for method in ("rise", "occlusion"):
        assert not np.array_equal(changed.maps[method][0], first.maps[method][0])
