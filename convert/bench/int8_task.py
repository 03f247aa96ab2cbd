"""The bench's int8 explanation child: occlusion and RISE warm times on an 8-word caption with no
TensorFlow in the process, and how well the float twin's maps agree with the int8 occlusion maps.
Run by convert/bench/child.py as ``python -m convert.bench.int8_task`` (a fresh process).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from convert.bench.child import serve_task
from convert.faithfulness import pearson
from daemon.bundle import load_bundle
from daemon.config import ExplainConfig
from daemon.explain.explainer import Explainer
from daemon.explain_settings import INT8_METHODS
from daemon.scenes import scene_at

TIMING_SEED = 2727  # scenes searched for a caption of the wanted length
AGREEMENT_SEED = 5150  # held-out scenes of the float-vs-int8 agreement
AGREEMENT_METHODS = ("gradcam", "gradcampp", "saliency")  # the float methods cheap enough for the bench
REPEATS = 5  # warm calls per method; the median is reported


def frame_with_caption_of(explainer: Explainer, words: int) -> tuple[np.ndarray, list[int]]:
    """The first generated scene (seed TIMING_SEED) captioned with ``words`` words, and its tokens."""
    for index in range(500):
        scene = scene_at(TIMING_SEED, index)
        if len(scene.caption.split()) == words:
            return scene.image, explainer.vocab.encode(scene.caption)
    raise ValueError(f"no scene of seed {TIMING_SEED} has a {words}-word caption")


def heavy_modules() -> list[str]:
    """TensorFlow and Keras modules loaded in this process (none is the point of the int8 methods)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))


def int8_task(params: dict) -> dict:
    """Int8 child: warm and first-call ms of occlusion and RISE (default settings, all words of an
    ``words``-word caption) and the warm call's CPU time (all threads: what the call costs however
    busy the box is), whether TensorFlow was imported, then the float-vs-int8 agreement."""
    cfg = ExplainConfig()
    bundle = load_bundle(params["bundle"], verify=False)  # the parent verified it
    explainer = Explainer(bundle, cfg.options(), cfg.gradcam_layer, params["backend"], params["threads"])
    image, tokens = frame_with_caption_of(explainer, params["words"])
    first, warm, cpu = {}, {}, {}
    for name in INT8_METHODS:
        first[name] = explainer.explain(image, tokens, None, [name]).timings_ms[f"{name}_ms"]
        walls, cpus = [], []
        for _ in range(REPEATS):
            started = time.process_time()
            walls.append(explainer.explain(image, tokens, None, [name]).timings_ms[f"{name}_ms"])
            cpus.append((time.process_time() - started) * 1e3)
        warm[name], cpu[name] = statistics.median(walls), round(statistics.median(cpus), 1)
    result = {"words": len(tokens), "warm_ms": warm, "first_ms": first, "warm_cpu_ms": cpu,
              "tensorflow_modules": heavy_modules(),
              "settings": {"occlusion_steps": explainer.options.occlusion_steps,
                           "rise_masks": explainer.options.rise_masks, "batch": explainer.options.batch_size,
                           "threads": params["threads"]}}
    if explainer.backend is None:
        result["agreement_error"] = explainer.backend_problem
        return result
    agreement = defaultdict(list)
    for index in range(params["agreement_scenes"]):
        scene = scene_at(AGREEMENT_SEED, index)
        words = explainer.vocab.encode(scene.caption)
        explanation = explainer.explain(scene.image, words, None, [*AGREEMENT_METHODS, "occlusion"])
        for method in AGREEMENT_METHODS:
            agreement[method] += [pearson(m, o) for m, o in zip(explanation.maps[method],
                                                                 explanation.maps["occlusion"])]
    result["agreement_with_int8_occlusion"] = {
        m: {"mean": round(float(np.mean(v)), 3), "median": round(float(np.median(v)), 3),
            "min": round(float(np.min(v)), 3), "words": len(v)} for m, v in agreement.items()}
    result["agreement_backend"] = explainer.backend.name
    return result


if __name__ == "__main__":
    serve_task(int8_task)
