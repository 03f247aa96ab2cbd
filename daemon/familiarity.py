"""How familiar a frame is to the model: a distance from the statistics of its calibration frames.

A captioner trained on one kind of picture describes anything in its own words, and
confidently: a child on a rope net becomes "three red crosses". To say when a frame is
unlike everything the model was made for, the converter stores statistics of a *frame
descriptor* on its calibration frames in the bundle (``feature_stats.npz``), and the
capture loop measures each frame's Mahalanobis distance from them.

The descriptor is the int8 encoder's (dequantized) features beside cheap image
statistics of the frame (histograms of saturation, brightness, gradient magnitude at two
scales and the Laplacian, the share of strongly coloured pixels and the noise level).
The encoder's features alone do not separate: an encoder trained on generated shapes
maps real photos into the middle of its shape codes (whitened and nearest-neighbour
distances on them flag few real photos; README has the figures); the image statistics do.

Distances are measured after PCA whitening of the standardised descriptor, with a
variance floor so that directions the calibration frames never varied in do not turn
quantisation noise into alarms. The threshold is the 99.7th percentile of the distances of
calibration frames held back from the fit; *familiarity* is the share of those held-back
frames that are at least as far away (1.0: closer than all of them, 0.0: farther than all).

Pure numpy and OpenCV: the capture process imports it, never TensorFlow.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FEATURE_STATS_FILE = "feature_stats.npz"
STATS_SIDE = 64  # image statistics are taken on a 64x64 copy of the frame
HIST_BINS = 8
SATURATED = 120  # HSV saturation (0-255) counted as strongly coloured
VARIANCE_FLOOR = 0.01  # in units of the standardised descriptor
THRESHOLD_PERCENTILE = 99.7  # of the held-back calibration frames' distances
IMAGE_STATISTICS_DIM = 5 * HIST_BINS + 3  # the length of image_statistics()
FIT_SHARE = 0.75  # the rest of the calibration frames set the threshold
MIN_FRAMES = 40  # fewer calibration frames give no usable threshold
REJUDGE_S = 1.0  # the capture loop judges a frame whose caption did not change at most this often


def _log_shares(bins: list[np.ndarray]) -> np.ndarray:
    """Log of the share of each of HIST_BINS bins in each array of bin numbers, one after the other."""
    counts = np.concatenate([np.bincount(b, minlength=HIST_BINS) for b in bins])
    sizes = np.repeat([b.size for b in bins], HIST_BINS)
    return np.log(counts / sizes + 1e-3)


def _bins(values: np.ndarray, top: float) -> np.ndarray:
    """Bin number of each value among HIST_BINS equal bins over [0, top) (the last bin takes the rest)."""
    return np.minimum((values.ravel() * (HIST_BINS / top)).astype(np.int64), HIST_BINS - 1)


def _order_statistic(counts: np.ndarray, rank: int) -> int:
    """The value at ``rank`` (0-based) among sorted whole numbers given as a count per value."""
    return int(np.searchsorted(np.cumsum(counts), rank, side="right"))


def shrink_for_statistics(rgb: np.ndarray) -> np.ndarray:
    """The frame at STATS_SIDE x STATS_SIDE by area averaging, uint8.

    OpenCV's area filter runs faster on float32 than on uint8 (92 against 146 µs from 224
    px) and, rounded, gives the same pixels.
    """
    small = cv2.resize(rgb.astype(np.float32), (STATS_SIDE, STATS_SIDE), interpolation=cv2.INTER_AREA)
    return cv2.convertScaleAbs(small)


def image_statistics(rgb: np.ndarray) -> np.ndarray:
    """Cheap statistics of an RGB uint8 frame (any size), float32: what generated scenes and photos differ in.

    Log-histograms of saturation, brightness, gradient magnitude at two scales and the
    Laplacian, then the share of strongly coloured pixels, the 98th percentile of saturation
    and the median Laplacian (the noise level), all on a STATS_SIDE copy of the frame.
    """
    small = shrink_for_statistics(rgb)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    saturation, value = hsv[..., 1].ravel(), hsv[..., 2].ravel()
    grey_levels = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    grey = grey_levels.astype(np.float32)
    bins = [saturation >> 5, value >> 5]  # 256 / HIST_BINS = 32 levels a bin
    for image in (grey, cv2.resize(grey, (STATS_SIDE // 2, STATS_SIDE // 2), interpolation=cv2.INTER_AREA)):
        gradient = cv2.magnitude(cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1))
        bins.append(_bins(np.log1p(gradient), 8.0))
    # the Laplacian of whole grey levels is a whole number: its median is read off counts
    laplacian = np.abs(cv2.Laplacian(grey_levels, cv2.CV_16S)).ravel()
    bins.append(_bins(np.log1p(laplacian.astype(np.float32)), 8.0))
    saturation_counts = np.bincount(saturation, minlength=256)
    top_saturation = _order_statistic(saturation_counts, int(0.98 * (saturation.size - 1)))
    noise = _order_statistic(np.bincount(laplacian), laplacian.size // 2)
    strongly_coloured = saturation_counts[SATURATED + 1:].sum() / saturation.size
    tail = [np.log(strongly_coloured + 1e-3), top_saturation / 255.0, np.log1p(noise)]
    return np.concatenate([_log_shares(bins), tail]).astype(np.float32)


def frame_descriptor(rgb: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The vector the statistics are about: encoder features (dequantized) and the frame's image statistics."""
    return np.concatenate([np.asarray(features, np.float32).ravel(), image_statistics(rgb)])


@dataclass(frozen=True)
class Familiarity:
    """One frame's verdict: ``familiarity`` in [0, 1] and whether it is beyond the threshold."""

    distance: float
    familiarity: float
    out_of_distribution: bool

    def to_json(self) -> dict:
        """The fields published with the caption."""
        return {"familiarity": round(self.familiarity, 3), "out_of_distribution": self.out_of_distribution}


@dataclass(frozen=True)
class FeatureStats:
    """Mean, scale, whitening and threshold of the frame descriptor on calibration frames."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # (k, D) principal directions of the standardised descriptor
    variances: np.ndarray  # (k,) their variances, floored
    reference: np.ndarray  # sorted distances of the held-back calibration frames
    threshold: float

    @classmethod
    def fit(cls, descriptors: np.ndarray, fit_share: float = FIT_SHARE, percentile: float = THRESHOLD_PERCENTILE,
            variance_floor: float = VARIANCE_FLOOR) -> "FeatureStats":
        """Fit on the first ``fit_share`` of the descriptors; the rest set the threshold and the familiarity scale."""
        descriptors = np.asarray(descriptors, np.float64)
        n_fit = int(len(descriptors) * fit_share)
        if len(descriptors) < MIN_FRAMES or n_fit < 2 or n_fit == len(descriptors):
            raise ValueError(f"need at least {MIN_FRAMES} calibration frames for feature statistics, "
                             f"got {len(descriptors)}")
        fit, held_back = descriptors[:n_fit], descriptors[n_fit:]
        mean = fit.mean(0)
        scale = fit.std(0) + 1e-3
        _, singular, components = np.linalg.svd((fit - mean) / scale, full_matrices=False)
        variances = np.maximum(singular ** 2 / (n_fit - 1), variance_floor)
        stats = cls(mean.astype(np.float32), scale.astype(np.float32), components.astype(np.float32),
                    variances.astype(np.float32), np.zeros(0, np.float32), 0.0)
        reference = np.sort(stats.distances(held_back)).astype(np.float32)
        return cls(stats.mean, stats.scale, stats.components, stats.variances, reference,
                   float(np.percentile(reference, percentile)))

    def distances(self, descriptors: np.ndarray) -> np.ndarray:
        """Whitened distance of each row of ``descriptors`` (N, D) from the calibration mean."""
        standardised = (np.atleast_2d(descriptors) - self.mean) / self.scale
        projected = standardised @ self.components.T
        # what the components do not span counts at the floor variance
        residual = np.maximum((standardised ** 2).sum(1) - (projected ** 2).sum(1), 0.0)
        return np.sqrt((projected ** 2 / self.variances).sum(1) + residual / self.variances.min())

    def judge(self, descriptor: np.ndarray) -> Familiarity:
        """Distance, familiarity and the out-of-distribution flag of one frame descriptor."""
        distance = float(self.distances(descriptor)[0])
        farther = len(self.reference) - np.searchsorted(self.reference, distance, side="left")
        return Familiarity(distance, float(farther / len(self.reference)), distance > self.threshold)

    def to_bytes(self) -> bytes:
        """The ``feature_stats.npz`` file."""
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, scale=self.scale, components=self.components, variances=self.variances,
                 reference=self.reference, threshold=np.float32(self.threshold))
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Read a ``feature_stats.npz``; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                stats = cls(data["mean"], data["scale"], data["components"], data["variances"],
                            data["reference"], float(data["threshold"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{Path(path).name} is not a feature statistics file: {exc}") from None
        dim = stats.mean.shape[0]
        if stats.scale.shape != (dim,) or stats.components.shape[1:] != (dim,) or \
                stats.variances.shape != stats.components.shape[:1] or stats.reference.size == 0:
            raise ValueError(f"{Path(path).name}: arrays of inconsistent shapes")
        return stats


class CaptionFamiliarity:
    """Familiarity as a stream of frames needs it: judged again when the caption changes, otherwise at most
    once every ``rejudge_s`` seconds; in between a frame carries the last verdict for its caption.

    A camera shows one scene, with one caption, for many frames, and the check costs about half
    the int8 encoder. ``rejudge_s`` 0 judges every frame (independent images).
    """

    def __init__(self, stats: FeatureStats, rejudge_s: float = 0.0):
        self.stats, self.rejudge_s = stats, rejudge_s
        self._last: tuple[str, float, Familiarity] | None = None  # (caption, when judged, verdict)

    def judge(self, caption: str, rgb: np.ndarray, features: np.ndarray) -> tuple[Familiarity, bool]:
        """The verdict for a frame with ``caption``, and whether it was judged now (False: reused)."""
        now = time.monotonic()
        if self._last is not None and self._last[0] == caption and now - self._last[1] < self.rejudge_s:
            return self._last[2], False
        verdict = self.stats.judge(frame_descriptor(rgb, features))
        self._last = (caption, now, verdict)
        return verdict, True
