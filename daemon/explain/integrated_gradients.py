"""Integrated Gradients (Sundararajan et al., 2017) from a black baseline.

attribution = (x - x') * mean of the gradients at ``ig_steps`` midpoints of the straight
path x' -> x (a midpoint Riemann sum); the map is |sum over colour channels|.

Each word's answer reports how well the sum meets the method's completeness axiom: the
attributions should add up to the score change along the path,
``completeness_error = |sum(attributions) - (score(x) - score(x'))| / |score(x) - score(x')|``
(null when the score does not change). The README gives its median at the default
``ExplainOptions.ig_steps`` and beside it.
"""

from __future__ import annotations

import numpy as np

from daemon.explain.base import InputGradientMethod
from daemon.explain.targets import weight_rows, word_logprobs


def completeness_error(attribution_sum: float, score_change: float) -> float | None:
    """|sum of attributions - score change| / |score change|; None when the score does not change."""
    if not abs(score_change) > 0.0:
        return None
    return abs(attribution_sum - score_change) / abs(score_change)


class IntegratedGradients(InputGradientMethod):
    """Path-integrated gradients; the steps of one word go through the model in batches."""

    name = "integrated_gradients"

    def inputs(self, image, options, rng) -> np.ndarray:
        """Points alpha * x for alpha at the midpoints of ``ig_steps`` equal intervals (baseline 0)."""
        alphas = (np.arange(options.ig_steps, dtype=np.float32) + 0.5) / options.ig_steps
        return alphas[:, None, None, None] * image[None]

    def combine(self, image, inputs, grads) -> np.ndarray:
        """|sum_c (x - 0) * mean gradient|."""
        return np.abs((image * grads.mean(axis=0)).sum(axis=-1))

    def summarize(self, image, inputs, grads) -> dict:
        """The sum of the attributions (before the absolute value of the map)."""
        return {"attribution_sum": float((image.astype(np.float64) * grads.mean(axis=0)).sum())}

    def fields(self, backend, image, teacher, targets, summaries) -> list[dict]:
        """Each word's ``completeness_error`` (one extra forward pass for the path's two ends)."""
        if not targets:
            return []
        ends = np.stack([image, np.zeros_like(image)]).astype(np.float32)
        logp = word_logprobs(backend.logits(ends, teacher), teacher)  # (2, words)
        change = weight_rows(targets, len(teacher) - 1) @ (logp[0] - logp[1])
        out = []
        for summary, delta in zip(summaries, change):
            error = completeness_error(summary["attribution_sum"], float(delta))
            out.append({"completeness_error": None if error is None else round(error, 5)})
        return out


METHOD = IntegratedGradients()
