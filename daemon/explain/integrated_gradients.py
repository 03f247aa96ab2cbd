"""Integrated Gradients (Sundararajan et al., 2017) from a black baseline.

attribution = (x - x') * mean of the gradients at ``ig_steps`` midpoints of the straight
path x' -> x (a midpoint Riemann sum); the map is |sum over colour channels|.
"""

from __future__ import annotations

import numpy as np

from daemon.explain.base import InputGradientMethod


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


METHOD = IntegratedGradients()
