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
from daemon.decoder import StepDecoder
from daemon.encoder import EncoderError, TFLiteEncoder
from daemon.familiarity import IMAGE_STATISTICS_DIM, Familiarity, FeatureStats, frame_descriptor
from daemon.vocab import Vocabulary

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "scenes-mnv3s"


@dataclass
class CaptionResult:
    """One frame's caption with its tokens, log-probability score and timings in ms."""

    caption: str
    tokens: list[int]
    words: list[str]
    score: float
    timings: dict = field(default_factory=dict)
    familiarity: Familiarity | None = None  # None when the bundle has no feature_stats.npz


def resize_for_encoder(frame: np.ndarray, size: int) -> np.ndarray:
    """Square RGB uint8 image of side ``size`` (area filter when shrinking)."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    shrinking = frame.shape[0] > size or frame.shape[1] > size
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8; raise ValueError with the reason if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read(bundle: Bundle, key: str, reader):
    """``reader(path)`` of one bundle file; a file that cannot be read becomes a BundleError naming it."""
    path = bundle.file(key)
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise BundleError(f"{bundle.path}: {path.name} cannot be read: {exc}") from None


class Captioner:
    """Captions RGB frames with a bundle's int8 encoder and the numpy step decoder."""

    def __init__(self, bundle: Bundle, threads: int = 1, beam_width: int = 1):
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
        self.beam_width = beam_width
        self.input_size = bundle.input_size

    @classmethod
    def from_path(cls, path: str | Path, threads: int = 1, beam_width: int = 1) -> "Captioner":
        """Load and verify a bundle folder, then build its captioner."""
        return cls(load_bundle(path), threads, beam_width)

    def encode(self, frame: np.ndarray) -> np.ndarray:
        """Int8-encoder features of an RGB frame of any size."""
        return self.encoder.encode(resize_for_encoder(frame, self.input_size))

    def decode(self, features: np.ndarray, beam_width: int | None = None):
        """Decode features greedily (width 1) or with beam search."""
        width = self.beam_width if beam_width is None else beam_width
        if width <= 1:
            return self.decoder.greedy(features, self.bundle.max_length)
        return self.decoder.beam(features, self.bundle.max_length, width)

    def caption(self, frame: np.ndarray, beam_width: int | None = None) -> CaptionResult:
        """Caption one RGB frame, timing the encoder, the decoder and the familiarity check."""
        t0 = time.perf_counter()
        frame = resize_for_encoder(frame, self.input_size)
        features = self.encoder.encode(frame)
        t1 = time.perf_counter()
        decoded = self.decode(features, beam_width)
        t2 = time.perf_counter()
        words = [self.vocab.words[t - 1] for t in decoded.tokens]
        timings = {"encoder_ms": round((t1 - t0) * 1e3, 2), "decoder_ms": round((t2 - t1) * 1e3, 2)}
        familiarity = None
        if self.feature_stats is not None:
            familiarity = self.feature_stats.judge(frame_descriptor(frame, features))
            timings["familiarity_ms"] = round((time.perf_counter() - t2) * 1e3, 2)
        return CaptionResult(" ".join(words), decoded.tokens, words, round(decoded.score, 4), timings, familiarity)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam caption``."""
    parser.add_argument("images", nargs="+", help="image files to caption")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle folder")
    parser.add_argument("--threads", type=int, default=2, help="encoder threads")
    parser.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line (default)")


def main(args: argparse.Namespace) -> int:
    """Print one JSON line per image; unreadable images are reported and skipped."""
    try:
        captioner = Captioner.from_path(args.bundle, args.threads, args.beam)
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
