"""The LiteRT backend's explanations equal the TensorFlow backend's on held-out scenes.

Per method and word the 0..1 maps correlate with Pearson >= 0.99999 to five decimals, the
README's figure (SmoothGrad with the same noise: same seed), Grad-CAM peaks at the same
pixel, and ACE ranks the same concepts in the same order for every word.
"""

from __future__ import annotations

import numpy as np
import pytest

from convert.faithfulness import pearson
from daemon.bundle import load_bundle
from daemon.explain.backends import explainer_graph
from daemon.explain_settings import INT8_METHODS, MAP_METHODS, ExplainOptions
from daemon.scenes import scene_at
from tests.conftest import SHIPPED_BUNDLE

HELD_OUT_SEED = 9494  # not used by training (1), calibration (4242), reports (4343) or other tests
SCENES = 2
OPTIONS = ExplainOptions(smoothgrad_samples=4, ig_steps=16)


@pytest.fixture(scope="module")
def explainers():
    """(TensorFlow, LiteRT) explainers of the shipped bundle."""
    bundle = load_bundle(SHIPPED_BUNDLE)
    assert explainer_graph(bundle) is not None, "the shipped bundle must carry explainer_float.tflite"
    from daemon.explain.explainer import Explainer

    return (Explainer(bundle, OPTIONS, backend="tensorflow", threads=1),
            Explainer(bundle, OPTIONS, backend="litert", threads=1))


def test_maps_peaks_and_concept_rankings_match(explainers):
    tf_explainer, lite_explainer = explainers
    assert lite_explainer.backend.name == "litert" and tf_explainer.backend.name == "tensorflow"
    gradient_methods = [m for m in MAP_METHODS if m not in INT8_METHODS]  # the int8 ones run on no backend
    worst = {m: 1.0 for m in gradient_methods}
    for i in range(SCENES):
        scene = scene_at(HELD_OUT_SEED, i)
        tokens = tf_explainer.vocab.encode(scene.caption)
        reference = tf_explainer.explain(scene.image, tokens, None, gradient_methods)
        candidate = lite_explainer.explain(scene.image, tokens, None, gradient_methods)
        for method in gradient_methods:
            for k, (a, b) in enumerate(zip(reference.maps[method], candidate.maps[method])):
                r = pearson(a, b)
                worst[method] = min(worst[method], r)
                assert round(r, 5) >= 0.99999, f"{method} word {k} of {scene.caption!r}: Pearson {r:.6f}"
        assert candidate.peaks["gradcam"] == reference.peaks["gradcam"], scene.caption
        tf_ace = tf_explainer.resources("ace").explain(scene.image, tokens, counterfactual=False)
        lite_ace = lite_explainer.resources("ace").explain(scene.image, tokens, counterfactual=False)
        assert lite_ace.present == tf_ace.present
        for row in range(len(tokens)):
            assert ([lite_ace.present[j] for j in lite_ace.ranking(row)]
                    == [tf_ace.present[j] for j in tf_ace.ranking(row)]), (scene.caption, row)
    print("lowest Pearson per method:", {m: round(v, 7) for m, v in worst.items()})


def test_float_captions_and_word_logprobs_match(explainers):
    tf_explainer, lite_explainer = explainers
    for i in range(SCENES):
        scene = scene_at(HELD_OUT_SEED, i)
        tokens = tf_explainer.vocab.encode(scene.caption)
        image = tf_explainer.prepare(scene.image)[None]
        greedy = tf_explainer.float_caption(scene.image)  # float features + the numpy step decoder
        for hint in (None, tokens, tokens[:1], list(reversed(tokens))):  # LiteRT: greedy through its logits
            assert lite_explainer.float_caption(scene.image, hint) == greedy, hint
        damaged = scene.image.copy()
        damaged[60:180, 60:180] = 117  # the float model captions it differently from the hint
        assert lite_explainer.float_caption(damaged, tokens) == tf_explainer.float_caption(damaged)
        assert np.allclose(lite_explainer.word_logprobs(image, tokens), tf_explainer.word_logprobs(image, tokens),
                           atol=1e-3)
