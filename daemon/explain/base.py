"""The method base classes: what every explanation method answers, and the numpy plumbing they share.

Methods ask a backend (``daemon.explain.backends``) for gradients and never import
TensorFlow. The pipeline (``daemon.explain.explainer``) calls ``Method.run`` and gets a
``MethodResult``. Two families draw a heatmap per word; each method module only says how
it weights:

- ``CAMMethod``: gradients of the target w.r.t. the Grad-CAM layer's activations;
  the map is ReLU(sum_k w_k A_k) with the method's channel weights w.
- ``InputGradientMethod``: gradients w.r.t. the image at inputs the method chooses
  (the image, noisy copies, points on a path), combined into one map per word.

ACE (``daemon.explain.ace``) is a method of its own kind: a block of concepts and a row of
the explanation picture instead of a heatmap per word, and a resource of its own (the
bundle's concept bank) that ``Method.load`` brings once per explainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from daemon.explain import heatmap
from daemon.explain.targets import weight_rows, word_targets
from daemon.explain_settings import ExplainOptions


@dataclass
class Subject:
    """What one answer explains: the frame at the model's input size and words of a caption."""

    image: np.ndarray  # (H, W, 3) float32 0..255 RGB
    tokens: list[int]  # the caption's word tokens (no start/end)
    teacher: list[int]  # the model input: start token, then the words
    indices: list[int]  # explained word indices
    words: list[str]  # the explained words


@dataclass
class MethodResult:
    """One method's part of an answer.

    A heatmap method fills ``maps`` and ``peaks`` (one per explained word) and may add
    per-word numbers to its word entries (``word_fields``); a method like ACE answers a
    ``block`` of its own under its name and a ``picture_row`` of the explanation picture.
    """

    maps: list[np.ndarray] | None = None  # 0..1 at image size
    peaks: list[tuple[int, int] | None] | None = None  # (x, y), None for an all-zero map
    word_fields: list[dict] = field(default_factory=list)
    block: dict | None = None
    picture_row: np.ndarray | None = None  # RGB uint8, drawn below the per-word rows
    timings_ms: dict[str, float] = field(default_factory=dict)


class Method:
    """An explanation method: ``run`` answers its part of an explanation of a subject."""

    name = ""

    def load(self, explainer):
        """What this method needs beside the explainer's backend, loaded once per explainer
        (``Explainer.resources``); None by default (ACE: its concept bank)."""
        return None

    def run(self, explainer, subject: Subject) -> MethodResult:
        """This method's result for the subject, with the explainer's backend, options and bundle."""
        raise NotImplementedError


class HeatmapMethod(Method):
    """A method that draws one map per explained word."""

    def explain(self, backend, image: np.ndarray, teacher: list[int], targets: list,
                options: ExplainOptions) -> list[np.ndarray]:
        """Raw maps (any resolution, larger = more important) for each target."""
        return self.explain_with_fields(backend, image, teacher, targets, options)[0]

    def explain_with_fields(self, backend, image, teacher, targets, options) -> tuple[list[np.ndarray], list[dict]]:
        """Raw maps and the per-target fields the answer reports beside them (none by default)."""
        raise NotImplementedError

    def run(self, explainer, subject: Subject) -> MethodResult:
        """Maps at image size (0..1) with their peaks, one per explained word."""
        raw, fields = self.explain_with_fields(explainer.backend, subject.image, subject.teacher,
                                               word_targets(subject.indices), explainer.options)
        maps = [heatmap.to_image_map(r, subject.image.shape[:2]) for r in raw]
        return MethodResult(maps=maps, peaks=[heatmap.peak(m) for m in maps], word_fields=fields)


class CAMMethod(HeatmapMethod):
    """Class-activation maps: ReLU of the activations weighted per channel from their gradients."""

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """Channel weights (C,) from one row's activations and gradients (h, w, C)."""
        raise NotImplementedError

    def explain_with_fields(self, backend, image, teacher, targets, options):
        """One (h, w) map at the layer's resolution per target."""
        if not targets:
            return [], []
        images = np.repeat(np.asarray(image, np.float32)[None], len(targets), 0)
        acts, grads, _ = backend.layer_gradients(images, teacher, weight_rows(targets, len(teacher) - 1))
        maps = [np.maximum(np.tensordot(a, self.weights(a, g), axes=([2], [0])), 0.0) for a, g in zip(acts, grads)]
        return maps, [{} for _ in maps]


class InputGradientMethod(HeatmapMethod):
    """Image-space gradients at method-chosen inputs, combined into one map per target."""

    def inputs(self, image: np.ndarray, options: ExplainOptions, rng: np.random.Generator) -> np.ndarray:
        """The (S, H, W, 3) images at which the gradient is taken for one target."""
        raise NotImplementedError

    def combine(self, image: np.ndarray, inputs: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """One (H, W) map from the gradients (S, H, W, 3) at the inputs."""
        raise NotImplementedError

    def summarize(self, image: np.ndarray, inputs: np.ndarray, grads: np.ndarray) -> dict:
        """Numbers ``fields`` needs from one target's inputs and gradients (kept instead of the arrays)."""
        return {}

    def fields(self, backend, image: np.ndarray, teacher: list[int], targets: list,
               summaries: list[dict]) -> list[dict]:
        """Per-target fields reported beside the maps (none by default)."""
        return [{} for _ in targets]

    def explain_with_fields(self, backend, image, teacher, targets, options):
        """One (H, W) map per target; targets with few inputs share backend calls of about ``batch_size`` rows."""
        image = np.asarray(image, np.float32)
        rng = np.random.default_rng(options.seed)
        length = len(teacher) - 1
        maps: list[np.ndarray] = []
        summaries: list[dict] = []
        group: list[tuple[object, np.ndarray]] = []

        def flush():
            rows = np.concatenate([x for _, x in group])
            weights = np.concatenate([np.repeat(weight_rows([t], length), len(x), 0) for t, x in group])
            grads, _ = backend.image_gradients(rows, teacher, weights)
            at = 0
            for _, x in group:
                g = grads[at:at + len(x)]
                maps.append(self.combine(image, x, g))
                summaries.append(self.summarize(image, x, g))
                at += len(x)
            group.clear()

        for target in targets:
            group.append((target, self.inputs(image, options, rng)))
            if sum(len(x) for _, x in group) >= options.batch_size:
                flush()
        if group:
            flush()
        return maps, self.fields(backend, image, teacher, targets, summaries)


def channel_max_abs(grads: np.ndarray) -> np.ndarray:
    """max over colour channels of |gradient|: the saliency map of Simonyan et al."""
    return np.abs(grads).max(axis=-1)
