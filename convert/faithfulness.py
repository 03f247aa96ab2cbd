"""Faithfulness metrics of explanation heatmaps, pure numpy (the model enters as a callback).

- Pointing game (Zhang et al., 2016): a hit when the map's peak lies in the mask of the
  object the word names.
- Deletion / insertion (Petsiuk et al., 2018, RISE): pixels are removed (replaced by a
  substrate) or inserted (into a substrate) in order of importance, the word's
  probability is tracked, and the area under that curve over the removed/inserted
  fraction 0..1 is the score. A faithful map gives a low deletion and a high insertion
  AUC; a random pixel order is the baseline.
- Spearman rank correlation, for Adebayo et al.'s model randomization test: the maps of
  the trained model against those of the model with its top layers re-initialised.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np


def pointing_hit(peak_xy: tuple[int, int] | None, mask: np.ndarray) -> bool:
    """Whether the peak (x, y) lies inside the boolean mask; a map without a peak (all zero) misses."""
    if peak_xy is None:
        return False
    x, y = int(peak_xy[0]), int(peak_xy[1])
    return bool(0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x])


def importance_order(heatmap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices, most important first; ties (flat regions) in random order."""
    flat = np.asarray(heatmap, np.float64).ravel()
    jitter = rng.random(flat.size)
    return np.lexsort((jitter, -flat))


def random_order(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``size`` flat pixel indices: the baseline ordering."""
    return rng.permutation(size)


def mean_substrate(image: np.ndarray) -> np.ndarray:
    """The image's mean colour everywhere: what deleted pixels become."""
    return np.broadcast_to(image.reshape(-1, image.shape[-1]).mean(axis=0), image.shape).astype(np.float32)


def blurred_substrate(image: np.ndarray, sigma_fraction: float = 0.1) -> np.ndarray:
    """A strong Gaussian blur of the image (sigma = fraction of its side): where insertion starts."""
    sigma = sigma_fraction * max(image.shape[:2])
    return cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), sigma)


def perturbation_series(start: np.ndarray, finish: np.ndarray, order: np.ndarray, steps: int) -> np.ndarray:
    """``steps + 1`` images going from ``start`` to ``finish``: step k takes the first k/steps of ``order`` from finish."""
    h, w, c = start.shape
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(int)
    series = np.empty((steps + 1, h * w, c), np.float32)
    current = np.asarray(start, np.float32).reshape(h * w, c).copy()
    target = np.asarray(finish, np.float32).reshape(h * w, c)
    done = 0
    for k, count in enumerate(counts):
        idx = order[done:count]
        current[idx] = target[idx]
        done = count
        series[k] = current
    return series.reshape(steps + 1, h, w, c)


def auc(scores: np.ndarray) -> float:
    """Trapezoidal area under a curve sampled at equal steps over the fraction 0..1."""
    scores = np.asarray(scores, np.float64)
    if scores.size < 2:
        raise ValueError("a curve needs at least two points")
    return float((scores[:-1] + scores[1:]).sum() / (2 * (scores.size - 1)))


def deletion_curve(score: Callable[[np.ndarray], np.ndarray], image: np.ndarray, order: np.ndarray,
                   steps: int = 20, substrate: np.ndarray | None = None) -> np.ndarray:
    """Scores (steps + 1) as pixels are replaced by the substrate (default: mean colour) in ``order``."""
    substrate = mean_substrate(image) if substrate is None else substrate
    return np.asarray(score(perturbation_series(image, substrate, order, steps)), np.float64)


def insertion_curve(score: Callable[[np.ndarray], np.ndarray], image: np.ndarray, order: np.ndarray,
                    steps: int = 20, substrate: np.ndarray | None = None) -> np.ndarray:
    """Scores (steps + 1) as the image's pixels are put into the substrate (default: blurred) in ``order``."""
    substrate = blurred_substrate(image) if substrate is None else substrate
    return np.asarray(score(perturbation_series(substrate, image, order, steps)), np.float64)


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the values, ties sharing their average rank."""
    values = np.asarray(values, np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0.0 when either is constant: no shared ranking)."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise ValueError(f"maps differ in size: {ra.size} vs {rb.size}")
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps of one size (1.0 when both are constant and equal, else 0.0 for a constant one)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size}")
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    if denominator > 0:
        return float((a * b).sum() / denominator)
    return 1.0 if np.array_equal(a, b) else 0.0
