"""The LiteRT backend: the bundle's ``explainer_float.tflite`` gradient graphs, no TensorFlow.

``explaincam export-explainer`` (``convert.explainer_export``) writes the graph at
conversion: float32, TFLITE_BUILTINS only, one signature per entry point of the backend
contract (``daemon.explain.backends``), at a fixed batch B and token length T recorded in
the manifest's ``explainer`` entry. This backend runs those signatures on the LiteRT
interpreter (``ai_edge_litert``, else ``tflite_runtime``) and hides the fixed shapes:
any number of rows is cut into batches of B (the last one padded, the padding dropped),
token rows shorter than T are padded with 0 after their end (the decoder is causal and
masks padding, so earlier positions do not change), and weights with zeros to match.

This module must never import TensorFlow or Keras (nor modules that do): it is what lets a
box without TensorFlow explain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.bundle import Bundle, BundleError, load_bundle
from daemon.encoder import EDGE_INTERPRETER_MODULES, EncoderError, interpreter_class

SIGNATURES = ("logits", "layer_gradients", "image_gradients", "bottleneck_activations", "bottleneck_gradients")


class LiteRTBackend:
    """The backend contract on LiteRT over a bundle's exported explainer graph."""

    name = "litert"

    def __init__(self, bundle: Bundle | str | Path, threads: int):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        graph = self.bundle.manifest.get("explainer")
        if not isinstance(graph, dict) or not self.bundle.has("explainer"):
            raise BundleError(f"{self.bundle.path} has no explainer graph; add one with "
                              f"`explaincam export-explainer --bundle {self.bundle.path}`")
        missing = [k for k in ("batch", "tokens", "gradcam_layer", "bottleneck_layer", "signatures") if k not in graph]
        lacking = [s for s in SIGNATURES if s not in graph.get("signatures", ())]
        if missing or lacking:
            raise BundleError(f"{self.bundle.path}: the manifest's explainer entry lacks {', '.join(missing + lacking)}")
        path = self.bundle.file("explainer")
        try:
            self.interpreter = interpreter_class(EDGE_INTERPRETER_MODULES)(
                model_path=str(path), num_threads=max(1, int(threads)))
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"cannot load the explainer graph {path}: {exc}") from None
        except EncoderError as exc:
            raise BundleError(f"cannot run the explainer graph {path}: {exc}") from None
        present = self.interpreter.get_signature_list()
        absent = [s for s in SIGNATURES if s not in present]
        if absent:
            raise BundleError(f"{path} lacks the signatures {', '.join(absent)}")
        self.gradcam_layer = str(graph["gradcam_layer"])
        self.bottleneck_layer = str(graph["bottleneck_layer"])
        self._runners: dict = {}
        batch, height, width, _ = (int(d) for d in self._runner("logits").get_input_details()["images"]["shape"])
        self.batch = batch
        self.tokens = int(self._runner("logits").get_input_details()["tokens"]["shape"][1])
        if (batch, self.tokens) != (int(graph["batch"]), int(graph["tokens"])):
            raise BundleError(f"{path} takes batch {batch} and {self.tokens} tokens, but the manifest says "
                              f"{graph['batch']} and {graph['tokens']}")
        self.input_size = (height, width)

    def _runner(self, key: str):
        """The signature runner of one entry point (its tensors are allocated on first use)."""
        if key not in self._runners:
            self._runners[key] = self.interpreter.get_signature_runner(key)
        return self._runners[key]

    def _images(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (*self.input_size, 3) or len(images) == 0:
            raise ValueError(f"images must be (N>=1, {self.input_size[0]}, {self.input_size[1]}, 3), "
                             f"not {images.shape}")
        return images

    def _token_rows(self, tokens, count: int) -> tuple[np.ndarray, int]:
        """(count, T) int32 rows padded with 0 after their end, and their own length L."""
        rows = np.asarray(tokens, np.int32)
        if rows.ndim == 1:
            rows = np.broadcast_to(rows, (count, rows.size))
        if rows.ndim != 2 or len(rows) != count or rows.shape[1] == 0:
            raise ValueError(f"tokens must be (L,) or ({count}, L) with L >= 1, not {rows.shape}")
        length = rows.shape[1]
        if length > self.tokens:
            raise ValueError(f"token rows of length {length} exceed the explainer graph's {self.tokens} "
                             f"(the start token and up to {self.tokens - 1} words)")
        padded = np.zeros((count, self.tokens), np.int32)
        padded[:, :length] = rows
        return padded, length

    def _weights(self, weights, count: int, length: int) -> np.ndarray:
        """(count, T-1) float32 weights: the caller's (count, L-1), zero after."""
        weights = np.asarray(weights, np.float32)
        try:
            weights = np.broadcast_to(weights, (count, length - 1))
        except ValueError:
            raise ValueError(f"weights must be ({count}, {length - 1}) for token rows of length {length}, "
                             f"not {weights.shape}") from None
        padded = np.zeros((count, self.tokens - 1), np.float32)
        padded[:, :length - 1] = weights
        return padded

    def _run(self, key: str, outputs: tuple[str, ...], **inputs: np.ndarray) -> list[np.ndarray]:
        """Run an entry point over all rows in batches of B (the last padded); outputs in ``outputs`` order."""
        runner = self._runner(key)
        count = len(inputs["images"])
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for start in range(0, count, self.batch):
            rows = min(self.batch, count - start)
            chunk = {}
            for name, value in inputs.items():
                piece = value[start:start + rows]
                if rows < self.batch:
                    fill = np.zeros((self.batch - rows, *piece.shape[1:]), piece.dtype)
                    piece = np.concatenate([piece, fill])
                chunk[name] = np.ascontiguousarray(piece)
            result = runner(**chunk)
            for name in outputs:
                parts[name].append(result[name][:rows])
        return [np.concatenate(parts[name]).astype(np.float32, copy=False) for name in outputs]

    def logits(self, images, tokens) -> np.ndarray:
        """(N, L, V) logits; position t predicts word t."""
        images = self._images(images)
        rows, length = self._token_rows(tokens, len(images))
        (logits,) = self._run("logits", ("logits",), images=images, tokens=rows)
        return logits[:, :length]

    def _gradients(self, key: str, outputs: tuple[str, ...], images, tokens, weights) -> list[np.ndarray]:
        images = self._images(images)
        rows, length = self._token_rows(tokens, len(images))
        return self._run(key, outputs, images=images, tokens=rows, weights=self._weights(weights, len(images), length))

    def layer_gradients(self, images, tokens, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(activations, d score_i / d activations_i, scores) at the Grad-CAM layer."""
        return tuple(self._gradients("layer_gradients", ("activations", "gradients", "scores"),
                                     images, tokens, weights))

    def image_gradients(self, images, tokens, weights) -> tuple[np.ndarray, np.ndarray]:
        """(d score_i / d image_i (N, H, W, 3), scores (N,))."""
        return tuple(self._gradients("image_gradients", ("gradients", "scores"), images, tokens, weights))

    def bottleneck_activations(self, images) -> np.ndarray:
        """(N, h', w', C') activations of ACE's bottleneck layer."""
        (acts,) = self._run("bottleneck_activations", ("activations",), images=self._images(images))
        return acts

    def bottleneck_gradients(self, images, tokens, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(activations, d score_i / d activations_i, scores) at ACE's bottleneck layer."""
        return tuple(self._gradients("bottleneck_gradients", ("activations", "gradients", "scores"),
                                     images, tokens, weights))
