"""The explainer process: loads the float model once and answers jobs until it has been idle.

``serve`` is the process's main function (multiprocessing ``spawn``); the capture process's
``daemon.explain.local.LocalDispatcher`` starts and supervises it. This module imports no
TensorFlow, so the capture process can name ``serve`` as the target; the process loads the
explainer's backend (LiteRT, or TensorFlow as the fallback) only once it runs.

Messages to the dispatcher, on the results pipe:
``("started", key)``, ``("done", key, response, grid_png)``, ``("failed", key, message, error code)``.

The process explains only the bundle the capture process loaded: it checks the sha256 of
the bundle's manifest (which hashes every other file) against the capture process's before
and after loading it. A bundle replaced on disk since the daemon started (an upgrade copied
over) is answered with error ``bundle_changed``, never with another model's explanation.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass

from daemon.bundle import manifest_sha256
from daemon.config import ExplainConfig
from daemon.explain.explainer import Explainer
from daemon.explain.job import answer_job

PARENT_CHECK_S = 1.0  # how often the explainer looks whether the daemon is still there
BUNDLE_CHANGED = "bundle_changed"


class BundleChangedError(Exception):
    """The bundle on disk is not the one the capture process loaded (its manifest's sha256 differs)."""


@dataclass(frozen=True)
class ProcessSettings:
    """What the explainer process needs to start: the bundle, the sha256 of its manifest as the capture
    process loaded it, and the ``explain`` section of the config (backend, threads, niceness, idle
    timeout, effort)."""

    bundle_path: str
    explain: ExplainConfig
    bundle_sha256: str


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


def serve(jobs, results, settings: ProcessSettings, parent_pid: int) -> None:
    """Process main: nice itself, load the model on the first job, answer jobs, exit when idle.

    ``jobs`` is a queue of Job (``None`` asks it to stop); ``results`` the writing end of a
    pipe to the dispatcher. An exception while explaining is answered as a failed job and the
    process goes on. It ends itself when the daemon ``parent_pid`` is gone (checked every
    PARENT_CHECK_S, also while explaining) or its results can no longer be written, and it
    ignores SIGHUP and SIGINT (a closed terminal or Ctrl-C reaches the whole process group:
    the daemon decides when the explainer stops).
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="parent-watch", daemon=True).start()
    try:
        os.nice(settings.explain.nice)
    except OSError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # no oneDNN notice; the service unit sets the same
    explainer = None
    while True:
        try:
            job = jobs.get(timeout=settings.explain.idle_exit_s)
        except queue.Empty:
            return
        if job is None or not _send(results, ("started", job.key)):
            return
        try:
            load_ms = 0.0
            if explainer is None:
                started = time.perf_counter()
                with native_stderr_silenced():  # TensorFlow's CUDA/CPU notices bypass its log level
                    explainer = load_explainer(settings)
                load_ms = (time.perf_counter() - started) * 1e3
            payload, grid = answer_job(explainer, job)
            if load_ms:
                payload["timings_ms"]["load_ms"] = round(load_ms, 1)
            message = ("done", job.key, payload, grid)
        except BundleChangedError as exc:
            message = ("failed", job.key, str(exc), BUNDLE_CHANGED)
        except Exception as exc:  # reported to the requester as an `internal` error
            message = ("failed", job.key, f"{type(exc).__name__}: {exc}", "internal")
        if not _send(results, message):
            return


def _send(results, message: tuple) -> bool:
    """Write one message to the dispatcher; False when nobody reads any more (the daemon is gone)."""
    try:
        results.send(message)
    except OSError:  # BrokenPipeError: the daemon's end is closed
        return False
    return True


def _exit_when_orphaned(parent_pid: int) -> None:
    """Thread: end the process at once when the daemon that started it is gone (killed, say)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def load_explainer(settings: ProcessSettings):
    """The explainer on the configured backend (LiteRT needs no TensorFlow import), of the very bundle
    the capture process loaded; BundleChangedError when the one on disk is another."""
    _check_bundle(settings, lambda: manifest_sha256(settings.bundle_path))
    config = settings.explain
    explainer = Explainer(settings.bundle_path, config.options(), config.gradcam_layer, config.backend, config.threads)
    _check_bundle(settings, lambda: explainer.bundle.manifest_sha256)  # swapped while it loaded
    return explainer


def _check_bundle(settings: ProcessSettings, read_sha256) -> None:
    """BundleChangedError unless ``read_sha256()`` is the manifest sha256 the capture process loaded."""
    try:
        found = read_sha256()
    except OSError as exc:
        found = f"unreadable: {exc.strerror or exc}"
    if found != settings.bundle_sha256:
        now = found if found.startswith("unreadable") else f"{found[:12]}…"
        raise BundleChangedError(
            f"the model bundle {settings.bundle_path} changed on disk since the daemon loaded it (manifest sha256 "
            f"{settings.bundle_sha256[:12]}… then, {now} now); restart to use the new bundle")
