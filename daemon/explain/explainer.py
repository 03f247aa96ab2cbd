"""The full-precision explainer: loads ``captioner.keras`` once and explains captions word by word.

Used by the explainer process (``daemon.explain.worker``), by ``explaincam explain`` and by
``explaincam evaluate``. It explains the caption it is given (the published one) by teacher
forcing the float model on its tokens, and reports the float model's own greedy caption
(float encoder features + the same numpy step decoder) beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import keras

from daemon.bundle import Bundle, BundleError, load_bundle
from daemon.captioner import resize_for_encoder
from daemon.decoder import StepDecoder
from daemon.explain import heatmap
from daemon.explain.base import SplitCaptioner
from daemon.explain.layers import MomentMap  # noqa: F401  registers the layer for load_model
from daemon.explain.registry import ExplainOptions, load_method
from daemon.explain.targets import teacher_tokens, word_targets
from daemon.vocab import Vocabulary


@dataclass
class Explanation:
    """Maps (0..1 at image size) and peaks per method, one per explained word."""

    indices: list[int]
    words: list[str]
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)
    peaks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def word_records(self) -> list[dict]:
        """The response's ``words`` list: index, word and per method a base64 PNG heatmap and peak."""
        records = []
        for k, (index, word) in enumerate(zip(self.indices, self.words)):
            record = {"index": index, "word": word}
            for method, maps in self.maps.items():
                record[method] = {"heatmap": heatmap.png_base64(maps[k]), "peak": list(self.peaks[method][k])}
            records.append(record)
        return records

    def grid_png(self, image: np.ndarray) -> bytes:
        """PNG of the frame and one labelled overlay per word and method."""
        rows = [(f"#{index} {word}", [(m, self.maps[m][k], self.peaks[m][k]) for m in self.maps])
                for k, (index, word) in enumerate(zip(self.indices, self.words))]
        return heatmap.encode_png(heatmap.grid(image, rows))


class Explainer:
    """A bundle's float captioner, cut at the Grad-CAM layer, with the explanation methods."""

    def __init__(self, bundle: Bundle | str | Path, options: ExplainOptions | None = None,
                 gradcam_layer: str | None = None, captioner: keras.Model | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if not self.bundle.has("captioner"):
            raise BundleError(f"{self.bundle.path}: the bundle has no captioner.keras; explanations need it")
        special = self.bundle.manifest["special_tokens"]
        self.vocab = Vocabulary.load(self.bundle.file("vocab"), special["start"], special["end"])
        self.decoder = StepDecoder.load(self.bundle.file("decoder"), self.vocab.start, self.vocab.end)
        if captioner is None:
            captioner = keras.models.load_model(self.bundle.file("captioner"), compile=False)
        self.layer = gradcam_layer or self.bundle.manifest["gradcam_layer"]
        self.model = SplitCaptioner(captioner, self.layer)
        self.options = options or ExplainOptions()
        self.size = self.bundle.input_size

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """An RGB frame at the model's input size, as float32 0..255."""
        return resize_for_encoder(image, self.size, self.bundle.resize).astype(np.float32)

    def float_caption(self, image: np.ndarray) -> list[int]:
        """The float model's greedy caption tokens for a frame."""
        features = self.model.features(self.prepare(image)[None])[0]
        return self.decoder.greedy(features, self.bundle.max_length).tokens

    def word_logprobs(self, images: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Teacher-forced log-probability of each caption word, (N images, len(tokens))."""
        logits = self.model.logits(np.asarray(images, np.float32), teacher_tokens(self.vocab.start, tokens),
                                   self.options.batch_size)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return logp[:, np.arange(len(tokens)), np.asarray(tokens, int)]

    def explain(self, image: np.ndarray, tokens: list[int], indices: list[int] | None = None,
                methods: list[str] | tuple[str, ...] = ("gradcam",)) -> Explanation:
        """Maps of each method for the words ``indices`` (default all) of the caption ``tokens``."""
        x = self.prepare(image)
        indices = list(range(len(tokens))) if indices is None else list(indices)
        words = [self.vocab.words[tokens[i] - 1] for i in indices]
        result = Explanation(indices, words)
        targets = word_targets(tokens, indices)
        teacher = teacher_tokens(self.vocab.start, tokens)
        for name in methods:
            started = time.perf_counter()
            raw = load_method(name).explain(self.model, x, teacher, targets, self.options)
            maps = [heatmap.to_image_map(r, x.shape[:2]) for r in raw]
            result.maps[name] = maps
            result.peaks[name] = [heatmap.peak(m) for m in maps]
            result.timings_ms[f"{name}_ms"] = round((time.perf_counter() - started) * 1e3, 1)
        return result
