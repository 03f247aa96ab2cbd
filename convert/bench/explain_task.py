"""The bench's explain child: each explanation method's time on one backend, first call and warm.
Run by convert/bench/child.py as ``python -m convert.bench.explain_task`` (a fresh process per backend).
"""

from __future__ import annotations

from convert.bench.child import serve_task
from convert.bench.measure import bench_frames, read_proc_status
from daemon.bundle import load_bundle
from daemon.config import ExplainConfig
from daemon.explain.explainer import Explainer
from daemon.explain_settings import FLOAT_METHODS


def explain_task(params: dict) -> dict:
    """Explain child: each float method's time (ms) for all words of one frame's caption on one backend, first and warm.

    The first call of a method in a fresh process pays for setting up its kernels at new
    batch shapes; ``warm`` is the second call, what a busy explainer answers in.
    """
    cfg = ExplainConfig()
    options = cfg.options()
    bundle = load_bundle(params["bundle"], verify=False)  # the parent verified it
    explainer = Explainer(bundle, options, cfg.gradcam_layer, params["backend"], params["threads"])
    frame = bench_frames(1, bundle.input_size)[0]
    tokens = params["explain_tokens"]
    first, warm = {}, {}
    for times in (first, warm):
        for name in FLOAT_METHODS:  # the int8 methods run on no backend: convert.bench.int8_task
            times[name] = explainer.explain(frame, tokens, None, [name]).timings_ms[f"{name}_ms"]
    return {"warm": warm, "first": first, "words": len(tokens), "rss": read_proc_status()}


if __name__ == "__main__":
    serve_task(explain_task)
