"""The concept bank of a bundle (``concepts.npz``): its file format and ``ConceptBank``.

``explaincam concepts`` (``convert/concepts.py``) discovers the concepts offline and saves a
bank; ACE (``daemon.explain.ace``) loads it to explain frames. The bank holds, for K concepts
in the bottleneck's pooled activation space of C channels: a k-means centre and a "too far"
radius, a unit CAV (concept activation vector), per frequent caption word the bank-wide TCAV
score with its t-test against random CAVs and the word's lift given the concept, a readable
label and exemplar thumbnails with their provenance, and the SLIC settings it was cut with.
``ConceptBank.save`` and ``ConceptBank.load`` are the format: one array per field, no
pickled objects. ``embed`` and ``word_gradients`` reach the bottleneck through a backend.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.explain.segments import COMPACTNESS, FILL_VALUE, MIN_AREA, N_SEGMENTS, SIGMA, segment
from daemon.files import write_atomically

EXEMPLARS_SHOWN = 8  # thumbnails in a response's exemplar strip
BACKGROUND = "background"


@dataclass
class ConceptBank:
    """The concepts of a bundle (``concepts.npz``): where they are and what they mean for words.

    K concepts, C bottleneck channels, W frequent words, n exemplars per concept.
    """

    layer: str  # bottleneck layer of the encoder (its backbone or head)
    centres: np.ndarray  # (K, C) k-means centres of pooled patch activations
    radius: np.ndarray  # (K,) a segment farther than this from its nearest centre gets no concept
    cavs: np.ndarray  # (K, C) unit CAVs (mean over the random counterparts, renormalised)
    words: list[str]  # frequent caption words the TCAV table covers
    tcav: np.ndarray  # (K, W) TCAV score: share of the word's images with a positive derivative
    tcav_p: np.ndarray  # (K, W) two-sided t-test p-value against random-vs-random CAVs
    significant: np.ndarray  # (K, W) bool
    association: np.ndarray  # (K, W) lift: P(word in caption | concept in image) / P(word in caption)
    labels: list[str]  # (K,) readable label (majority provenance when built from scenes)
    thumbnails: np.ndarray  # (K, n, THUMB, THUMB, 3) uint8 exemplar patches, nearest first
    exemplar_colour: np.ndarray  # (K, n) colour of the object each exemplar mostly overlaps, or "background"/""
    exemplar_shape: np.ndarray  # (K, n) shape of that object, or "background"/""
    image_count: np.ndarray  # (K,) discovery images with a member of the concept's cluster
    n_segments: tuple[int, ...] = N_SEGMENTS
    compactness: float = COMPACTNESS
    sigma: float = SIGMA
    min_area: float = MIN_AREA
    fill: float = FILL_VALUE
    random_tcav: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (W,) mean TCAV of random CAVs
    source: str = ""

    def __len__(self) -> int:
        """Number of concepts."""
        return len(self.centres)

    @classmethod
    def load(cls, path: str | Path) -> "ConceptBank":
        """Read a ``concepts.npz`` file."""
        with np.load(path, allow_pickle=False) as d:
            return cls(layer=str(d["layer"]), centres=d["centres"], radius=d["radius"], cavs=d["cavs"],
                       words=[str(w) for w in d["words"]], tcav=d["tcav"], tcav_p=d["tcav_p"],
                       significant=d["significant"], association=d["association"],
                       labels=[str(s) for s in d["labels"]],
                       thumbnails=d["thumbnails"], exemplar_colour=d["exemplar_colour"],
                       exemplar_shape=d["exemplar_shape"], image_count=d["image_count"],
                       n_segments=tuple(int(n) for n in d["n_segments"]), compactness=float(d["compactness"]),
                       sigma=float(d["sigma"]), min_area=float(d["min_area"]), fill=float(d["fill"]),
                       random_tcav=d["random_tcav"], source=str(d["source"]))

    def save(self, path: str | Path) -> None:
        """Write the bank as a compressed ``concepts.npz`` (no pickled objects)."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, layer=np.array(self.layer), centres=self.centres.astype(np.float32),
            radius=self.radius.astype(np.float32), cavs=self.cavs.astype(np.float32),
            words=np.array(self.words, dtype=str), tcav=self.tcav.astype(np.float32),
            tcav_p=self.tcav_p.astype(np.float32), significant=self.significant.astype(bool),
            association=self.association.astype(np.float32),
            labels=np.array(self.labels, dtype=str), thumbnails=self.thumbnails.astype(np.uint8),
            exemplar_colour=self.exemplar_colour.astype(str), exemplar_shape=self.exemplar_shape.astype(str),
            image_count=self.image_count.astype(np.int32), n_segments=np.array(self.n_segments, np.int32),
            compactness=np.array(self.compactness), sigma=np.array(self.sigma), min_area=np.array(self.min_area),
            fill=np.array(self.fill), random_tcav=self.random_tcav.astype(np.float32), source=np.array(self.source))
        write_atomically(path, buffer.getvalue())

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Segments of an RGB uint8 image with the bank's SLIC settings."""
        return segment(image, self.n_segments, self.compactness, self.sigma, self.min_area)

    def assign(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest concept or -1 when beyond its radius, distance / radius) of each embedding."""
        if len(self) == 0 or len(embeddings) == 0:
            return np.full(len(embeddings), -1), np.full(len(embeddings), np.inf)
        d = np.linalg.norm(embeddings[:, None, :] - self.centres[None, :, :], axis=-1)
        nearest = d.argmin(axis=1)
        ratio = d[np.arange(len(d)), nearest] / np.maximum(self.radius[nearest], 1e-12)
        return np.where(ratio <= 1.0, nearest, -1), ratio

    def exemplar_strip(self, k: int, count: int = EXEMPLARS_SHOWN) -> np.ndarray:
        """The first ``count`` exemplar thumbnails of concept k side by side (RGB uint8)."""
        return np.hstack(list(self.thumbnails[k, :count]))

    def word_purity(self) -> dict[str, tuple[float, int]]:
        """Per object colour or shape seen in the provenance: (best share of a concept's exemplars, that concept)."""
        best: dict[str, tuple[float, int]] = {}
        for kind in (self.exemplar_colour, self.exemplar_shape):
            for k in range(len(self)):
                values = list(kind[k])
                for value, n in Counter(values).items():
                    if value in ("", BACKGROUND):
                        continue
                    share = n / len(values)
                    if share > best.get(value, (-1.0, -1))[0]:
                        best[value] = (share, k)
        return best


def provenance_label(colours, shapes) -> str:
    """A concept's label from its exemplars' provenance: the majority kind of object, or "background"."""
    whole = Counter(BACKGROUND if c == BACKGROUND else f"{c} {s}" for c, s in zip(colours, shapes) if c)
    if not whole:
        return ""
    n = sum(whole.values())
    top, count = whole.most_common(1)[0]
    if count > n / 2:
        return top
    for values, other in ((colours, "shapes"), (shapes, "colours")):
        name, count = Counter(values).most_common(1)[0]
        if name != BACKGROUND and count > n / 2:
            return f"{name} (mixed {other})"
    return "mixed"


def embed(backend, patches: np.ndarray) -> np.ndarray:
    """Spatially pooled bottleneck activations (N, C) of 0..255 RGB patches, from a backend."""
    if len(patches) == 0:
        return np.zeros((0, 0), np.float32)
    return backend.bottleneck_activations(np.asarray(patches, np.float32)).mean(axis=(1, 2))


def word_gradients(backend, images: np.ndarray, teacher_rows: list[list[int]], positions: list[int]) -> np.ndarray:
    """Gradient of each row's teacher-forced word log-probability w.r.t. its bottleneck activations.

    Row i is image i under teacher tokens ``teacher_rows[i]`` (``[start, w0, ...]``; rows of
    different lengths are padded after their end, which the causal decoder ignores) and the
    word at ``positions[i]``. Returns (N, h, w, C).
    """
    length = max(len(t) for t in teacher_rows)
    teacher = np.zeros((len(teacher_rows), length), np.int32)
    for i, t in enumerate(teacher_rows):
        teacher[i, :len(t)] = t
    weights = np.zeros((len(teacher_rows), length - 1), np.float32)
    weights[np.arange(len(positions)), positions] = 1.0
    return backend.bottleneck_gradients(np.asarray(images, np.float32), teacher, weights)[1]
