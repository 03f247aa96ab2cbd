"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients."""

from __future__ import annotations

import numpy as np

from daemon.explain.base import CAMMethod


class GradCAM(CAMMethod):
    """w_k = mean over positions of d target / d A_k."""

    name = "gradcam"

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """Global-average-pooled gradients."""
        return grads.mean(axis=(0, 1))


METHOD = GradCAM()
