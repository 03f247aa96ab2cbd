"""Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted per position.

With the exponential-of-score trick the second and third derivatives are powers of the
first, so alpha_ij = g^2 / (2 g^2 + sum_ab A_ab * g^3) and w_k = sum_ij alpha_ij * relu(g_ij).
"""

from __future__ import annotations

import numpy as np

from daemon.explain.base import CAMMethod

_EPS = 1e-7


class GradCAMPlusPlus(CAMMethod):
    """Pixel-wise weighted positive gradients."""

    name = "gradcampp"

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """sum_ij alpha_ij relu(g_ij) per channel."""
        g2 = grads ** 2
        g3 = g2 * grads
        alpha = np.where(grads != 0, g2 / (2 * g2 + acts.sum(axis=(0, 1)) * g3 + _EPS), 0.0)
        return (alpha * np.maximum(grads, 0.0)).sum(axis=(0, 1))


METHOD = GradCAMPlusPlus()
