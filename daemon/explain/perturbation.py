"""Perturbation methods on the model that runs: the int8 encoder (LiteRT) and the numpy step decoder.

The gradient methods explain the bundle's float32 twin; the perturbation methods
(``daemon.explain.occlusion``, ``daemon.explain.rise``) change the frame and watch the
*deployed* int8 captioner's teacher-forced score of each published word: the log-odds of its
probability, log p - log(1 - p), computed from the logits (``word_logprob_and_logodds``),
because a near-certain word's log-probability stays at 0 until p itself falls. They
need no gradients, no explainer graph and no TensorFlow. ``Int8Scorer`` scores many
perturbed frames at once: one interpreter whose input is resized to the batch (LiteRT
``resize_tensor_input``), then the step decoder over all rows together. Every perturbed
frame scores every word, so a method's cost does not grow with the number of words.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from daemon.decoder import StepDecoder
from daemon.encoder import load_interpreter
from daemon.explain import heatmap
from daemon.explain.base import HeatmapMethod, MethodResult, Subject

INT8_MODEL = "int8"  # what a perturbation method's word fields say it explained


class Int8Scorer:
    """Teacher-forced word log-probabilities of the bundle's int8 encoder + numpy step decoder, batched."""

    def __init__(self, encoder_path: str | Path, decoder: StepDecoder, threads: int = 2, batch: int = 16):
        """``encoder_path``: an int8 encoder .tflite (a bundle's ``encoder_int8``); ``batch``: frames per invoke."""
        self.interpreter = load_interpreter(encoder_path, threads)
        (inp,) = self.interpreter.get_input_details()
        (out,) = self.interpreter.get_output_details()
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_dtype, self.input_quant = inp["dtype"], inp["quantization"]
        self.output_quant = out["quantization"]
        self.image_shape = tuple(int(d) for d in inp["shape"][1:])
        self.decoder = decoder
        self.batch = max(1, int(batch))
        self._rows = 1  # the batch the interpreter's input is sized for now
        self._blas = ThreadpoolController()

    def _resize(self, rows: int) -> None:
        """Size the interpreter's input for ``rows`` images (a no-op when it already is)."""
        if rows != self._rows:
            self.interpreter.resize_tensor_input(self.input_index, [rows, *self.image_shape])
            self.interpreter.allocate_tensors()
            self._rows = rows

    def _quantize(self, images: np.ndarray) -> np.ndarray:
        """The images as the encoder's input tensor (uint8, int8 or float32)."""
        if self.input_dtype == np.uint8:
            return images if images.dtype == np.uint8 else np.clip(np.round(images), 0, 255).astype(np.uint8)
        if self.input_dtype == np.int8:
            scale, zero = self.input_quant
            return np.clip(np.round(images / scale + zero), -128, 127).astype(np.int8)
        return images.astype(np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, D) dequantized int8-encoder features of (N, H, W, 3) 0..255 images, ``batch`` at a time."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images must be (N, {', '.join(map(str, self.image_shape))}), not {images.shape}")
        parts = []
        for start in range(0, len(images), self.batch):
            chunk = self._quantize(images[start:start + self.batch])
            self._resize(len(chunk))
            self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(chunk))
            self.interpreter.invoke()
            parts.append(self.interpreter.get_tensor(self.output_index).copy())
        raw = np.concatenate(parts)
        scale, zero = self.output_quant
        if raw.dtype in (np.int8, np.uint8):
            return (raw.astype(np.float32) - zero) * scale
        return raw.astype(np.float32)

    def word_logits(self, features: np.ndarray, teacher: list[int]) -> np.ndarray:
        """(N, L-1, V) next-word logits of the step decoder teacher-forced on ``teacher``."""
        return self.decoder.teacher_forced_rows(features, teacher[:-1])

    def one_blas_thread(self):
        """Context: numpy's matrix products on one thread. The products of a few hundred rows here
        are small; on a busy 2-core box OpenBLAS's second thread made 256 decoder rows take
        0.2-0.6 s instead of 30 ms."""
        return self._blas.limit(limits=1, user_api="blas")

    def word_scores(self, images: np.ndarray, teacher: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(log-probability, log-odds) of each caption word, both (N, L-1), for (N, H, W, 3) 0..255 images."""
        logits = self.word_logits(self.features(images), teacher)
        return word_logprob_and_logodds(logits, teacher)

    def word_logprobs(self, images: np.ndarray, teacher: list[int]) -> np.ndarray:
        """(N, L-1) teacher-forced log-probability of each caption word for (N, H, W, 3) 0..255 images."""
        return self.word_scores(images, teacher)[0]


def word_logprob_and_logodds(logits: np.ndarray, teacher: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(log p, log p/(1-p)) of words ``teacher[1:]`` from (N, L-1, V) logits, in float64.

    The log-odds is the word's logit less the log-sum-exp of all other logits, never
    ``log(1 - p)`` of a rounded p: a near-certain word (p > 0.9999, log p within rounding of
    0) still gets a score that falls as its evidence is taken away.
    """
    x = np.asarray(logits, np.float64)
    words = np.asarray(teacher[1:], int)
    n, length, _ = x.shape
    own = x[:, np.arange(length), words]  # (N, L-1)
    others = x.copy()
    others[:, np.arange(length), words] = -np.inf
    top = np.maximum(others.max(axis=-1), own)
    all_lse = top + np.log(np.exp(x - top[..., None]).sum(axis=-1))
    other_lse = top + np.log(np.exp(others - top[..., None]).sum(axis=-1))
    return own - all_lse, own - other_lse


MAP_SHRINK = 4  # maps are combined at 1/4 of the frame's side (56 px for 224), then upsampled


_SHRUNK: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(masks) -> (masks, shrunk masks)


def shrink(keep: np.ndarray) -> np.ndarray:
    """(M, H/4, W/4) area-averaged copies of (M, H, W) masks, kept for the (cached) mask arrays the methods reuse."""
    held = _SHRUNK.get(id(keep))
    if held is None or held[0] is not keep:
        small = np.stack([cv2.resize(k, (k.shape[1] // MAP_SHRINK, k.shape[0] // MAP_SHRINK),
                                     interpolation=cv2.INTER_AREA) for k in keep])
        if len(_SHRUNK) >= 8:
            _SHRUNK.clear()
        held = _SHRUNK[id(keep)] = (keep, small)
    return held[1]


def neutral_fill(image: np.ndarray) -> np.ndarray:
    """What a perturbation puts where it hides the frame: the frame's mean colour everywhere."""
    image = np.asarray(image, np.float32)
    return np.broadcast_to(image.reshape(-1, 3).mean(axis=0), image.shape).astype(np.float32)


class PerturbationMethod(HeatmapMethod):
    """A heatmap method on the int8 captioner: perturbed frames in, one map per word from their scores.

    A method says which frames it scores (``keep``: (M, H, W) how much of the frame each
    perturbed copy keeps, 1 = the frame, 0 = the neutral fill) and how the scores become
    maps (``combine``). Every word entry says ``"model": "int8"``.
    """

    def keep(self, size: tuple[int, int], options) -> np.ndarray:
        """(M, H, W) float32 in 0..1: how much of the frame each perturbed copy keeps (the same array
        for the same settings: the methods cache their masks)."""
        raise NotImplementedError

    def combine(self, keep: np.ndarray, scores: np.ndarray, base: np.ndarray) -> np.ndarray:
        """(K, H, W) raw maps from the copies' word log-odds (M, K) and the frame's own (K,)."""
        raise NotImplementedError

    def maps(self, scorer: Int8Scorer, image: np.ndarray, teacher: list[int], indices: list[int],
             options) -> tuple[list[np.ndarray], np.ndarray]:
        """Raw maps (at a quarter of the frame's side) of the words ``indices``, and the frame's word
        log-probabilities (all words)."""
        image = np.asarray(image, np.float32)
        keep = self.keep(image.shape[:2], options)
        fill = neutral_fill(image)
        with scorer.one_blas_thread():
            features = [scorer.features(image[None])]
            for start in range(0, len(keep), scorer.batch):  # the copies are made a batch at a time, as uint8
                features.append(scorer.features(self.copies(image, fill, keep[start:start + scorer.batch])))
            logits = scorer.word_logits(np.concatenate(features), teacher)
            logp, logodds = word_logprob_and_logodds(logits, teacher)
            raw = self.combine(shrink(keep), logodds[1:, indices], logodds[0, indices])
        return list(raw), logp[0]

    def copies(self, image: np.ndarray, fill: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """(M, H, W, 3) uint8 frames: fill + keep * (image - fill), rounded (it stays within 0..255)."""
        frames = keep[..., None] * (image - fill)
        frames += fill + 0.5
        return frames.astype(np.uint8)

    def run(self, explainer, subject: Subject) -> MethodResult:
        """Maps at image size (0..1) with their peaks, one per explained word, from the int8 model."""
        raw, base = self.maps(explainer.int8_scorer(), subject.image, subject.teacher, subject.indices,
                              explainer.options)
        maps = [heatmap.to_image_map(r, subject.image.shape[:2]) for r in raw]
        fields = [{"model": INT8_MODEL, "int8_probability": round(float(np.exp(base[i])), 6)}
                  for i in subject.indices]
        return MethodResult(maps=maps, peaks=[heatmap.peak(m) for m in maps], word_fields=fields)
