"""The explain service in the capture process: validate, queue, publish (no TensorFlow here).

``handle_request`` runs on the MQTT network thread and never waits: it validates the
request against the frame cache, answers errors and ``busy`` at once, and otherwise hands
a job to the explainer process (``worker.serve``, started lazily with ``spawn``, niced,
gone after ``idle_exit_s`` without work and started again by the next request). A result
thread publishes each answer to the request's MQTT 5 Response Topic with its Correlation
Data (else to the default response topic), writes ``explanation.png``,
``explanation.jpg`` (the frame) and ``explanation.json`` atomically to the snapshot folder and publishes the PNG retained on
the explain image topic, with its info (``made_at``) beside it.

Every explainer process gets channels of its own. When one dies (the OOM killer picks the
idle explainer first), is killed while explaining, or leaves waiting jobs untaken for
``STUCK_S``, the request it was answering gets an ``internal`` error and a fresh process
with fresh channels takes the waiting ones; the daemon goes on. At shutdown pending
requests are answered ``shutting_down`` and the process is terminated; the process also
ends itself within a second when the daemon is gone (``worker.serve``).

With ``explain.mode`` remote (or auto while a worker is present) an accepted request goes to
a fleet's workers instead (``remote``, a ``daemon.fleet.dispatcher.RemoteDispatcher``); their
answers are published by the same ``_deliver`` as a local one.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Callable

from daemon.contract import CameraTopics, explanation_info
from daemon.explain.requests import ErrorResponse, check_words, validate_request
from daemon.explain.worker import Job, WorkerSettings, serve
from daemon.files import write_atomically
from daemon.mqtt import topic_problem
from daemon.problems import RecurringProblem
from daemon.snapshot import encode_jpeg

log = logging.getLogger("explaincam.explain")

RESULT_POLL_S = 0.25  # how often the result thread looks at the explainer process when idle
STUCK_S = 60.0  # an explainer that leaves waiting jobs untaken this long (and runs none) is replaced
BACKGROUND_QUEUE = 4  # new events waiting for a background explanation; the oldest give way


@dataclass
class _Pending:
    """Where and how to answer an accepted request; ``job`` is kept until the explainer starts it."""

    request_id: str
    response_topic: str | None
    correlation_data: bytes | None
    received: float
    job: Job | None = None
    started: float | None = None
    image: object = None  # the frame explained (RGB uint8), for the snapshot page
    event_id: int | None = None  # the stored event explained, when the request named one
    background: bool = False  # a new event explained for the timeline (history.explain): nobody to answer


@dataclass
class _Worker:
    """One explainer process with channels of its own, made fresh for every process.

    A process killed while it waits in ``jobs.get`` leaves that queue's reader lock held
    for good, so a queue is never handed to a second process. ``results`` is the reading
    end of a one-way pipe whose writing end only the process holds: its death reads as
    end of file at once, and its writes fail (instead of blocking) once the daemon is gone.
    """

    process: object  # multiprocessing.Process
    jobs: object  # multiprocessing.Queue of Job (None asks the process to stop)
    results: object  # multiprocessing.connection.Connection
    last_sign: float  # monotonic time of the start or of the last message
    took_jobs: bool = False
    stuck: bool = False


class ExplainService:
    """Answers explain requests of the capture process with a separate explainer process."""

    def __init__(self, config, bundle_path, snapshot_dir, publish: Callable, topics: CameraTopics,
                 frame_cache, model_name: str | None = None, remote=None):
        self.config = config
        self.publish = publish
        self.topics = topics
        self.frame_cache = frame_cache
        self.model_name = model_name
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.settings = WorkerSettings(str(bundle_path), config)
        self._context = multiprocessing.get_context("spawn")
        _start_resource_tracker()
        self._worker: _Worker | None = None
        self._running: int | None = None
        self._pending: dict[int, _Pending] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # a worker was started: the result thread reads it at once
        self._write_problem = RecurringProblem(log, f"write the explanation files in {self.snapshot_dir}")
        #: the timeline's stored events (a daemon.history.service.HistoryService), when history is on
        self.history = None
        #: methods that explain each new event in the background (history.explain); [] = none
        self.background_methods: list[str] = []
        self._background: collections.deque = collections.deque(maxlen=BACKGROUND_QUEUE)  # (job, event_id)
        self.background_dropped = 0
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
            worker = self._worker
            return worker.process.pid if worker is not None and worker.process.is_alive() else None

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
        if request.event is not None:
            frame = self._event_frame(request.event, request.id)
            if isinstance(frame, ErrorResponse):
                return frame
            reply.event_id = request.event
        elif request.frame == "latest":
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
        reply.image = frame.image
        indices = check_words(request, caption.words, frame.frame_id, caption.caption)
        if isinstance(indices, ErrorResponse):
            return indices
        job = Job(next(self._keys), request.id, frame.frame_id, frame.image, caption.caption,
                  list(caption.tokens), indices, list(request.methods))
        if self.remote is not None and self.remote.takes():
            return self.remote.submit(job, reply)
        with self._lock:
            if self._stopping.is_set():
                return ErrorResponse(request.id, "shutting_down", "the daemon is shutting down; ask again later")
            waiting = sum(1 for p in self._pending.values() if p.started is None and not p.background)
            if waiting >= self.config.queue_size:
                return ErrorResponse(request.id, "busy",
                                     f"{self.config.queue_size} explanations are already waiting; try again later",
                                     frame.frame_id, caption.caption)
            reply.job = job
            self._pending[job.key] = reply
            if self._worker is None:
                self._worker = self._start_worker()
            if self._worker.process.is_alive():
                self._worker.jobs.put_nowait(job)
            # else it just died: the result thread replaces it and hands this job to the new one
        log.info("explain request %r queued: frame %d, %d words, %s", request.id, frame.frame_id,
                 len(indices), ", ".join(request.methods))
        return None

    def explain_in_background(self, event) -> None:
        """Queue a new event (a daemon.history.events.Event) to be explained with ``background_methods``
        behind every user's request, its maps kept with the event. Runs on the caption loop's thread: it
        takes no lock and starts nothing (the result thread hands the job on)."""
        if not self.background_methods or event.image is None or self.history is None or self._stopping.is_set():
            return
        job = Job(next(self._keys), f"event-{event.event_id}", event.first_frame_id, event.image, event.caption,
                  list(event.tokens), list(range(len(event.words))), list(self.background_methods))
        if len(self._background) == self._background.maxlen:
            self.background_dropped += 1
        self._background.append((job, event.event_id))  # a deque: thread-safe, the oldest gives way
        self._wake.set()

    def _dispatch_background(self) -> None:
        """Hand the explainer the oldest waiting background job, if it has nothing else (caller holds the lock):
        a user's request waits behind one background job at most."""
        if not self._background or self._pending or self._stopping.is_set():
            return
        try:
            job, event_id = self._background.popleft()
        except IndexError:
            return
        self._pending[job.key] = _Pending(job.request_id, None, None, time.monotonic(), job=job, event_id=event_id,
                                          background=True)
        if self._worker is None:
            self._worker = self._start_worker()
        if self._worker.process.is_alive():
            self._worker.jobs.put_nowait(job)

    def _event_frame(self, event_id: int, request_id):
        """A stored event's key frame as a cached frame, or the ErrorResponse saying why there is none."""
        if self.history is None:
            return ErrorResponse(request_id, "no_such_event", "history is off on this camera: no event is stored")
        frame = self.history.event_frame(event_id)
        if frame is None:
            return ErrorResponse(request_id, "no_such_event", f"event {event_id} is not (or no longer) stored")
        if frame.image is None:
            return ErrorResponse(request_id, "event_not_explainable",
                                 f"event {event_id} was kept without its lossless frame (history.max_frame_mb_per_day)")
        return frame

    def _start_worker(self) -> _Worker:
        """Start an explainer process with fresh channels (caller holds the lock)."""
        jobs = self._context.Queue()
        results, results_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=serve, args=(jobs, results_writer, self.settings, os.getpid()),
                                        name="explaincam-explainer", daemon=True)
        process.start()
        results_writer.close()  # only the explainer writes: its end of file is the process's end
        self._wake.set()
        log.info("explainer process started (pid %d)", process.pid)
        return _Worker(process, jobs, results, time.monotonic())

    # --- the result thread -----------------------------------------------------------

    def _result_loop(self) -> None:
        """Answer finished jobs; replace an explainer process that ended, crashed or got stuck."""
        while not self._stopping.is_set():
            with self._lock:
                self._dispatch_background()
                worker = self._worker
                self._wake.clear()
            if worker is None:
                self._wake.wait(RESULT_POLL_S)
                continue
            try:
                message = worker.results.recv() if worker.results.poll(RESULT_POLL_S) else None
            except (EOFError, OSError):  # the process ended and everything it sent has been read
                self._on_worker_end(worker)
                continue
            if message is None:
                self._check_stuck(worker)
                continue
            try:
                self._on_message(worker, message)
            except Exception:
                log.exception("cannot publish an explanation")

    def _on_message(self, worker: _Worker, message: tuple) -> None:
        """Handle one message of the explainer process."""
        kind, key = message[0], message[1]
        with self._lock:
            worker.last_sign = time.monotonic()
            if kind == "started":
                self._running = key
                worker.took_jobs = True
                if key in self._pending:
                    self._pending[key].started = time.monotonic()
                    self._pending[key].job = None
                return
            self._running = None
            reply = self._pending.pop(key, None)
            self._dispatch_background()
        if reply is None:
            return
        if reply.background:
            if kind == "failed":
                log.warning("the background explanation of event %d failed: %s", reply.event_id, message[2])
            else:
                self.history.keep_explanation(reply.event_id, list(reply_methods(message[2])), message[2])
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
        """Publish a finished explanation, local or a fleet worker's: the image and its info (retained),
        the snapshot files, the answer; an explained stored event keeps the answer (its maps)."""
        if reply.event_id is not None:
            payload["event_id"] = reply.event_id
            if self.history is not None:
                self.history.keep_explanation(reply.event_id, reply_methods(payload), payload)
        text = json.dumps(payload)
        info = explanation_info(payload, made_at=time.time())
        self.publish(self.topics.explain_image_info, json.dumps(info), qos=1, retain=True)
        self.publish(self.topics.explain_image, grid, qos=1, retain=True)
        self._write_snapshot(grid, dict(payload, model=self.model_name, made_at=info["made_at"], ts=round(time.time(), 3)),
                             reply.image)
        self._reply(payload, reply, text)

    def _check_stuck(self, worker: _Worker) -> None:
        """Kill an explainer process that has left waiting jobs untaken for STUCK_S (SIGSTOP, say)."""
        with self._lock:
            if self._worker is not worker or self._running is not None or worker.stuck:
                return
            waiting = [p.received for p in self._pending.values() if p.started is None]
            if not waiting or time.monotonic() - max(worker.last_sign, min(waiting)) < STUCK_S:
                return
            worker.stuck = True
        log.error("explainer process (pid %d) took no job for %.0f s: killing it", worker.process.pid, STUCK_S)
        worker.process.kill()

    def _on_worker_end(self, worker: _Worker) -> None:
        """After an explainer process ended: answer its lost job, start a fresh one for waiting jobs."""
        worker.process.join(1.0)
        if worker.process.is_alive():  # it closed its pipe but lives on: it is of no use any more
            worker.process.kill()
            worker.process.join(1.0)
        code = worker.process.exitcode
        with self._lock:
            if self._worker is worker:
                self._worker = None
            lost = self._pending.pop(self._running, None) if self._running is not None else None
            self._running = None
            failed_to_start = code != 0 and not worker.took_jobs and not worker.stuck
            stranded, restarted = [], False
            if self._stopping.is_set():
                pass  # stop() answers what is pending
            elif failed_to_start:  # it would fail again: answer what waits instead of looping
                stranded = list(self._pending.values())
                self._pending.clear()
            elif self._pending:
                self._worker, restarted = self._start_worker(), True
                for key in sorted(self._pending):
                    self._worker.jobs.put_nowait(self._pending[key].job)
        _close_channels(worker)
        if code != 0 and not self._stopping.is_set():
            log.error("explainer process (pid %d) %s%s", worker.process.pid, _exit_reason(code),
                      "; a fresh one answers the waiting requests" if restarted else "")
        if lost is not None:
            self._reply(ErrorResponse(lost.request_id, "internal",
                                      f"the explainer process crashed ({_exit_reason(code)}) while explaining; "
                                      "it will be restarted by the next request").payload(), lost)
        for reply in stranded:
            self._reply(ErrorResponse(reply.request_id, "internal",
                                      f"the explainer process could not start ({_exit_reason(code)})").payload(),
                        reply)

    def _write_snapshot(self, grid: bytes, record: dict, image) -> None:
        """explanation.png, explanation.jpg (the frame) and explanation.json (the response plus the
        model name and when it was made), atomically; the page reads the JSON last, so it is written last.

        A failure is logged, not raised.
        """
        if self.snapshot_dir is None:
            return
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.snapshot_dir / "explanation.png", grid)
            if image is not None:
                write_atomically(self.snapshot_dir / "explanation.jpg", encode_jpeg(image, 92))
            write_atomically(self.snapshot_dir / "explanation.json", (json.dumps(record) + "\n").encode())
        except OSError as exc:
            self._write_problem.failed(exc)
        else:
            self._write_problem.succeeded()

    def _reply(self, payload: dict, reply: _Pending, text: str | None = None) -> None:
        """Publish a response to the request's Response Topic (with its Correlation Data) or the default.

        An answer whose Response Topic cannot be published to (wildcards, say) is dropped with a log line;
        a background explanation has nobody to answer.
        """
        if reply.background:
            return
        topic = reply.response_topic or self.topics.explain_response
        problem = topic_problem(topic)
        if problem is not None:
            log.warning("answer to explain request %r dropped: its Response Topic %r %s",
                        reply.request_id, topic, problem)
            return
        self.publish(topic, text or json.dumps(payload), qos=1, correlation_data=reply.correlation_data)

    # --- shutdown --------------------------------------------------------------------

    def stop(self, timeout: float = 2.0) -> None:
        """Answer every pending request ``shutting_down``, end the explainer process and the result thread.

        The explainer has nothing to save: it is terminated at once (killed after ``timeout`` s).
        Requests waiting for a fleet's workers are answered ``shutting_down`` too.
        """
        if self.remote is not None:
            self.remote.stop()
        with self._lock:
            self._stopping.set()
            worker, self._worker = self._worker, None
            pending = sorted(self._pending.items())
            self._pending.clear()
            self._running = None
        for _, reply in pending:
            self._reply(ErrorResponse(reply.request_id, "shutting_down",
                                      "the daemon is shutting down; ask again once it is back").payload(), reply)
        if worker is not None:
            worker.process.terminate()
            worker.process.join(timeout)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
        self._wake.set()
        self._thread.join(timeout)
        if worker is not None:
            _close_channels(worker)

    def kill_worker(self) -> None:
        """Kill the explainer process at once, without locks (a second SIGTERM's signal handler)."""
        worker = self._worker
        if worker is not None and worker.process.pid is not None:
            try:
                os.kill(worker.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def reply_methods(payload: dict) -> list[str]:
    """The methods an explain response holds maps of."""
    return explanation_info(payload, 0)["methods"]


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (it watches the queues' semaphores) ignoring SIGHUP.

    ``systemctl kill -s HUP`` and a closed terminal signal every process of the daemon; the
    tracker would die of it, and its successor print a traceback for every semaphore it
    never saw. An ignored signal stays ignored across exec, so it is ignored while the
    tracker starts (only the main thread can change a signal's disposition).
    """
    if threading.current_thread() is not threading.main_thread():
        resource_tracker.ensure_running()
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _close_channels(worker: _Worker) -> None:
    """Close an ended process's channels; jobs still in its queue are dropped (they were resubmitted)."""
    while True:  # a job left in the pipe would keep the queue's feeder thread blocked for good
        try:
            worker.jobs.get_nowait()
        except (queue.Empty, OSError, EOFError, ValueError):  # ValueError: closed already
            break
    worker.jobs.cancel_join_thread()
    worker.jobs.close()
    worker.results.close()


def _exit_reason(code: int | None) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL`` for a process exit code."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
