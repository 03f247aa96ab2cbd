"""Near-certain words: their gradient maps are flagged below_resolution, and every map that is not
flagged is stable under an equivalent computation that rounds differently."""

from __future__ import annotations

import numpy as np

from convert.stability import STABLE, StabilityTotals
from daemon.explain.explainer import Explainer
from daemon.explain.resolution import NEAR_CERTAIN
from daemon.explain.targets import teacher_tokens, word_logprobs
from daemon.scenes import scene_at
from tests.conftest import SHIPPED_BUNDLE

HELD_OUT_SEED = 9494
GRADIENT_METHODS = ["gradcam", "gradcampp", "saliency"]


def test_flagged_words_are_the_near_certain_ones_and_the_others_are_stable():
    explainer = Explainer(SHIPPED_BUNDLE, backend="litert")
    stability = StabilityTotals(explainer, GRADIENT_METHODS)
    flagged = resolved = 0
    for n in range(8):
        scene = scene_at(HELD_OUT_SEED, n)
        tokens = explainer.vocab.encode(scene.caption)
        explanation = explainer.explain(scene.image, tokens, None, GRADIENT_METHODS)
        teacher = teacher_tokens(explainer.vocab.start, tokens)
        p = np.exp(word_logprobs(explainer.backend.logits(explainer.prepare(scene.image)[None], teacher), teacher)[0])
        for method in GRADIENT_METHODS:
            fields = explanation.results[method].word_fields
            assert [f["below_resolution"] for f in fields] == list(1 - p < NEAR_CERTAIN)
            assert np.allclose([f["float_probability"] for f in fields], p, atol=1e-6)
        flagged += int((1 - p < NEAR_CERTAIN).sum())
        resolved += int((1 - p >= NEAR_CERTAIN).sum())
        stability.add(scene.image, tokens, list(range(len(tokens))), explanation)
    report = stability.report()
    print("FIGURES", report)
    assert flagged and resolved  # both kinds of words were there to compare
    for method in GRADIENT_METHODS:
        assert report[method]["resolved"]["min_pearson"] >= STABLE, report[method]
