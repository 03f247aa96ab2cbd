"""The answer pipeline: a bundle's float model behind a backend, explaining captions word by word.

One pipeline serves the explainer process (``daemon.explain.process``), fleet workers, ``explaincam explain``
and ``explaincam evaluate``: ``Explainer.explain`` runs the requested methods (each a
registered ``Method``, ACE included) over the backend, and ``answer`` turns that into the
MQTT response and the explanation picture, each heatmap and the picture encoded once. It
explains the caption it is given (the published one) by teacher forcing the float model on
its tokens, and reports the float model's own greedy caption beside it.

No TensorFlow here: the backend (``daemon.explain.backends``) decides what runs the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.bundle import Bundle, load_bundle
from daemon.captioner import resize_for_encoder
from daemon.decoder import PAD, StepDecoder
from daemon.explain import heatmap, picture
from daemon.explain.backends import BackendError, load_backend
from daemon.explain.base import MethodResult, Subject
from daemon.explain.perturbation import Int8Scorer
from daemon.explain.registry import load_method
from daemon.explain.resolution import resolution_fields
from daemon.explain.requests import response
from daemon.explain.targets import log_softmax, teacher_tokens, word_logprobs
from daemon.explain_settings import DEFAULT_THREADS, INT8_METHODS, ExplainOptions
from daemon.imaging import encode_png
from daemon.vocab import Vocabulary


@dataclass
class Explanation:
    """Every method's result for the explained words of one frame."""

    image: np.ndarray  # the frame at the model's input size, RGB uint8
    indices: list[int]
    words: list[str]
    results: dict[str, MethodResult] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # requested methods that cannot run here, and why

    @property
    def maps(self) -> dict[str, list[np.ndarray]]:
        """The 0..1 maps at image size of each heatmap method, one per word."""
        return {name: r.maps for name, r in self.results.items() if r.maps is not None}

    @property
    def peaks(self) -> dict[str, list[tuple[int, int] | None]]:
        """The (x, y) peak of each heatmap method's maps (None for an all-zero map)."""
        return {name: r.peaks for name, r in self.results.items() if r.maps is not None}

    def word_records(self) -> list[dict]:
        """The response's ``words``: index, word and per heatmap method its base64 PNG, peak and fields."""
        records = []
        for k, (index, word) in enumerate(zip(self.indices, self.words)):
            record = {"index": index, "word": word}
            for name, result in self.results.items():
                if result.maps is None:
                    continue
                peak = result.peaks[k]
                record[name] = {"heatmap": heatmap.heatmap_png_base64(result.maps[k]),
                                "peak": None if peak is None else list(peak),
                                **(result.word_fields[k] if result.word_fields else {})}
            records.append(record)
        return records

    def blocks(self) -> dict[str, dict]:
        """The response blocks of methods that answer one of their own (ACE's ``ace``)."""
        blocks = {name: r.block for name, r in self.results.items() if r.block is not None}
        if self.unavailable:
            blocks["unavailable"] = dict(self.unavailable)
        return blocks

    def picture(self) -> np.ndarray:
        """The explanation picture (RGB uint8): per word the frame and one overlay per heatmap
        method, then the rows of methods that draw their own (ACE), the narrower parts padded."""
        maps, peaks = self.maps, self.peaks
        rows = [(f"#{index} {word}", [(m, maps[m][k], peaks[m][k]) for m in maps])
                for k, (index, word) in enumerate(zip(self.indices, self.words))]
        parts = [picture.grid(self.image, rows)]
        parts += [r.picture_row for r in self.results.values() if r.picture_row is not None]
        width = max(p.shape[1] for p in parts)
        return np.vstack([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in parts])


class Explainer:
    """A bundle's float captioner behind a backend, with the explanation methods."""

    def __init__(self, bundle: Bundle | str | Path, options: ExplainOptions | None = None,
                 gradcam_layer: str | None = None, backend="auto", threads: int = DEFAULT_THREADS):
        """``backend``: "auto" | "litert" | "tensorflow" (see ``load_backend``) or a backend object."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        special = self.bundle.manifest["special_tokens"]
        self.vocab = Vocabulary.load(self.bundle.file("vocab"), special["start"], special["end"])
        self.decoder = StepDecoder.load(self.bundle.file("decoder"), self.vocab.start, self.vocab.end)
        self.options = options or ExplainOptions()
        self.threads = threads
        self.backend_problem: str | None = None  # why no backend runs here (the int8 methods still do)
        if isinstance(backend, str):
            try:
                backend = load_backend(self.bundle, backend, threads, gradcam_layer, self.options.batch_size)
            except BackendError as exc:
                backend, self.backend_problem = None, str(exc)
        self.backend = backend
        self.layer = backend.gradcam_layer if backend is not None else gradcam_layer
        self.size = self.bundle.input_size
        self._resources: dict[str, object] = {}
        self._int8 = None

    def int8_scorer(self) -> Int8Scorer:
        """The deployed int8 encoder + step decoder, batched (what the perturbation methods run), on first use."""
        if self._int8 is None:
            self._int8 = Int8Scorer(self.bundle.file("encoder_int8"), self.decoder, self.threads,
                                    self.options.batch_size)
        return self._int8

    def unavailable(self, methods) -> dict[str, str]:
        """The methods of ``methods`` that cannot run here (they need a backend), each with the reason."""
        if self.backend is not None:
            return {}
        return {m: f"{m} needs gradients of the float model: {self.backend_problem}; "
                   f"the int8 methods {', '.join(INT8_METHODS)} run without them"
                for m in methods if m not in INT8_METHODS}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """An RGB frame at the model's input size, as float32 0..255."""
        return resize_for_encoder(image, self.size, self.bundle.resize).astype(np.float32)

    def float_caption(self, image: np.ndarray, hint: list[int] | None = None) -> list[int]:
        """The float model's greedy caption tokens for a frame.

        With the backend's float encoder features the numpy step decoder decodes them (as
        the int8 runtime does its own). A backend without ``features`` decodes through its
        teacher-forced logits: the rows follow ``hint`` (the published caption, which the
        float model nearly always repeats) as long as the greedy choice agrees with it, so a
        caption the float model repeats costs one pass, and each disagreement one more.
        """
        x = self.prepare(image)[None]
        if hasattr(self.backend, "features"):
            return self.decoder.greedy(self.backend.features(x)[0], self.bundle.max_length).tokens
        tokens: list[int] = []
        guess = [int(t) for t in (hint or [])][:self.bundle.max_length]
        while True:
            row = tokens + guess[len(tokens):]
            logits = self.backend.logits(x, teacher_tokens(self.vocab.start, row))[0]
            for t in range(len(tokens), len(row) + 1):  # position t predicts word t
                logp = log_softmax(logits[t])
                logp[PAD] = logp[self.vocab.start] = -np.inf
                token = self.vocab.end if t == self.bundle.max_length else int(np.argmax(logp))
                if token == self.vocab.end:
                    return tokens
                tokens.append(token)
                if t < len(row) and token != row[t]:  # the float model goes its own way from here
                    guess = []
                    break

    def word_logprobs(self, images: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Teacher-forced log-probability of each caption word, (N images, len(tokens))."""
        teacher = teacher_tokens(self.vocab.start, tokens)
        return word_logprobs(self.backend.logits(np.asarray(images, np.float32), teacher), teacher)

    def resources(self, method: str):
        """What method ``method`` loads beside the backend (its ``Method.load``: ACE's concept bank),
        loaded on first use and kept for this explainer."""
        if method not in self._resources:
            self._resources[method] = load_method(method).load(self)
        return self._resources[method]

    def explain(self, image: np.ndarray, tokens: list[int], indices: list[int] | None = None,
                methods: list[str] | tuple[str, ...] = ("gradcam",)) -> Explanation:
        """Each method's result for the words ``indices`` (default all) of the caption ``tokens``."""
        x = self.prepare(image)
        indices = list(range(len(tokens))) if indices is None else [int(i) for i in indices]
        words = [self.vocab.words[tokens[i] - 1] for i in indices]
        subject = Subject(x, list(tokens), teacher_tokens(self.vocab.start, tokens), indices, words)
        explanation = Explanation(x.astype(np.uint8), indices, words)
        explanation.unavailable = self.unavailable(methods)
        for name in methods:
            if name in explanation.unavailable:
                continue
            started = time.perf_counter()
            result = load_method(name).run(self, subject)
            explanation.results[name] = result
            explanation.timings_ms.update(result.timings_ms)
            explanation.timings_ms[f"{name}_ms"] = round((time.perf_counter() - started) * 1e3, 1)
        gradient_maps = [r for name, r in explanation.results.items() if r.maps is not None and name not in INT8_METHODS]
        if gradient_maps and indices:  # flag the words whose gradient maps are rounding noise
            fields = resolution_fields(self.word_logprobs(x[None], tokens)[0, indices])
            for result in gradient_maps:
                result.word_fields = [{**(own or {}), **flag}
                                      for own, flag in zip(result.word_fields or [{}] * len(fields), fields)]
        return explanation


def answer(explainer: Explainer, image: np.ndarray, tokens: list[int], indices: list[int], methods: list[str],
           request_id, frame_id: int | None = None, caption: str | None = None,
           timings_ms: dict | None = None) -> tuple[dict, bytes]:
    """The ok response and the explanation picture (PNG) of one request: the one answer pipeline.

    ``tokens`` is the published caption's word tokens, ``caption`` its text (default: decoded
    from ``tokens``); ``timings_ms`` are earlier timings to report first (the caption's).
    """
    started = time.perf_counter()
    # without a backend (no explainer graph, no TensorFlow) there is no float model to caption with
    float_tokens = explainer.float_caption(image, tokens) if explainer.backend is not None else None
    timings = {**(timings_ms or {}), "float_caption_ms": round((time.perf_counter() - started) * 1e3, 1)}
    explanation = explainer.explain(image, tokens, indices, methods)
    render_started = time.perf_counter()
    payload = response(request_id, "ok", frame_id=frame_id,
                       caption=explainer.vocab.decode(tokens) if caption is None else caption,
                       float_caption=None if float_tokens is None else explainer.vocab.decode(float_tokens), words=explanation.word_records(),
                       timings_ms={**timings, **explanation.timings_ms})
    payload.update(explanation.blocks())
    picture = encode_png(explanation.picture())
    payload["timings_ms"]["render_ms"] = round((time.perf_counter() - render_started) * 1e3, 1)
    return payload, picture
