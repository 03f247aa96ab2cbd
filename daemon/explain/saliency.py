"""Vanilla gradient saliency (Simonyan et al., 2014): max over channels of |d target / d pixel|."""

from __future__ import annotations

import numpy as np

from daemon.explain.base import InputGradientMethod, channel_max_abs


class Saliency(InputGradientMethod):
    """The gradient at the image itself."""

    name = "saliency"

    def inputs(self, image, options, rng) -> np.ndarray:
        """Only the image."""
        return image[None]

    def combine(self, image, inputs, grads) -> np.ndarray:
        """max_c |g|."""
        return channel_max_abs(grads[0])


METHOD = Saliency()
