"""What a config, a request or a command may say about explanations, without loading any of them.

The method names (and the module that implements each, which ``daemon.explain.registry``
imports on demand), the methods a request gets by default, the backends that can run the
float model, and how hard the methods work (``ExplainOptions``). A ground module: the
config schema (``daemon.config``) validates against it without importing ``daemon.explain``.
Adding a method is one module plus one line in ``METHODS``.
"""

from __future__ import annotations

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

BACKEND_CHOICES = ("auto", "litert", "tensorflow")  # what runs the explainer's float model (explain.backend)
DEFAULT_THREADS = 2  # threads of a backend (explain.threads, a worker's threads) unless told


@dataclass(frozen=True)
class ExplainOptions:
    """How hard the methods work: batch size and the sample counts of the sampling methods.

    These defaults are the config's too (``explain.batch_size``, ``smoothgrad_samples``, ``ig_steps``).
    """

    batch_size: int = 16  # images per forward/backward pass
    smoothgrad_samples: int = 16  # noisy copies per word (Smilkov et al. suggest 10-50)
    smoothgrad_noise: float = 0.15  # noise sigma as a share of the 0..255 input range
    ig_steps: int = 64  # points on the path from the black baseline (README: the completeness error it gives)
    seed: int = 0  # noise of SmoothGrad and RISE's masks, so repeated requests give the same map
    occlusion_steps: int = 11  # occlusion patch positions per axis: steps^2 frames through the int8 encoder
    rise_masks: int = 256  # RISE's random masks (frames through the int8 encoder)
    rise_grid: int = 7  # cells per side of a RISE mask before upsampling
    rise_keep: float = 0.5  # share of a RISE mask's cells that keep the frame
