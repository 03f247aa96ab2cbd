"""ACE's image pieces: multi-resolution SLIC superpixels, the patches made of them, filled regions.

The settings are ACE's (Ghorbani et al., 2019); the concept bank (``daemon.explain.concept_bank``)
records the ones it was built with, and the per-frame explanation (``daemon.explain.ace``)
cuts frames the same way. numpy and OpenCV only (the SLIC superpixels: ``daemon.explain.superpixels``).
"""

from __future__ import annotations

import cv2
import numpy as np

from daemon.explain.superpixels import slic_labels

# ACE's settings (tensorflow/tcav ace.py): SLIC with compactness 20 and sigma 1, segments
# under 0.1% of the image dropped, a segment overlapping an already kept one of a coarser
# resolution with Jaccard > 0.5 dropped, and the outside of a patch padded with the "average
# image value" 117. ACE's resolutions are 15, 50 and 80 segments; the default here keeps 15
# and 50: on the camera's scenes the 80 level yields no whole object (none of its object
# segments has IoU > 0.7 with its object), only fragments and background cells, half of all
# patches, and fragments blur the shape concepts. ``explaincam concepts --segments 15 50 80``
# gives ACE's three levels; the bank records which were used.
N_SEGMENTS = (15, 50)
COMPACTNESS = 20.0
SIGMA = 1.0
MIN_AREA = 0.001
DEDUP_JACCARD = 0.5
FILL_VALUE = 117.0
MARGIN = 0.15  # share of a segment's larger side added around it in its patch (see extract_patch)
THUMB = 32  # side of a stored exemplar thumbnail


def segment(image: np.ndarray, n_segments=N_SEGMENTS, compactness: float = COMPACTNESS,
            sigma: float = SIGMA, min_area: float = MIN_AREA) -> np.ndarray:
    """Multi-resolution SLIC segments of an RGB uint8 image as boolean masks (S, H, W).

    Coarse resolutions come first; a segment of a finer resolution whose Jaccard index
    with a kept segment of a coarser one exceeds 0.5 is a duplicate and is dropped.
    """
    h, w = image.shape[:2]
    kept_levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (labels, areas, kept ids)
    masks = []
    for n in n_segments:
        labels = slic_labels(image, int(n), float(compactness), float(sigma))
        count = int(labels.max()) + 1
        areas = np.bincount(labels.ravel(), minlength=count)
        keep = areas >= min_area * h * w
        for prev_labels, prev_areas, prev_kept in kept_levels:
            m = int(prev_labels.max()) + 1
            inter = np.bincount(labels.ravel() * m + prev_labels.ravel(), minlength=count * m).reshape(count, m)
            jaccard = inter / (areas[:, None] + prev_areas[None, :] - inter)
            keep &= ~(jaccard[:, prev_kept] > DEDUP_JACCARD).any(axis=1)
        ids = np.flatnonzero(keep)
        kept_levels.append((labels, areas, ids))
        masks.extend(labels == i for i in ids)
    return np.array(masks, bool).reshape(-1, h, w)


def extract_patch(image: np.ndarray, mask: np.ndarray, size: int, fill: float = FILL_VALUE,
                  margin: float = MARGIN) -> np.ndarray:
    """ACE patch of one segment (float32 0..255): the segment on the fill value, in a square box
    around its bounding box widened by ``margin`` on each side, resized to ``size``.

    ACE resizes the bare bounding box, which stretches every segment to fill the patch: a
    square object and a fragment of a circle then look alike. The square, slightly wider box
    keeps a segment's outline, the cue that tells shapes apart.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(round(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    top, left = (y0 + y1 - side) // 2, (x0 + x1 - side) // 2
    canvas = np.full((side, side, 3), fill, np.float32)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, mask.shape[0]), min(left + side, mask.shape[1])
    box = (slice(sy0, sy1), slice(sx0, sx1))
    canvas[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = np.where(
        mask[box][..., None], image[box].astype(np.float32), np.float32(fill))
    return np.clip(cv2.resize(canvas, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255)


def fill_regions(image: np.ndarray, mask: np.ndarray, fill: float = FILL_VALUE) -> np.ndarray:
    """The image (float32) with the masked pixels set to the fill value."""
    return np.where(mask[..., None], np.float32(fill), image.astype(np.float32))


def thumbnail(patch: np.ndarray, size: int = THUMB) -> np.ndarray:
    """A patch as a small uint8 RGB thumbnail."""
    return np.round(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)).clip(0, 255).astype(np.uint8)


def coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Share of each cell of an (h, w) grid that a full-size mask covers."""
    return cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)


def random_area(segments: np.ndarray, area: int, rng: np.random.Generator) -> np.ndarray:
    """Union of segments, visited in random order, each kept when it brings the area closer to ``area`` pixels."""
    union = np.zeros(segments.shape[1:], bool)
    size = 0
    for i in rng.permutation(len(segments)):
        grown = union | segments[i]
        grown_size = int(grown.sum())
        if abs(grown_size - area) < abs(size - area):
            union, size = grown, grown_size
    return union
