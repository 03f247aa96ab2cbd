"""The explanation methods a request may name, and the module that implements each.

A method module defines ``METHOD``, an object with ``name`` and ``run(explainer, subject)``
(see ``daemon.explain.base``). Adding a method is one module plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

METHODS: dict[str, str] = {
    "gradcam": "daemon.explain.gradcam",
    "gradcampp": "daemon.explain.gradcampp",
    "saliency": "daemon.explain.saliency",
    "smoothgrad": "daemon.explain.smoothgrad",
    "integrated_gradients": "daemon.explain.integrated_gradients",
    "ace": "daemon.explain.ace",
    "occlusion": "daemon.explain.occlusion",
    "rise": "daemon.explain.rise",
}

# The methods that draw a heatmap per word (what the faithfulness metrics of ``explaincam
# evaluate`` score); ACE answers concepts, and evaluate scores it by its removal test.
MAP_METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "saliency", "smoothgrad", "integrated_gradients",
                                 "occlusion", "rise")

# Which model each method explains. The perturbation methods run the deployed int8 encoder
# and the numpy step decoder (no gradients, no explainer graph, no TensorFlow); the others
# need gradients, so they explain the bundle's float32 twin on a backend.
INT8_METHODS: tuple[str, ...] = ("occlusion", "rise")
FLOAT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in INT8_METHODS)

DEFAULT_METHODS = ["gradcam", "saliency"]  # what a request that names no method gets (explain.default_methods)


def load_method(name: str):
    """The ``METHOD`` object of a known method (imports its module; no TensorFlow)."""
    if name not in METHODS:
        raise KeyError(f"unknown explanation method {name!r}")
    return importlib.import_module(METHODS[name]).METHOD


@dataclass(frozen=True)
class ExplainOptions:
    """How hard the methods work: batch size and the sample counts of the sampling methods.

    These defaults are the config's too (``explain.batch_size``, ``smoothgrad_samples``, ``ig_steps``).
    """

    batch_size: int = 16  # images per forward/backward pass
    smoothgrad_samples: int = 16  # noisy copies per word (Smilkov et al. suggest 10-50)
    smoothgrad_noise: float = 0.15  # noise sigma as a share of the 0..255 input range
    ig_steps: int = 64  # points on the path from the black baseline: median completeness error 3.4% on
    # held-out scenes (8.5% at 32, 1.8% at 128; see daemon.explain.integrated_gradients)
    seed: int = 0  # noise of SmoothGrad and RISE's masks, so repeated requests give the same map
    occlusion_steps: int = 11  # occlusion patch positions per axis: steps^2 frames through the int8 encoder
    rise_masks: int = 256  # RISE's random masks (frames through the int8 encoder)
    rise_grid: int = 7  # cells per side of a RISE mask before upsampling
    rise_keep: float = 0.5  # share of a RISE mask's cells that keep the frame
