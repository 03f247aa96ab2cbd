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
of its words that their gradients are tiny and mostly follow the runner-up word (README,
"Concepts (ACE)", has what each ranking gives).

ACE is a registered method (``METHOD``): it answers the response's ``ace`` block and the
ACE row of the explanation picture (``daemon.explain.picture``). Its resource is the bundle's
concept bank (``daemon.explain.concept_bank``), loaded once per explainer by ``Ace.load``;
the segments come from ``daemon.explain.segments``. The float model is reached through the
explainer's backend (``bottleneck_activations``, ``bottleneck_gradients``, ``logits``),
whichever runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from daemon.bundle import BundleError
from daemon.explain.base import Method, MethodResult
from daemon.explain.concept_bank import ConceptBank, embed, word_gradients
from daemon.explain.picture import PALETTE, TILE, concept_row, draw_concept_map
from daemon.explain.segments import coverage, extract_patch, fill_regions, random_area, segment
from daemon.explain.targets import teacher_tokens
from daemon.imaging import png_base64


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
    "circle"), so of two circles the one of the right colour comes first.
    """
    logs = np.log(np.maximum(lift, 1e-6))
    key = logs[indices].copy()
    for row, t in enumerate(indices):
        for u in (t - 1, t + 1):
            if 0 <= u < len(logs):
                key[row] += context * logs[u]
    return key


def picture_row(result: ConceptExplanation, bank: ConceptBank, tile: int = TILE) -> np.ndarray:
    """ACE's row of the explanation picture: concept map, legend, counterfactual frame."""
    removed = ", ".join(f"c{k}" for k in result.removed) or "nothing"
    after = result.image if result.counterfactual_image is None else result.counterfactual_image
    return concept_row(result.map_image(), [(k, bank.labels[k]) for k in result.present], after,
                       f"without {removed}: {result.counterfactual_caption}", tile)


class Ace(Method):
    """ACE as a method: the ``ace`` block of the response and the ACE row of the picture."""

    name = "ace"

    def load(self, explainer) -> ConceptExplainer:
        """ACE over the explainer with the bundle's concept bank (BundleError when the bundle has none)."""
        bundle = explainer.bundle
        if not bundle.has("concepts"):
            raise BundleError(f"{bundle.path}: the bundle has no concept bank (concepts.npz); "
                              "build one with `explaincam concepts`")
        return ConceptExplainer(explainer, ConceptBank.load(bundle.file("concepts")))

    def run(self, explainer, subject) -> MethodResult:
        """Concepts of the frame, their ranking per explained word, and the counterfactual caption."""
        concepts = explainer.resources(self.name)
        result = concepts.explain(subject.image, subject.tokens, subject.indices)
        return MethodResult(block=result.to_json(concepts.bank), picture_row=picture_row(result, concepts.bank),
                            timings_ms=result.timings_ms)


METHOD = Ace()
