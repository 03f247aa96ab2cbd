"""The explainer process: loads the float model once and answers jobs until it has been idle.

``serve`` is the process's main function (multiprocessing ``spawn``). This module imports
no TensorFlow itself, so the capture process can name ``serve`` as the target; the process
imports ``daemon.explain.explainer`` (and with it TensorFlow) only once it runs.

Messages to the service, on the results queue:
``("started", key)``, ``("done", key, response, grid_png)``, ``("failed", key, message)``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

from daemon.explain.registry import CONCEPT_METHODS, ExplainOptions


@dataclass
class Job:
    """One accepted request: the frame as published and what to explain in it."""

    key: int
    request_id: str
    frame_id: int
    image: np.ndarray  # RGB uint8 at the model's input size
    caption: str
    tokens: list[int]  # published caption's word tokens (no start/end)
    indices: list[int]
    methods: list[str]


@dataclass(frozen=True)
class WorkerSettings:
    """What the explainer process needs to start: bundle, niceness, idle timeout, effort."""

    bundle_path: str
    nice: int = 10
    idle_exit_s: float = 300.0
    threads: int = 2
    gradcam_layer: str | None = None
    options: ExplainOptions = ExplainOptions()


def answer(explainer, job: Job) -> tuple[dict, bytes]:
    """The ok response (without service timings) and the grid PNG of one job."""
    from daemon.explain.requests import response

    started = time.perf_counter()
    float_tokens = explainer.float_caption(job.image)
    float_ms = (time.perf_counter() - started) * 1e3
    heatmap_methods = [m for m in job.methods if m not in CONCEPT_METHODS]
    explanation = explainer.explain(job.image, job.tokens, job.indices, heatmap_methods)
    render_started = time.perf_counter()
    words = explanation.word_records()
    grid = explanation.grid_png(explainer.prepare(job.image).astype(np.uint8))
    timings = {"float_caption_ms": round(float_ms, 1), **explanation.timings_ms,
               "render_ms": round((time.perf_counter() - render_started) * 1e3, 1)}
    payload = response(job.request_id, "ok", frame_id=job.frame_id, caption=job.caption,
                       float_caption=explainer.vocab.decode(float_tokens), words=words, timings_ms=timings)
    if "ace" in job.methods:  # ACE adds its "ace" block and a row of the picture (daemon.explain.ace)
        from daemon.explain.ace import add_to_response

        grid = add_to_response(explainer, job.image, job.tokens, job.indices, payload, grid)
    return payload, grid


@contextlib.contextmanager
def native_stderr_silenced():
    """Send what native libraries write to file descriptor 2 to /dev/null while the block runs.

    Exceptions still propagate (and are reported as failed jobs); only the chatter goes.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def serve(jobs, results, settings: WorkerSettings) -> None:
    """Process main: nice itself, load the model on the first job, answer jobs, exit when idle.

    A ``None`` job asks it to stop. An exception while explaining is answered as a failed
    job and the process goes on; only a crash ends it (the service reports that).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the daemon, which ends this process
    try:
        os.nice(settings.nice)
    except OSError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # no oneDNN notice; the service unit sets the same
    explainer = None
    while True:
        try:
            job = jobs.get(timeout=settings.idle_exit_s)
        except queue.Empty:
            return
        if job is None:
            return
        results.put(("started", job.key))
        try:
            load_ms = 0.0
            if explainer is None:
                started = time.perf_counter()
                with native_stderr_silenced():  # TensorFlow's CUDA/CPU notices bypass its log level
                    explainer = _load(settings)
                load_ms = (time.perf_counter() - started) * 1e3
            payload, grid = answer(explainer, job)
            if load_ms:
                payload["timings_ms"]["load_ms"] = round(load_ms, 1)
            results.put(("done", job.key, payload, grid))
        except Exception as exc:  # reported to the requester as an `internal` error
            results.put(("failed", job.key, f"{type(exc).__name__}: {exc}"))


def _load(settings: WorkerSettings):
    """Import TensorFlow with the configured thread counts and load the explainer."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise RuntimeError(f"explanations need TensorFlow, which this Python lacks ({exc}); install the explain "
                           "extra: pip install -e '.[explain]' in a clone, pip install 'explaincam[explain]' "
                           "otherwise") from None

    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised by an earlier, failed load
        pass
    from daemon.explain.explainer import Explainer

    return Explainer(settings.bundle_path, settings.options, settings.gradcam_layer)
