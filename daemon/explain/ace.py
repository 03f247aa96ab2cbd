"""ACE: concept-based explanations of a caption (Ghorbani et al., 2019), per frame.

A bundle's concept bank (``concepts.npz``, built offline by ``explaincam concepts``) holds
the concepts ACE discovered: a k-means centre and a "too far" radius in the bottleneck's
pooled activation space, a CAV (concept activation vector), and per frequent caption word
the bank-wide TCAV score (with its t-test against random CAVs) and the word's lift given
the concept (how much likelier the word is in a caption when the concept is in the image).
Per frame, on request:

1. the frame is cut into multi-resolution SLIC superpixels (the bank's settings); each
   segment becomes a patch (the segment on ACE's "average image value", in a square box
   around it, resized to the encoder input) embedded at the bottleneck;
2. each segment goes to its nearest concept, or to none when farther than that concept's
   radius;
3. each concept present is scored for each explained word two ways: ``tcav``, the
   directional derivative of the word's teacher-forced log-probability along the concept's
   CAV applied at the bottleneck positions the concept's segments cover (summed, weighted
   by coverage), and ``removal_drop``, how much the word's log-probability falls when the
   concept's segments are filled with the fill value;
4. counterfactual: the concept with the largest removal drop summed over the explained
   words is filled in and the float model captions the frame again (greedy).

Per word the concepts are ranked by ``relevance`` (the word's lift given the concept, and
its neighbours' in the caption, see ``relevance``), then by ``tcav``; never by the removal
drop, so the removal test of the top concept (``ConceptExplainer.removal_wins``, reported
by ``explaincam evaluate --explanations`` as ``ace_removal_win_rate``) is not circular.
The directional derivative alone is a poor ranking here: the shipped captioner is so sure
of its words (log-probabilities around -1e-5) that their gradients are tiny and mostly
follow the runner-up word; on 60 unseen scenes it won the removal test for 67% of object
words, the lift for 90%, lift with context 93%.

ACE is a registered method (``METHOD``): it answers the response's ``ace`` block and the
ACE row of the explanation picture. Everything here is numpy and OpenCV (SLIC from its
contrib module, see ``daemon.explain.superpixels``); the float model is reached through the
explainer's backend (``bottleneck_activations``, ``bottleneck_gradients``, ``logits``),
whichever runs it.
"""

from __future__ import annotations

import base64
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from daemon.explain.base import Method, MethodResult
from daemon.explain.heatmap import TILE
from daemon.explain.targets import teacher_tokens
from daemon.files import write_atomically

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
EXEMPLARS_SHOWN = 8  # thumbnails in a response's exemplar strip
BACKGROUND = "background"

# 20 distinct colours for the concept map; concept k gets PALETTE[k % 20].
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], np.uint8)


# ---------------------------------------------------------------- segments and patches

def segment(image: np.ndarray, n_segments=N_SEGMENTS, compactness: float = COMPACTNESS,
            sigma: float = SIGMA, min_area: float = MIN_AREA) -> np.ndarray:
    """Multi-resolution SLIC segments of an RGB uint8 image as boolean masks (S, H, W).

    Coarse resolutions come first; a segment of a finer resolution whose Jaccard index
    with a kept segment of a coarser one exceeds 0.5 is a duplicate and is dropped.
    """
    from daemon.explain.superpixels import slic_labels  # OpenCV contrib's SLIC

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


# ---------------------------------------------------------------------- the concept bank

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


# ------------------------------------------------------------------------ drawing

def concept_map(shape: tuple[int, int], masks: np.ndarray, assigned: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """(H, W) concept id per pixel (-1: none): the assigned segment nearest its concept wins."""
    labels = np.full(shape, -1, np.int32)
    best = np.full(shape, np.inf)
    for mask, k, r in zip(masks, assigned, ratio):
        if k < 0:
            continue
        better = mask & (r < best)
        labels[better], best[better] = k, r
    return labels


def draw_concept_map(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8: each concept's pixels tinted with its palette colour, boundaries drawn, the rest greyed."""
    image = np.asarray(image, np.uint8)
    colours = PALETTE[np.maximum(labels, 0) % len(PALETTE)]
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    out = np.where((labels >= 0)[..., None],
                   (alpha * colours + (1 - alpha) * image).astype(np.uint8), (grey * 0.5).astype(np.uint8))
    edges = cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = 255
    return out


def png_base64(image: np.ndarray) -> str:
    """Base64 text of the PNG of an RGB uint8 image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


# ------------------------------------------------------------- per-frame explanation

@dataclass
class ConceptExplanation:
    """One frame's ACE result: segments and their concepts, per-word scores, counterfactual."""

    image: np.ndarray  # the frame at model input size, uint8 RGB
    masks: np.ndarray  # (S, H, W) segments
    assigned: np.ndarray  # (S,) concept of each segment, -1 none
    labels: np.ndarray  # (H, W) concept map
    present: list[int]  # concepts with at least one segment, by id
    indices: list[int]  # explained word indices
    words: list[str]
    association: np.ndarray  # (len(indices), len(present)) the bank's lift of the word for each concept
    relevance: np.ndarray  # (len(indices), len(present)) ranking key, see ``relevance``
    tcav: np.ndarray  # (len(indices), len(present)) directional derivatives
    removal_drop: np.ndarray  # (len(indices), len(present)) log-prob drops
    removed: list[int] = field(default_factory=list)
    counterfactual_caption: str = ""
    counterfactual_image: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def region(self, k: int) -> np.ndarray:
        """Union of the segments assigned to concept k."""
        return self.masks[self.assigned == k].any(axis=0)

    def ranking(self, row: int) -> list[int]:
        """Positions in ``present`` of the concepts, most important first for word row ``row``:
        by relevance, then by directional derivative (never by removal drop)."""
        return [int(j) for j in np.lexsort((-self.tcav[row], -self.relevance[row]))]

    def map_image(self) -> np.ndarray:
        """The concept map drawn over the frame (RGB uint8)."""
        return draw_concept_map(self.image, self.labels)

    def to_json(self, bank: ConceptBank) -> dict:
        """The response's ``ace`` block."""
        words = []
        for row, (index, word) in enumerate(zip(self.indices, self.words)):
            w = bank.words.index(word) if word in bank.words else None
            ranking = []
            for j in self.ranking(row):
                k = self.present[j]
                entry = {"concept": k, "relevance": round(float(self.relevance[row, j]), 3),
                         "association": round(float(self.association[row, j]), 3),
                         "tcav": float(f"{self.tcav[row, j]:.4g}"),
                         "removal_drop": round(float(self.removal_drop[row, j]), 4)}
                if w is not None:
                    entry["tcav_score"] = round(float(bank.tcav[k, w]), 3)
                    entry["significant"] = bool(bank.significant[k, w])
                ranking.append(entry)
            words.append({"index": index, "word": word, "ranking": ranking})
        concepts = [{"id": k, "label": bank.labels[k], "colour": PALETTE[k % len(PALETTE)].tolist(),
                     "area": round(float(self.region(k).mean()), 4),
                     "exemplars": png_base64(bank.exemplar_strip(k))} for k in self.present]
        return {"concept_map": png_base64(self.map_image()), "concepts": concepts, "words": words,
                "counterfactual": {"removed_concepts": list(self.removed), "caption": self.counterfactual_caption}}


class ConceptExplainer:
    """ACE on frames with an ``Explainer`` (its backend, vocabulary and options) and a concept bank."""

    def __init__(self, explainer, bank: ConceptBank):
        backend = explainer.backend
        if bank.layer != backend.bottleneck_layer:
            raise ValueError(f"the concept bank was built at layer {bank.layer!r}, but the {backend.name} backend's "
                             f"bottleneck is {backend.bottleneck_layer!r}; rebuild it with `explaincam concepts`")
        self.explainer, self.bank = explainer, bank

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Spatially pooled bottleneck activations (N, C) of a batch of patches."""
        return embed(self.explainer.backend, patches)

    def explain(self, image: np.ndarray, tokens: list[int], indices: list[int] | None = None,
                counterfactual: bool = True) -> ConceptExplanation:
        """ACE for the words ``indices`` (default all) of the caption ``tokens`` of an RGB frame."""
        started = time.perf_counter()
        ex, bank = self.explainer, self.bank
        x = ex.prepare(image)
        u8 = x.astype(np.uint8)
        indices = list(range(len(tokens))) if indices is None else [int(i) for i in indices]
        words = [ex.vocab.words[tokens[i] - 1] for i in indices]
        masks = bank.segment(u8)
        patches = np.stack([extract_patch(x, m, ex.size, bank.fill) for m in masks])
        assigned, ratio = bank.assign(self.embed(patches))
        present = sorted({int(k) for k in assigned if k >= 0})
        t_assign = time.perf_counter()

        regions = [masks[assigned == k].any(axis=0) for k in present]
        tcav = np.zeros((len(indices), len(present)), np.float32)
        if indices and present:
            grads = word_gradients(ex.backend, np.repeat(x[None], len(indices), axis=0),
                                   [teacher_tokens(ex.vocab.start, tokens)] * len(indices), indices)
            cover = np.stack([coverage(r, grads.shape[1:3]) for r in regions])  # (P, h, w)
            along = grads @ bank.cavs[present].T  # (N, h, w, P): derivative along each CAV per position
            tcav = np.einsum("nhwp,phw->np", along, cover)
        t_tcav = time.perf_counter()

        drop = np.zeros((len(indices), len(present)), np.float32)
        if present:
            batch = np.stack([x] + [fill_regions(x, r, bank.fill) for r in regions])
            logp = ex.word_logprobs(batch, tokens)[:, indices]  # (1 + P, len(indices))
            drop = (logp[0][None, :] - logp[1:]).T
        caption = [ex.vocab.words[t - 1] for t in tokens]
        lift = np.array([[bank.association[k, bank.words.index(w)] if w in bank.words else 1.0 for k in present]
                         for w in caption], np.float32).reshape(len(caption), len(present))
        result = ConceptExplanation(u8, masks, assigned, concept_map(u8.shape[:2], masks, assigned, ratio),
                                    present, indices, words, lift[indices], relevance(lift, indices), tcav, drop)
        t_removal = time.perf_counter()

        if counterfactual and present:
            top = int(np.argmax(drop.sum(axis=0)))
            result.removed = [present[top]]
            result.counterfactual_image = fill_regions(x, regions[top], bank.fill).astype(np.uint8)
            result.counterfactual_caption = ex.vocab.decode(ex.float_caption(result.counterfactual_image, tokens))
        done = time.perf_counter()
        result.timings_ms = {"ace_assign_ms": round((t_assign - started) * 1e3, 1),
                             "ace_tcav_ms": round((t_tcav - t_assign) * 1e3, 1),
                             "ace_removal_ms": round((t_removal - t_tcav) * 1e3, 1),
                             "ace_counterfactual_ms": round((done - t_removal) * 1e3, 1)}
        return result

    def word_removal_wins(self, image: np.ndarray, tokens: list[int], indices: list[int], draws: int = 3,
                          seed: int = 0) -> list[bool]:
        """``removal_wins`` of the words ``indices`` of a frame's caption (no counterfactual)."""
        if not indices:
            return []
        result = self.explain(image, tokens, indices, counterfactual=False)
        return self.removal_wins(result, tokens, list(range(len(indices))), draws, seed)

    def removal_wins(self, result: ConceptExplanation, tokens: list[int], rows: list[int],
                     draws: int = 3, seed: int = 0) -> list[bool]:
        """For each word row: does filling its top concept (first in ``ranking``) drop the word's log-prob more
        than filling random segments of the same area (mean over ``draws``)? No concept: a loss.

        The random segments come from the frame's finest SLIC resolution (see ``random_area``).
        """
        ex, bank = self.explainer, self.bank
        rng = np.random.default_rng(seed)
        x = result.image.astype(np.float32)
        fine = segment(result.image, bank.n_segments[-1:], bank.compactness, bank.sigma, 0.0)
        images, plan = [x], []
        for row in rows:
            if not result.present:
                plan.append(None)
                continue
            region = result.region(result.present[result.ranking(row)[0]])
            images.append(fill_regions(x, region, bank.fill))
            for _ in range(draws):
                images.append(fill_regions(x, random_area(fine, int(region.sum()), rng), bank.fill))
            plan.append(len(images) - draws - 1)
        logp = ex.word_logprobs(np.stack(images), tokens)
        wins = []
        for row, at in zip(rows, plan):
            if at is None:
                wins.append(False)
                continue
            index = result.indices[row]
            concept_drop = logp[0, index] - logp[at, index]
            random_drop = float(np.mean(logp[0, index] - logp[at + 1:at + 1 + draws, index]))
            wins.append(bool(concept_drop > random_drop))
        return wins


def relevance(lift: np.ndarray, indices: list[int], context: float = 0.5) -> np.ndarray:
    """Ranking key of each concept for each explained word: log lift of the word plus ``context``
    times the log lift of each word next to it in the caption.

    ``lift`` is (caption words, concepts). The neighbours name the same thing ("red" beside
    "circle"), so of two circles the one of the right colour comes first. Measured on 60
    unseen scenes (166 object words): removing the top concept beat random segments for
    90% of words by lift alone, 93% with the neighbours.
    """
    logs = np.log(np.maximum(lift, 1e-6))
    key = logs[indices].copy()
    for row, t in enumerate(indices):
        for u in (t - 1, t + 1):
            if 0 <= u < len(logs):
                key[row] += context * logs[u]
    return key


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


# ------------------------------------------------------------------- drawing the answer

LABEL_SCALE = 0.45
LABEL_LINE_HEIGHT = 18


def label_lines(label: str, tile: int) -> list[str]:
    """``label`` broken into lines that fit a panel ``tile`` pixels wide (a single overlong word is cut)."""
    def fits(text: str) -> bool:
        return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)[0][0] <= tile - 8

    lines: list[str] = []
    for word in label.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            while not fits(word) and len(word) > 1:
                word = word[:-1]
            lines.append(word)
    return lines or [""]


def _labelled(panel: np.ndarray, label: str, tile: int, rows: int = 1) -> np.ndarray:
    """A panel resized to ``tile`` with the whole label, wrapped, in a strip of at least ``rows`` lines above it."""
    panel = cv2.resize(panel, (tile, tile), interpolation=cv2.INTER_AREA)
    lines = label_lines(label, tile)
    strip = np.full((LABEL_LINE_HEIGHT * max(rows, len(lines)) + 4, tile, 3), 32, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, LABEL_LINE_HEIGHT * (i + 1) - 3), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def legend(result: ConceptExplanation, bank: ConceptBank, tile: int) -> np.ndarray:
    """A tile listing each concept of the map with its colour and label."""
    panel = np.full((tile, tile, 3), 24, np.uint8)
    step = max(12, min(18, tile // max(len(result.present), 1)))
    for row, k in enumerate(result.present[:tile // step]):
        y = 4 + row * step
        cv2.rectangle(panel, (4, y), (4 + step - 4, y + step - 4), PALETTE[k % len(PALETTE)].tolist(), -1)
        cv2.putText(panel, f"c{k} {bank.labels[k]}"[:24], (step + 4, y + step - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def grid_row(result: ConceptExplanation, bank: ConceptBank, tile: int) -> np.ndarray:
    """The ACE row of the explanation picture: concept map, legend, counterfactual frame."""
    removed = ", ".join(f"c{k}" for k in result.removed) or "nothing"
    after = result.image if result.counterfactual_image is None else result.counterfactual_image
    counterfactual = f"without {removed}: {result.counterfactual_caption}"
    rows = len(label_lines(counterfactual, tile))  # the same strip height for the three panels
    return np.hstack([_labelled(result.map_image(), "ACE concept map", tile, rows),
                      _labelled(legend(result, bank, tile), "concepts", tile, rows),
                      _labelled(after, counterfactual, tile, rows)])


class Ace(Method):
    """ACE as a method: the ``ace`` block of the response and the ACE row of the picture."""

    name = "ace"

    def run(self, explainer, subject) -> MethodResult:
        """Concepts of the frame, their ranking per explained word, and the counterfactual caption."""
        concepts = explainer.concepts()
        result = concepts.explain(subject.image, subject.tokens, subject.indices)
        return MethodResult(block=result.to_json(concepts.bank), picture_row=grid_row(result, concepts.bank, TILE),
                            timings_ms=result.timings_ms)


METHOD = Ace()
