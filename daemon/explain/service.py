"""The explain service in the capture process: validate, queue, publish (no TensorFlow here).

``handle_request`` runs on the MQTT network thread and never waits: it validates the
request against the frame cache, answers errors and ``busy`` at once, and otherwise puts a
job on a bounded multiprocessing queue for the explainer process (``worker.serve``,
started lazily with ``spawn``, niced, gone after ``idle_exit_s`` without work and started
again by the next request). A result thread publishes each answer to the request's MQTT 5
Response Topic with its Correlation Data (else to the default response topic), writes
``explanation.png`` and ``explanation.json`` atomically to the snapshot folder and
publishes the PNG retained on the explain image topic. A crash of the explainer process
is answered as an ``internal`` error; the daemon goes on.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from daemon.explain.registry import ExplainOptions
from daemon.explain.requests import ErrorResponse, check_words, validate_request
from daemon.explain.worker import Job, WorkerSettings, serve
from daemon.mqtt import topic_problem
from daemon.snapshot import atomic_write

log = logging.getLogger("explaincam.explain")

RESULT_POLL_S = 0.25  # how often the result thread looks at the explainer process when idle


@dataclass
class _Pending:
    """Where and how to answer an accepted request."""

    request_id: str
    response_topic: str | None
    correlation_data: bytes | None
    received: float
    started: float | None = None


class ExplainService:
    """Answers explain requests of the capture process with a separate explainer process."""

    def __init__(self, config, bundle_path, snapshot_dir, publish: Callable, topics: dict,
                 frame_cache, model_name: str | None = None, remote=None):
        self.config = config
        self.publish = publish
        self.topics = topics
        self.frame_cache = frame_cache
        self.model_name = model_name
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.settings = WorkerSettings(
            bundle_path=str(bundle_path), nice=config.nice, idle_exit_s=config.idle_exit_s,
            threads=config.threads, gradcam_layer=config.gradcam_layer,
            options=ExplainOptions(batch_size=config.batch_size, smoothgrad_samples=config.smoothgrad_samples,
                                   ig_steps=config.ig_steps))
        self._context = multiprocessing.get_context("spawn")
        self._jobs = self._context.Queue(maxsize=config.queue_size)
        self._results = self._context.Queue()
        self._process = None
        self._process_took_jobs = False
        self._running: int | None = None
        self._pending: dict[int, _Pending] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._result_loop, name="explain-results", daemon=True)
        self._thread.start()
        # explain.mode remote/auto: a daemon.fleet.dispatcher.RemoteDispatcher for the fleet's workers
        self.remote = remote
        if remote is not None:
            remote.start(reply=self._reply, deliver=self._deliver)

    @property
    def worker_pid(self) -> int | None:
        """Process id of the running explainer process, or None while there is none."""
        with self._lock:
            alive = self._process is not None and self._process.is_alive()
            return self._process.pid if alive else None

    # --- the MQTT thread -------------------------------------------------------------

    def handle_request(self, payload: bytes, response_topic: str | None = None,
                       correlation_data: bytes | None = None) -> None:
        """Validate one request and queue it, or answer its error / ``busy`` at once."""
        received = time.monotonic()
        reply = _Pending(None, response_topic, correlation_data, received)
        try:
            outcome = self._accept(payload, reply)
        except Exception as exc:  # never let a request disturb the MQTT thread
            log.exception("explain request failed")
            outcome = ErrorResponse(reply.request_id, "internal", f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, ErrorResponse):
            log.info("explain request %r answered %s: %s", outcome.id, outcome.code, outcome.message)
            self._reply(outcome.payload(), reply)

    def _accept(self, payload: bytes, reply: _Pending) -> ErrorResponse | None:
        """Queue the request's job; an ErrorResponse when it cannot be."""
        request = validate_request(payload, self.config.max_request_bytes, self.config.default_methods)
        if isinstance(request, ErrorResponse):
            return request
        reply.request_id = request.id
        if request.frame == "latest":
            frame = self.frame_cache.latest()
            if frame is None:
                return ErrorResponse(request.id, "frame_not_cached", "no frame has been captioned yet")
        else:
            frame = self.frame_cache.get(request.frame)
            if frame is None:
                cached = self.frame_cache.frame_ids()
                held = f"frames {cached[0]}..{cached[-1]} are cached" if cached else "no frame is cached"
                return ErrorResponse(request.id, "frame_not_cached",
                                     f"frame {request.frame} is not (or no longer) cached; {held}")
        caption = frame.caption
        indices = check_words(request, caption.words, frame.frame_id, caption.caption)
        if isinstance(indices, ErrorResponse):
            return indices
        job = Job(next(self._keys), request.id, frame.frame_id, frame.image, caption.caption,
                  list(caption.tokens), indices, list(request.methods))
        if self.remote is not None and self.remote.takes():
            return self.remote.submit(job, reply)
        with self._lock:
            if self._stopping.is_set():
                return ErrorResponse(request.id, "internal", "the daemon is shutting down")
            self._ensure_worker()
            self._pending[job.key] = reply
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                del self._pending[job.key]
                return ErrorResponse(request.id, "busy",
                                     f"{self.config.queue_size} explanations are already waiting; try again later",
                                     frame.frame_id, caption.caption)
        log.info("explain request %r queued: frame %d, %d words, %s", request.id, frame.frame_id,
                 len(indices), ", ".join(request.methods))
        return None

    def _ensure_worker(self) -> None:
        """Start the explainer process if none is running (caller holds the lock)."""
        if self._process is not None and self._process.is_alive():
            return
        process = self._context.Process(target=serve, args=(self._jobs, self._results, self.settings),
                                        name="explaincam-explainer", daemon=True)
        process.start()
        self._process = process
        self._process_took_jobs = False
        log.info("explainer process started (pid %d)", self._process.pid)

    # --- the result thread -----------------------------------------------------------

    def _result_loop(self) -> None:
        """Answer finished jobs; notice an explainer process that ended or crashed."""
        while not self._stopping.is_set():
            try:
                message = self._results.get(timeout=RESULT_POLL_S)
            except queue.Empty:
                self._check_worker()
                continue
            except (EOFError, OSError):
                return
            try:
                self._on_message(message)
            except Exception:
                log.exception("cannot publish an explanation")

    def _on_message(self, message: tuple) -> None:
        """Handle one message of the explainer process."""
        kind, key = message[0], message[1]
        with self._lock:
            if kind == "started":
                self._running = key
                self._process_took_jobs = True
                if key in self._pending:
                    self._pending[key].started = time.monotonic()
                return
            self._running = None
            reply = self._pending.pop(key, None)
        if reply is None:
            return
        if kind == "failed":
            log.error("explanation %r failed: %s", reply.request_id, message[2])
            self._reply(ErrorResponse(reply.request_id, "internal", message[2]).payload(), reply)
            return
        payload, grid = message[2], message[3]
        now = time.monotonic()
        started = reply.started or now
        payload["timings_ms"].update(queue_ms=round((started - reply.received) * 1e3, 1),
                                     total_ms=round((now - reply.received) * 1e3, 1))
        self._deliver(payload, grid, reply)
        log.info("explanation %r published (%.0f ms)", reply.request_id, payload["timings_ms"]["total_ms"])

    def _deliver(self, payload: dict, grid: bytes, reply: _Pending) -> None:
        """Publish a finished explanation: the image (retained), the snapshot files, the answer."""
        self.publish(self.topics["image"], grid, qos=1, retain=True)
        self._write_snapshot(grid, dict(payload, model=self.model_name))
        self._reply(payload, reply, json.dumps(payload))

    def _check_worker(self) -> None:
        """After the explainer process ended: answer its lost job, restart it for queued ones."""
        with self._lock:
            process = self._process
            if process is None or process.is_alive() or self._stopping.is_set():
                return
            self._process = None
            code = process.exitcode
            lost = self._pending.pop(self._running, None) if self._running is not None else None
            self._running = None
            failed_to_start = code != 0 and not self._process_took_jobs
            stranded = []
            if failed_to_start:  # it would fail again: answer what waits instead of looping
                stranded = self._drain_jobs()
            elif self._pending:
                self._ensure_worker()
        if code != 0:
            log.error("explainer process ended with exit code %s", code)
        if lost is not None:
            self._reply(ErrorResponse(lost.request_id, "internal",
                                      f"the explainer process crashed (exit code {code}) while explaining; "
                                      "it will be restarted by the next request").payload(), lost)
        for reply in stranded:
            self._reply(ErrorResponse(reply.request_id, "internal",
                                      f"the explainer process could not start (exit code {code})").payload(), reply)

    def _drain_jobs(self) -> list[_Pending]:
        """Take every queued job off the queue; their replies (caller holds the lock)."""
        replies = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.key in self._pending:
                replies.append(self._pending.pop(job.key))
        return replies

    def _write_snapshot(self, grid: bytes, record: dict) -> None:
        """explanation.png and explanation.json (the response plus the model name), atomically.

        A failure is logged, not raised.
        """
        if self.snapshot_dir is None:
            return
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.snapshot_dir / "explanation.png", grid)
            atomic_write(self.snapshot_dir / "explanation.json", (json.dumps(record) + "\n").encode())
        except OSError as exc:
            log.error("cannot write the explanation to %s: %s", self.snapshot_dir, exc)

    def _reply(self, payload: dict, reply: _Pending, text: str | None = None) -> None:
        """Publish a response to the request's Response Topic (with its Correlation Data) or the default.

        An answer whose Response Topic cannot be published to (wildcards, say) is dropped with a log line.
        """
        topic = reply.response_topic or self.topics["response"]
        problem = topic_problem(topic)
        if problem is not None:
            log.warning("answer to explain request %r dropped: its Response Topic %r %s",
                        reply.request_id, topic, problem)
            return
        self.publish(topic, text or json.dumps(payload), qos=1, correlation_data=reply.correlation_data)

    # --- shutdown --------------------------------------------------------------------

    def stop(self, timeout: float = 2.0) -> None:
        """End the explainer process (waiting up to ``timeout`` s for it) and the result thread."""
        if self.remote is not None:
            self.remote.stop()
        with self._lock:
            self._stopping.set()
            process = self._process
            self._process = None
        if process is not None and process.is_alive():
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                pass
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
        self._thread.join(timeout)
        for q in (self._jobs, self._results):
            q.cancel_join_thread()
            q.close()
