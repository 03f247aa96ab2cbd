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


def _log_histogram(values: np.ndarray, top: float) -> np.ndarray:
    """Log of the share of ``values`` in each of HIST_BINS equal bins over [0, top) (the last bin takes the rest)."""
    bins = np.minimum((values.ravel() * (HIST_BINS / top)).astype(np.int64), HIST_BINS - 1)
    return np.log(np.bincount(bins, minlength=HIST_BINS) / bins.size + 1e-3)


def image_statistics(rgb: np.ndarray) -> np.ndarray:
    """Cheap statistics of an RGB uint8 frame (any size), float32: what generated scenes and photos differ in."""
    small = cv2.resize(rgb, (STATS_SIDE, STATS_SIDE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    saturation, value = hsv[..., 1], hsv[..., 2]
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    parts = [_log_histogram(saturation, 256), _log_histogram(value, 256)]
    for image in (grey, cv2.resize(grey, (STATS_SIDE // 2, STATS_SIDE // 2), interpolation=cv2.INTER_AREA)):
        gradient = np.hypot(cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1))
        parts.append(_log_histogram(np.log1p(gradient), 8.0))
    laplacian = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    parts.append(_log_histogram(np.log1p(laplacian), 8.0))
    flat = saturation.ravel()
    top_saturation = np.partition(flat, int(0.98 * (flat.size - 1)))[int(0.98 * (flat.size - 1))]
    noise = np.partition(laplacian.ravel(), laplacian.size // 2)[laplacian.size // 2]
    parts.append(np.array([np.log(np.mean(flat > SATURATED) + 1e-3), top_saturation / 255.0, np.log1p(noise)]))
    return np.concatenate(parts).astype(np.float32)


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
