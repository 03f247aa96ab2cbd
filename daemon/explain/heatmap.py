"""Heatmap maths and drawing, pure numpy + OpenCV (no TensorFlow).

A method's raw map (any resolution, any sign convention already applied) becomes a 0..1
map at image size; its peak is the argmax after a light Gaussian smoothing, so a single
noisy gradient pixel does not decide where the explanation points. The grid drawn here is
the picture of one explanation: per word, the frame and one overlay per method.
"""

from __future__ import annotations

import cv2
import numpy as np

from daemon.imaging import png_base64, png_from_base64

TILE = 192  # side of one grid panel in pixels
_LABEL_HEIGHT = 22


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


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8 rendering of a 0..1 map with the JET colour map."""
    return cv2.cvtColor(cv2.applyColorMap(to_uint8(heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5,
            peak_xy: tuple[int, int] | None = None) -> np.ndarray:
    """The map's colours blended over an RGB uint8 image (map resized to it), peak marked."""
    h, w = image.shape[:2]
    colours = colourise(upsample(heatmap, (h, w)))
    out = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    if peak_xy is not None:
        cv2.drawMarker(out, tuple(int(v) for v in peak_xy), (255, 255, 255), cv2.MARKER_CROSS, max(8, w // 16), 2)
    return out


def labelled(panel: np.ndarray, label: str, tile: int) -> np.ndarray:
    """A panel resized to ``tile`` with a text strip above it."""
    panel = cv2.resize(panel, (tile, tile), interpolation=cv2.INTER_AREA)
    strip = np.full((_LABEL_HEIGHT, tile, 3), 32, np.uint8)
    cv2.putText(strip, label[:28], (4, _LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def grid(image: np.ndarray | None, rows: list[tuple[str, list[tuple[str, np.ndarray, tuple[int, int] | None]]]],
         tile: int = TILE) -> np.ndarray:
    """The explanation picture: one row per word, the frame then one overlay per method.

    ``rows`` is ``[(word label, [(method, 0..1 map, peak or None), ...]), ...]``. Without
    an image (a client that only has the heatmaps) the maps are drawn in colour alone.
    """
    if not rows:
        rows = [("(no words)", [])]
    columns = max(len(panels) for _, panels in rows) + 1
    blank = np.zeros((tile + _LABEL_HEIGHT, tile, 3), np.uint8)
    lines = []
    for word, panels in rows:
        if image is not None:
            cells = [labelled(image, word, tile)]
        else:
            cells = [labelled(np.zeros((tile, tile, 3), np.uint8), word, tile)]
        for method, heatmap, peak_xy in panels:
            if image is not None:
                drawn = overlay(image, heatmap, peak_xy=peak_xy)
            else:
                drawn = colourise(heatmap)
            cells.append(labelled(drawn, f"{word.split(' ', 1)[-1]} / {method}", tile))
        cells += [blank] * (columns - len(cells))
        lines.append(np.hstack(cells))
    return np.vstack(lines)
