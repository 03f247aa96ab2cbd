"""How stable gradient maps are under an equivalent computation: the ``gradient_stability`` of evaluate.

A word whose probability is within 1e-4 of 1 has a log-probability gradient at float32's
rounding level (``daemon.explain.resolution``), so its map can change with the CPU or the
order of a sum. ``ScaledBackend`` computes the same maps another way: it asks the backend
for the gradient of 3 x the target and divides by 3. Mathematically nothing changes; every
rounding of the backward pass does (3 is not a power of two). The Pearson correlation of
each map with its twin, split by the ``below_resolution`` flag, says whether the flag
marks the words whose maps are rounding.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from convert.faithfulness import pearson
from daemon.explain.explainer import Explainer

SCALE = 3.0  # not a power of two: every product of the backward pass rounds differently
STABLE = 0.99  # Pearson a map must keep with its twin to count as stable


class ScaledBackend:
    """A backend that returns d(SCALE * target)/dx / SCALE: the same gradients, rounded differently."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def layer_gradients(self, images, tokens, weights):
        """The wrapped backend's layer gradients of the scaled target, scaled back."""
        acts, grads, scores = self.backend.layer_gradients(images, tokens, np.asarray(weights, np.float32) * SCALE)
        return acts, grads / SCALE, scores / SCALE

    def image_gradients(self, images, tokens, weights):
        """The wrapped backend's image gradients of the scaled target, scaled back."""
        grads, scores = self.backend.image_gradients(images, tokens, np.asarray(weights, np.float32) * SCALE)
        return grads / SCALE, scores / SCALE


class StabilityTotals:
    """Pearson of each gradient map with its ScaledBackend twin, by method and flag."""

    def __init__(self, explainer: Explainer, methods: list[str]):
        self.methods = methods
        self.twin = Explainer(explainer.bundle, explainer.options, backend=ScaledBackend(explainer.backend))
        self.pearson: dict[tuple[str, bool], list[float]] = defaultdict(list)

    def add(self, image: np.ndarray, tokens: list[int], words: list[int], explanation) -> None:
        """Explain the same words again on the twin and record each map's Pearson with the first."""
        if not self.methods:
            return
        twin = self.twin.explain(image, tokens, words, self.methods)
        for method in self.methods:
            for k in range(len(words)):
                flagged = bool(explanation.results[method].word_fields[k]["below_resolution"])
                self.pearson[(method, flagged)].append(pearson(explanation.maps[method][k], twin.maps[method][k]))

    def report(self) -> dict:
        """Per method, for flagged (p > 0.9999) and other words: count, minimum and mean Pearson, share stable."""
        def summary(values):
            values = np.asarray(values)
            return {"words": int(values.size), "min_pearson": round(float(values.min()), 4),
                    "mean_pearson": round(float(values.mean()), 4),
                    "share_stable": round(float((values >= STABLE).mean()), 4)} if values.size else {"words": 0}

        return {method: {"below_resolution": summary(self.pearson[(method, True)]),
                         "resolved": summary(self.pearson[(method, False)])} for method in self.methods}
