"""The backend seam: what the explanation methods ask of a model, and which backend answers.

Methods (Grad-CAM, Grad-CAM++, saliency, SmoothGrad, Integrated Gradients, ACE) ask a
``Backend`` for logits and gradients and do not know which one answers:

- ``LiteRTBackend`` (``daemon.explain.backends.litert``) runs the bundle's
  ``explainer_float.tflite`` (float32, builtin ops only) on the LiteRT interpreter and never
  imports TensorFlow;
- ``TensorFlowBackend`` (``daemon.explain.backends.tensorflow``) runs ``captioner.keras``
  under a GradientTape: the fallback for bundles without the graph.

``load_backend`` picks one: ``auto`` takes LiteRT when the bundle's manifest names an
``explainer`` graph, else TensorFlow. This module imports neither.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

from daemon.explain.backends.litert import LiteRTBackend
from daemon.explain_settings import BACKEND_CHOICES, DEFAULT_THREADS, ExplainOptions


class BackendError(Exception):
    """The chosen backend cannot run here; the message says what to do."""


class Backend(Protocol):
    """Logits and gradients of a bundle's full-precision captioner, all numpy.

    ``images`` are (N, H, W, 3) float32 0..255 RGB at the model's input size; ``tokens`` are
    int32 teacher-forced input rows ``[start, w0, ..., w_{L-2}]``, (L,) shared by every
    image or (N, L) one row per image. ``weights`` (N, L-1) float32 weight the
    log-probability of word t (token ``tokens[t+1]``, predicted at logits position t) in
    row i's score: ``score_i = sum_t weights[i, t] * log_softmax(logits[i, t])[tokens_i[t+1]]``.
    A word target is one-hot, the whole caption all ones. Rows are independent; any N >= 1.
    """

    name: str  # "litert" | "tensorflow"
    input_size: tuple[int, int]  # (H, W) of the model input
    gradcam_layer: str  # the layer whose activations layer_gradients returns
    bottleneck_layer: str  # ACE's bottleneck layer

    def logits(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(N, L, V) float32 logits; position t predicts word t."""

    def layer_gradients(self, images: np.ndarray, tokens: np.ndarray,
                        weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(acts, d score_i / d acts_i, scores): Grad-CAM layer activations and gradients (N, h, w, C), scores (N,)."""

    def image_gradients(self, images: np.ndarray, tokens: np.ndarray,
                        weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d score_i / d image_i (N, H, W, 3), scores (N,))."""

    def bottleneck_activations(self, images: np.ndarray) -> np.ndarray:
        """(N, h', w', C') activations of ACE's bottleneck layer."""

    def bottleneck_gradients(self, images: np.ndarray, tokens: np.ndarray,
                             weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(acts, d score_i / d acts_i, scores) at ACE's bottleneck layer."""


def token_rows(tokens, count: int) -> np.ndarray:
    """Teacher-forced token rows as an (N, L) int32 array: a shared (L,) row is repeated ``count`` times."""
    rows = np.asarray(tokens, np.int32)
    if rows.ndim == 1:
        rows = np.broadcast_to(rows, (count, rows.size))
    if rows.ndim != 2 or len(rows) != count:
        raise ValueError(f"tokens must be (L,) or ({count}, L), not {rows.shape}")
    return np.ascontiguousarray(rows)


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def explainer_graph(bundle) -> dict | None:
    """The manifest's ``explainer`` entry (the exported LiteRT graph), or None when the bundle has none."""
    entry = bundle.manifest.get("explainer")
    return entry if isinstance(entry, dict) and entry.get("file") else None


def _litert_problem(bundle, gradcam_layer: str | None) -> str | None:
    """Why the LiteRT backend cannot serve this bundle and Grad-CAM layer, or None if it can."""
    graph = explainer_graph(bundle)
    if graph is None:
        return (f"the bundle {bundle.path} has no explainer graph (explainer_float.tflite); "
                f"add one with `explaincam export-explainer --bundle {bundle.path}`")
    if gradcam_layer and gradcam_layer != graph.get("gradcam_layer"):
        return (f"the bundle's explainer graph computes Grad-CAM at {graph.get('gradcam_layer')!r}, "
                f"not at the configured layer {gradcam_layer!r}; only the tensorflow backend can use another layer")
    return None


def choose_backend(bundle, choice: str = "auto", gradcam_layer: str | None = None) -> str:
    """The backend ``load_backend`` would load: "litert" or "tensorflow"; BackendError when the choice is impossible."""
    if choice not in BACKEND_CHOICES:
        raise BackendError(f"unknown explain backend {choice!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    litert_problem = _litert_problem(bundle, gradcam_layer)
    if choice == "litert" or (choice == "auto" and litert_problem is None):
        if litert_problem is not None:
            raise BackendError(f"explain backend litert: {litert_problem}")
        return "litert"
    why = f"{litert_problem}, and " if choice == "auto" else ""
    if not bundle.has("captioner"):
        raise BackendError(f"explain backend tensorflow: {why}the bundle {bundle.path} has no captioner.keras")
    if not tensorflow_installed():
        raise BackendError(f"explain backend tensorflow: {why}TensorFlow is not installed; "
                           "install it with `pip install 'explaincam[explain]'`")
    return "tensorflow"


def load_backend(bundle, choice: str = "auto", threads: int = DEFAULT_THREADS, gradcam_layer: str | None = None,
                 batch_size: int = ExplainOptions.batch_size) -> Backend:
    """The backend ``choice`` ("auto" | "litert" | "tensorflow") for a loaded bundle.

    ``auto``: LiteRT when the manifest names an explainer graph (and no other Grad-CAM
    layer is asked for), else TensorFlow. Raises BackendError with what to do when the
    chosen backend cannot run (no graph, TensorFlow not installed).
    """
    if choose_backend(bundle, choice, gradcam_layer) == "litert":
        return LiteRTBackend(bundle, threads=threads)
    from daemon.explain.backends.tensorflow import TensorFlowBackend  # TensorFlow: only when this backend is chosen

    return TensorFlowBackend(bundle, threads=threads, gradcam_layer=gradcam_layer, batch_size=batch_size)
