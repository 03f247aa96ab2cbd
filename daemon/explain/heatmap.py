"""Heatmap maths, pure numpy + OpenCV (no TensorFlow), and a map's grey PNG in base64.

A method's raw map (any resolution, any sign convention already applied) becomes a 0..1
map at image size; its peak is the argmax after a light Gaussian smoothing, so a single
noisy gradient pixel does not decide where the explanation points. The picture drawn of
the maps is ``daemon.explain.picture``'s.
"""

from __future__ import annotations

import cv2
import numpy as np

from daemon.imaging import png_base64, png_from_base64


def normalise(raw: np.ndarray) -> np.ndarray:
    """Map to 0..1 (min -> 0, max -> 1); a flat map becomes 0, NaN and infinities 0."""
    m = np.nan_to_num(np.asarray(raw, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(m.min()), float(m.max())
    if not hi - lo > 1e-6 * max(abs(hi), abs(lo)):  # flat (up to float rounding)
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def upsample(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to ``size`` = (height, width): bilinear, clipped to the map's range."""
    m = np.asarray(raw, np.float32)
    if m.shape == tuple(size):
        return m
    out = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, m.min(), m.max())


def to_image_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A method's raw map as a 0..1 map at image size (upsampled, then normalised)."""
    return normalise(upsample(raw, size))


def peak(heatmap: np.ndarray, sigma: float | None = None) -> tuple[int, int] | None:
    """(x, y) of the map's maximum after Gaussian smoothing (default sigma: side / 40); None when
    the map is all zero (nothing to point at, e.g. a word whose probability is 1 in float32)."""
    m = np.asarray(heatmap, np.float32)
    if not np.any(m > 0):
        return None
    sigma = max(m.shape) / 40 if sigma is None else sigma
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma)
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(x), int(y)


def to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """A 0..1 map as 8-bit grey levels."""
    return np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8)


def heatmap_png_base64(heatmap: np.ndarray) -> str:
    """Base64 text of the 8-bit grey PNG of a 0..1 map (what the MQTT response carries)."""
    return png_base64(to_uint8(heatmap))


def heatmap_from_base64(text: str) -> np.ndarray:
    """The 0..1 map of a response's base64 PNG heatmap."""
    return png_from_base64(text).astype(np.float32) / 255.0
