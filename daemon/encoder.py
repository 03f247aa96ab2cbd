"""The int8 encoder on LiteRT: uint8 RGB frame in, dequantized feature vector out.

The interpreter comes from ``ai_edge_litert`` (LiteRT), else ``tflite_runtime`` (older
boxes, numpy 1), else ``tensorflow.lite`` as a last resort for development machines.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

EDGE_INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_INTERPRETER_MODULES = (*EDGE_INTERPRETER_MODULES, "tensorflow.lite")


class EncoderError(Exception):
    """The encoder model cannot be loaded or run."""


def interpreter_class(modules: tuple[str, ...] = _INTERPRETER_MODULES):
    """The first TFLite ``Interpreter`` class of ``modules`` that imports; raise EncoderError if none does."""
    for name in modules:
        try:
            return importlib.import_module(name).Interpreter
        except ImportError:
            continue
    raise EncoderError("no TFLite interpreter found: pip install ai-edge-litert (or tflite-runtime)")


def load_interpreter(path: str | Path, threads: int = 1):
    """An allocated interpreter for a .tflite file."""
    try:
        interpreter = interpreter_class()(model_path=str(path), num_threads=max(1, int(threads)))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise EncoderError(f"cannot load TFLite model {path}: {exc}") from None
    return interpreter


class TFLiteEncoder:
    """Runs a TFLite encoder (int8 or float) on one RGB frame at the model's input size."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.interpreter = load_interpreter(path, threads)
        (inp,) = self.interpreter.get_input_details()
        (out,) = self.interpreter.get_output_details()
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_dtype = inp["dtype"]
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.input_quant = inp["quantization"]
        self.output_dtype = out["dtype"]
        self.output_scale, self.output_zero = out["quantization"]
        self.feature_dim = int(out["shape"][-1])

    @property
    def input_size(self) -> int:
        """Side of the square input image."""
        return self.input_shape[1]

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Features (float32 vector) of one uint8 RGB image already at the input size."""
        if image.shape != self.input_shape[1:]:
            raise ValueError(f"encoder expects an image of shape {self.input_shape[1:]}, got {image.shape}")
        if self.input_dtype == np.uint8:
            batch = image[None].astype(np.uint8, copy=False)
        elif self.input_dtype == np.int8:
            scale, zero = self.input_quant
            batch = np.clip(np.round(image / scale + zero), -128, 127).astype(np.int8)[None]
        else:
            batch = image[None].astype(np.float32)
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output_index)[0]
        if self.output_dtype in (np.int8, np.uint8):
            return (raw.astype(np.float32) - self.output_zero) * self.output_scale
        return raw.astype(np.float32)
