"""SmoothGrad (Smilkov et al., 2017): the saliency map averaged over noisy copies of the image.

Noise is Gaussian with sigma = ``smoothgrad_noise`` x the 0..255 input range (the paper
finds 10-20 % works best), ``smoothgrad_samples`` copies per word.
"""

from __future__ import annotations

import numpy as np

from daemon.explain.base import InputGradientMethod, channel_max_abs


class SmoothGrad(InputGradientMethod):
    """Mean over noisy copies of max_c |g|."""

    name = "smoothgrad"

    def inputs(self, image, options, rng) -> np.ndarray:
        """``smoothgrad_samples`` copies of the image with Gaussian noise (not clipped, as in the paper)."""
        sigma = options.smoothgrad_noise * 255.0
        noise = rng.normal(0.0, sigma, (options.smoothgrad_samples,) + image.shape).astype(np.float32)
        return image[None] + noise

    def combine(self, image, inputs, grads) -> np.ndarray:
        """Average of the per-copy saliency maps."""
        return channel_max_abs(grads).mean(axis=0)


METHOD = SmoothGrad()
