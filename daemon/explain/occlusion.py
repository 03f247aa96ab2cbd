"""Occlusion (Zeiler & Fergus, 2014) on the int8 captioner: how much each word's log-odds
(``daemon.explain.perturbation``) changes when a square patch of the frame is replaced by its mean colour.

``occlusion_steps`` patch positions per axis (11 x 11 = 121 frames by default) a stride
L / (steps - 1) apart; a patch is two strides wide (45 px on a 224 px frame) and the first
and last ones stand half outside the frame, so every pixel is hidden by exactly four
patches. A pixel's value is the sum of the changes of the patches that hide it. Equal
cover matters twice: a pixel near the border is not favoured (a mean over fewer patches
there pulled peaks to the border), and the map carries no pattern of the layout that a
randomized model would share (with patches inside the frame only, the interior, hidden
more often, always outranked the border). The map is the *size* of the change: hiding an
object can also raise a word's score (a large red square with its middle hidden is, to
this model, even more surely red), and either way the word depends on what was hidden.
One batch of perturbed frames through the int8 encoder scores every word at once.
"""

from __future__ import annotations

import functools

import numpy as np

from daemon.explain.perturbation import PerturbationMethod


def patch_spans(length: int, steps: int) -> list[slice]:
    """Patch extents along one axis: ``steps`` patches two strides wide, a stride length/(steps-1)
    apart, the first and last centred on the frame's edges (cut to the frame)."""
    stride = length / (steps - 1)
    starts = [-stride + k * stride for k in range(steps)]
    return [slice(max(0, int(round(s))), min(length, int(round(s + 2 * stride)))) for s in starts]


@functools.lru_cache(maxsize=4)
def patch_masks(size: tuple[int, int], steps: int) -> np.ndarray:
    """(steps^2, H, W) keep masks, row by row: 0 inside one patch, 1 elsewhere (cached, read-only)."""
    height, width = size
    masks = []
    for rows in patch_spans(height, steps):
        for cols in patch_spans(width, steps):
            keep = np.ones((height, width), np.float32)
            keep[rows, cols] = 0.0
            masks.append(keep)
    masks = np.stack(masks)
    masks.flags.writeable = False
    return masks


class Occlusion(PerturbationMethod):
    """Each pixel: the summed size of the changes of a word's int8 log-odds when the patches over it are hidden."""

    name = "occlusion"

    def keep(self, size, options) -> np.ndarray:
        """The ``options.occlusion_steps``^2 patches."""
        return patch_masks(tuple(size), options.occlusion_steps)

    def copies(self, image, fill, keep) -> np.ndarray:
        """The frame with one patch painted in the fill colour per mask (each mask hides one rectangle:
        painted by slicing, no blending and no boolean indexing of the whole batch)."""
        frames = np.repeat(np.round(image).astype(np.uint8)[None], len(keep), axis=0)
        colour = np.round(fill[0, 0]).astype(np.uint8)
        for frame, mask in zip(frames, keep):
            rows = np.flatnonzero(mask.min(axis=1) < 0.5)
            cols = np.flatnonzero(mask.min(axis=0) < 0.5)
            frame[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = colour
        return frames

    def combine(self, keep, scores, base) -> np.ndarray:
        """Per word and pixel: the sum of |score change| over the patches that hide the pixel."""
        hidden = 1.0 - keep.reshape(len(keep), -1)  # (M, HW)
        changes = np.abs(base[None, :] - scores)  # (M, K)
        return (changes.T @ hidden).reshape(len(base), *keep.shape[1:])


METHOD = Occlusion()
