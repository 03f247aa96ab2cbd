"""The on-device captioner: int8 encoder (LiteRT) + numpy step decoder, and ``explaincam caption``.

Frames are RGB uint8 arrays of any size; they are resized to the bundle's input size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from daemon.bundle import Bundle, BundleError, load_bundle
from daemon.config import PACKAGE_ROOT, SHIPPED_BUNDLE
from daemon.decoder import StepDecoder
from daemon.encoder import EncoderError, TFLiteEncoder
from daemon.familiarity import IMAGE_STATISTICS_DIM, CaptionFamiliarity, Familiarity, FeatureStats
from daemon.imaging import read_rgb
from daemon.vocab import Vocabulary

DEFAULT_BUNDLE = PACKAGE_ROOT / SHIPPED_BUNDLE  # the shipped bundle wherever explaincam is installed
# "ours": log-probability beam search that stops at the end token; "seed": the seed
# project's search (summed raw probabilities, run to max length, cut at endseq)
BEAM_STYLES = ("ours", "seed")


@dataclass
class CaptionResult:
    """One frame's caption with its tokens, log-probability score and timings in ms."""

    caption: str
    tokens: list[int]
    words: list[str]
    score: float
    timings: dict = field(default_factory=dict)
    familiarity: Familiarity | None = None  # None when the bundle has no feature_stats.npz
    features: np.ndarray | None = field(default=None, repr=False)  # the encoder's feature vector (the timeline's "similar to")


def resize_for_encoder(frame: np.ndarray, size: int, method: str = "area") -> np.ndarray:
    """Square RGB uint8 image of side ``size``, resized the way the bundle's model was trained.

    ``method`` is the manifest's ``input.resize``: ``area`` (area filter when shrinking,
    bilinear when enlarging) or ``nearest`` (PIL's ``Image.resize(NEAREST)``, which Keras'
    ``load_img`` and the seed project use; see ``resize_nearest_pil``).
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    if method == "nearest":
        return resize_nearest_pil(frame, size, size)
    shrinking = frame.shape[0] > size or frame.shape[1] > size
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_nearest_pil(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize, pixel-exact with PIL's ``Image.resize(NEAREST)``.

    PIL reads source pixel trunc(o_x) for output pixel x, where o_0 = scale / 2 and o_{x+1} =
    o_x + scale, summed step by step in double precision (so at exact half-way points it
    can pick another pixel than floor((x + 0.5) * scale)); cv2.INTER_NEAREST reads
    floor(x * scale), a different pixel for many columns.
    """
    return np.ascontiguousarray(image[_pil_nearest_index(image.shape[0], height)[:, None],
                                      _pil_nearest_index(image.shape[1], width)[None, :]], dtype=np.uint8)


def _pil_nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output pixel along one axis, by PIL's running sum."""
    scale = size_in / size_out
    steps = np.full(size_out, scale)
    steps[0] = scale * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), size_in - 1)


def _read(bundle: Bundle, key: str, reader):
    """``reader(path)`` of one bundle file; a file that cannot be read becomes a BundleError naming it."""
    path = bundle.file(key)
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise BundleError(f"{bundle.path}: {path.name} cannot be read: {exc}") from None


class Captioner:
    """Captions RGB frames with a bundle's int8 encoder and the numpy step decoder.

    ``familiarity_rejudge_s``: 0 judges every frame's familiarity (independent images); the capture
    loop passes ``REJUDGE_S`` so that frames keeping their caption reuse the verdict (CaptionFamiliarity).
    """

    def __init__(self, bundle: Bundle, threads: int = 1, beam_width: int = 1, beam_style: str = "ours",
                 familiarity_rejudge_s: float = 0.0):
        self.bundle = bundle
        tokens = bundle.manifest["special_tokens"]
        self.vocab = _read(bundle, "vocab", lambda path: Vocabulary.load(path, tokens["start"], tokens["end"]))
        self.encoder = TFLiteEncoder(bundle.file("encoder_int8"), threads)
        self.decoder = _read(bundle, "decoder", lambda path: StepDecoder.load(path, self.vocab.start, self.vocab.end))
        if self.decoder.feature_dim != self.encoder.feature_dim:
            raise BundleError(f"{bundle.path}: encoder gives {self.encoder.feature_dim} features, "
                              f"decoder expects {self.decoder.feature_dim}")
        if self.decoder.vocab_size != len(self.vocab):
            raise BundleError(f"{bundle.path}: {bundle.file('vocab').name} has {len(self.vocab)} tokens, "
                              f"{bundle.file('decoder').name} predicts {self.decoder.vocab_size}")
        if self.encoder.input_shape[1:] != (bundle.input_size, bundle.input_size, 3):
            raise BundleError(f"{bundle.path}: {bundle.file('encoder_int8').name} takes images of shape "
                              f"{self.encoder.input_shape[1:]}, the manifest says {bundle.input_size} px RGB")
        self.feature_stats = _read(bundle, "feature_stats", FeatureStats.load) if bundle.has("feature_stats") else None
        if self.feature_stats is not None and \
                self.feature_stats.mean.shape[0] != self.encoder.feature_dim + IMAGE_STATISTICS_DIM:
            raise BundleError(f"{bundle.path}: {bundle.file('feature_stats').name} does not fit "
                              f"the encoder's {self.encoder.feature_dim} features")
        self.familiarity = None if self.feature_stats is None else \
            CaptionFamiliarity(self.feature_stats, familiarity_rejudge_s)
        if beam_style not in BEAM_STYLES:
            raise ValueError(f"beam style must be one of {', '.join(BEAM_STYLES)}, not {beam_style!r}")
        self.beam_width, self.beam_style = beam_width, beam_style
        self.input_size = bundle.input_size

    @classmethod
    def from_path(cls, path: str | Path, threads: int = 1, beam_width: int = 1,
                  beam_style: str = "ours", familiarity_rejudge_s: float = 0.0) -> "Captioner":
        """Load and verify a bundle folder, then build its captioner."""
        return cls(load_bundle(path), threads, beam_width, beam_style, familiarity_rejudge_s)

    def encode(self, frame: np.ndarray) -> np.ndarray:
        """Int8-encoder features of an RGB frame of any size."""
        return self.encoder.encode(self.resize(frame))

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the encoder's input size, resized as the bundle's model was trained."""
        return resize_for_encoder(frame, self.input_size, self.bundle.resize)

    def decode(self, features: np.ndarray, beam_width: int | None = None):
        """Decode features greedily (width 1) or with beam search of the captioner's style."""
        width = self.beam_width if beam_width is None else beam_width
        if width <= 1:  # the seed's greedySearch gives the same words
            return self.decoder.greedy(features, self.bundle.max_length)
        if self.beam_style == "seed":
            return self.decoder.beam_seed(features, self.bundle.max_length, width)
        return self.decoder.beam(features, self.bundle.max_length, width)

    def caption(self, frame: np.ndarray, beam_width: int | None = None) -> CaptionResult:
        """Caption one RGB frame, timing the encoder, the decoder and the familiarity check (``familiarity_ms``
        only when it was judged for this frame)."""
        t0 = time.perf_counter()
        frame = self.resize(frame)
        features = self.encoder.encode(frame)
        t1 = time.perf_counter()
        decoded = self.decode(features, beam_width)
        t2 = time.perf_counter()
        words = [self.vocab.words[t - 1] for t in decoded.tokens]
        caption = " ".join(words)
        timings = {"encoder_ms": round((t1 - t0) * 1e3, 2), "decoder_ms": round((t2 - t1) * 1e3, 2)}
        familiarity = None
        if self.familiarity is not None:
            familiarity, judged = self.familiarity.judge(caption, frame, features)
            if judged:
                timings["familiarity_ms"] = round((time.perf_counter() - t2) * 1e3, 2)
        return CaptionResult(caption, decoded.tokens, words, round(decoded.score, 4), timings, familiarity, features)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam caption``."""
    parser.add_argument("images", nargs="+", help="image files to caption")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle folder")
    parser.add_argument("--threads", type=int, default=2, help="encoder threads")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam width (1 = greedy; default 1, or 3 with --beam-style seed, the seed's beam_index)")
    parser.add_argument("--beam-style", choices=BEAM_STYLES, default="ours",
                        help="ours: log-probabilities, stops at endseq (default); seed: the seed project's "
                             "beam search (sum of raw probabilities, run to max length, cut at endseq)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line (default)")


def main(args: argparse.Namespace) -> int:
    """Print one JSON line per image; unreadable images are reported and skipped."""
    try:
        width = args.beam if args.beam is not None else (3 if args.beam_style == "seed" else 1)
        captioner = Captioner.from_path(args.bundle, args.threads, width, args.beam_style)
    except (BundleError, EncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        try:
            frame = read_rgb(path)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        result = captioner.caption(frame)
        record = {"file": path, "caption": result.caption, "tokens": result.tokens, "score": result.score,
                  "encoder_ms": result.timings["encoder_ms"], "decode_ms": result.timings["decoder_ms"]}
        if result.familiarity is not None:
            record.update(result.familiarity.to_json())
        print(json.dumps(record), flush=True)
    return 1 if failed else 0
