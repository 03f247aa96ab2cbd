"""This box's explainer: accepted jobs explained in a process of its own, supervised here.

``LocalDispatcher`` has the interface of the fleet's ``RemoteDispatcher`` (``start``,
``takes``, ``submit``, ``stop``): the explain service hands it the jobs it accepted and gets
each answer back through ``deliver`` (a finished explanation) or ``reply`` (an error). The
explainer process (``daemon.explain.process.serve``) is started with ``spawn`` on the first
job, niced, ends itself after ``idle_exit_s`` without work and is started again by the next
job. A result thread reads what the process sends.

Every explainer process gets channels of its own. When one dies (the OOM killer picks the
idle explainer first), is killed while explaining, or leaves waiting jobs untaken for
``STUCK_S``, the request it was answering gets an ``internal`` error and a fresh process
with fresh channels takes the waiting ones; the daemon goes on. At shutdown waiting
requests are answered ``shutting_down`` and the process is terminated; the process also
ends itself within a second when the daemon is gone (``process.serve``).

Background jobs (``submit_background``: new events of the timeline, explained for the
record) wait apart and go to the process only when no request waits or runs: a user's
request waits behind one background job at most. The newest ``BACKGROUND_QUEUE`` wait.
"""

from __future__ import annotations

import collections
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

from daemon.bundle import manifest_sha256
from daemon.explain.job import Job
from daemon.explain.process import BUNDLE_CHANGED, ProcessSettings, serve
from daemon.explain.requests import ErrorResponse

log = logging.getLogger("explaincam.explain")

RESULT_POLL_S = 0.25  # how often the result thread looks at the explainer process when idle
STUCK_S = 60.0  # an explainer that leaves waiting jobs untaken this long (and runs none) is replaced
BACKGROUND_QUEUE = 4  # background jobs waiting at most; the oldest gives way


@dataclass
class _LocalJob:
    """An accepted job and where to answer it; ``job`` is kept until the explainer starts it."""

    job: Job | None
    reply: object  # the explain service's pending request: request id, Response Topic, Correlation Data, received
    started: float | None = None


@dataclass
class _ExplainerProcess:
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


class LocalDispatcher:
    """Explains accepted jobs in this box's explainer process, one at a time, ``queue_size`` waiting at most."""

    def __init__(self, config, bundle_path: str | Path, bundle_sha256: str | None = None):
        """``config`` is the ExplainConfig; the process explains the bundle at ``bundle_path`` whose
        manifest has ``bundle_sha256`` (the one the capture process loaded; default: the one on disk
        now), or answers ``bundle_changed``."""
        self.config = config
        self.settings = ProcessSettings(str(bundle_path), config, bundle_sha256 or manifest_sha256(bundle_path))
        self._bundle_changed_said = False
        self._context = multiprocessing.get_context("spawn")
        _start_resource_tracker()
        self._explainer: _ExplainerProcess | None = None
        self._running: int | None = None  # key of the job the process explains now
        self._pending: dict[int, _LocalJob] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # a process was started: the result thread reads it at once
        self._reply: Callable | None = None
        self._deliver: Callable | None = None
        self._background: collections.deque = collections.deque(maxlen=BACKGROUND_QUEUE)  # (job, reply)
        self.background_dropped = 0
        self._thread = threading.Thread(target=self._result_loop, name="explain-results", daemon=True)

    def start(self, reply: Callable, deliver: Callable) -> None:
        """Start the result thread. The explain service's ``reply(payload, pending)`` answers a requester;
        its ``deliver(payload, grid, pending)`` publishes a finished explanation."""
        self._reply, self._deliver = reply, deliver
        self._thread.start()

    def takes(self) -> bool:
        """Whether the next request comes here: always (the service asks a fleet first when it has one)."""
        return True

    @property
    def explainer_pid(self) -> int | None:
        """Process id of the running explainer process, or None while there is none."""
        with self._lock:
            explainer = self._explainer
            return explainer.process.pid if explainer is not None and explainer.process.is_alive() else None

    def submit(self, job: Job, reply) -> ErrorResponse | None:
        """Queue an accepted job for the explainer process; an ErrorResponse (busy, shutting_down) when it cannot."""
        with self._lock:
            if self._stopping.is_set():
                return ErrorResponse(job.request_id, "shutting_down", "the daemon is shutting down; ask again later")
            waiting = sum(1 for p in self._pending.values() if p.started is None and not _is_background(p))
            if waiting >= self.config.queue_size:
                return ErrorResponse(job.request_id, "busy",
                                     f"{self.config.queue_size} explanations are already waiting; try again later",
                                     job.frame_id, job.caption)
            self._pending[job.key] = _LocalJob(job, reply)
            if self._explainer is None:
                self._explainer = self._start_explainer()
            if self._explainer.process.is_alive():
                self._explainer.jobs.put_nowait(job)
            # else it just died: the result thread replaces it and hands this job to the new one
        log.info("explain request %r queued: frame %d, %d words, %s", job.request_id, job.frame_id,
                 len(job.indices), ", ".join(job.methods))
        return None

    def submit_background(self, job: Job, reply) -> None:
        """Queue a job that goes to the process only when nothing else waits or runs. Takes no lock and
        starts nothing (the caption loop calls it): the result thread hands it on."""
        if self._stopping.is_set():
            return
        if len(self._background) == self._background.maxlen:
            self.background_dropped += 1
        self._background.append((job, reply))  # a deque: thread-safe, the oldest gives way
        self._wake.set()

    def _dispatch_background(self) -> None:
        """Hand the process the oldest background job if it has nothing else (caller holds the lock)."""
        if self._pending or self._stopping.is_set():
            return
        try:
            job, reply = self._background.popleft()
        except IndexError:
            return
        self._pending[job.key] = _LocalJob(job, reply)
        if self._explainer is None:
            self._explainer = self._start_explainer()
        if self._explainer.process.is_alive():
            self._explainer.jobs.put_nowait(job)

    def _start_explainer(self) -> _ExplainerProcess:
        """Start an explainer process with fresh channels (caller holds the lock)."""
        jobs = self._context.Queue()
        results, results_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=serve, args=(jobs, results_writer, self.settings, os.getpid()),
                                        name="explaincam-explainer", daemon=True)
        process.start()
        results_writer.close()  # only the explainer writes: its end of file is the process's end
        self._wake.set()
        log.info("explainer process started (pid %d)", process.pid)
        return _ExplainerProcess(process, jobs, results, time.monotonic())

    # --- the result thread -----------------------------------------------------------

    def _result_loop(self) -> None:
        """Answer finished jobs; replace an explainer process that ended, crashed or got stuck."""
        while not self._stopping.is_set():
            with self._lock:
                self._dispatch_background()
                explainer = self._explainer
                self._wake.clear()
            if explainer is None:
                self._wake.wait(RESULT_POLL_S)
                continue
            try:
                message = explainer.results.recv() if explainer.results.poll(RESULT_POLL_S) else None
            except (EOFError, OSError):  # the process ended and everything it sent has been read
                self._on_process_end(explainer)
                continue
            if message is None:
                self._check_stuck(explainer)
                continue
            try:
                self._on_message(explainer, message)
            except Exception:
                log.exception("cannot publish an explanation")

    def _on_message(self, explainer: _ExplainerProcess, message: tuple) -> None:
        """Handle one message of the explainer process."""
        kind, key = message[0], message[1]
        with self._lock:
            explainer.last_sign = time.monotonic()
            if kind == "started":
                self._running = key
                explainer.took_jobs = True
                if key in self._pending:
                    self._pending[key].started = time.monotonic()
                    self._pending[key].job = None
                return
            self._running = None
            pending = self._pending.pop(key, None)
            self._dispatch_background()
        if pending is None:
            return
        reply = pending.reply
        if kind == "failed":
            code = message[3]
            if code != BUNDLE_CHANGED:
                log.error("explanation %r failed: %s", reply.request_id, message[2])
            elif not self._bundle_changed_said:  # every request says it; the log once
                self._bundle_changed_said = True
                log.error("%s; until then explain requests are answered %s (logged once)", message[2], BUNDLE_CHANGED)
            self._reply(ErrorResponse(reply.request_id, code, message[2]).payload(), reply)
            return
        payload, grid = message[2], message[3]
        now = time.monotonic()
        started = pending.started or now
        payload["timings_ms"].update(queue_ms=round((started - reply.received) * 1e3, 1),
                                     total_ms=round((now - reply.received) * 1e3, 1))
        self._deliver(payload, grid, reply)
        log.info("explanation %r published (%.0f ms)", reply.request_id, payload["timings_ms"]["total_ms"])

    def _check_stuck(self, explainer: _ExplainerProcess) -> None:
        """Kill an explainer process that has left waiting jobs untaken for STUCK_S (SIGSTOP, say)."""
        with self._lock:
            if self._explainer is not explainer or self._running is not None or explainer.stuck:
                return
            waiting = [p.reply.received for p in self._pending.values() if p.started is None]
            if not waiting or time.monotonic() - max(explainer.last_sign, min(waiting)) < STUCK_S:
                return
            explainer.stuck = True
        log.error("explainer process (pid %d) took no job for %.0f s: killing it", explainer.process.pid, STUCK_S)
        explainer.process.kill()

    def _on_process_end(self, explainer: _ExplainerProcess) -> None:
        """After an explainer process ended: answer its lost job, start a fresh one for waiting jobs."""
        explainer.process.join(1.0)
        if explainer.process.is_alive():  # it closed its pipe but lives on: it is of no use any more
            explainer.process.kill()
            explainer.process.join(1.0)
        code = explainer.process.exitcode
        with self._lock:
            if self._explainer is explainer:
                self._explainer = None
            lost = self._pending.pop(self._running, None) if self._running is not None else None
            self._running = None
            failed_to_start = code != 0 and not explainer.took_jobs and not explainer.stuck
            stranded, restarted = [], False
            if self._stopping.is_set():
                pass  # stop() answers what is pending
            elif failed_to_start:  # it would fail again: answer what waits instead of looping
                stranded = list(self._pending.values())
                self._pending.clear()
            elif self._pending:
                self._explainer, restarted = self._start_explainer(), True
                for key in sorted(self._pending):
                    self._explainer.jobs.put_nowait(self._pending[key].job)
        _close_channels(explainer)
        if code != 0 and not self._stopping.is_set():
            log.error("explainer process (pid %d) %s%s", explainer.process.pid, _exit_reason(code),
                      "; a fresh one answers the waiting requests" if restarted else "")
        if lost is not None:
            self._reply(ErrorResponse(lost.reply.request_id, "internal",
                                      f"the explainer process crashed ({_exit_reason(code)}) while explaining; "
                                      "it will be restarted by the next request").payload(), lost.reply)
        for pending in stranded:
            self._reply(ErrorResponse(pending.reply.request_id, "internal",
                                      f"the explainer process could not start ({_exit_reason(code)})").payload(),
                        pending.reply)

    # --- shutdown --------------------------------------------------------------------

    def stop(self, timeout: float = 2.0) -> None:
        """Answer every waiting request ``shutting_down``, end the explainer process and the result thread.

        The explainer has nothing to save: it is terminated at once (killed after ``timeout`` s).
        """
        with self._lock:
            self._stopping.set()
            explainer, self._explainer = self._explainer, None
            pending = sorted(self._pending.items())
            self._pending.clear()
            self._running = None
        for _, waiting in pending:
            self._reply(ErrorResponse(waiting.reply.request_id, "shutting_down",
                                      "the daemon is shutting down; ask again once it is back").payload(),
                        waiting.reply)
        if explainer is not None:
            explainer.process.terminate()
            explainer.process.join(timeout)
            if explainer.process.is_alive():
                explainer.process.kill()
                explainer.process.join(1.0)
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if explainer is not None:
            _close_channels(explainer)

    def kill_explainer(self) -> None:
        """Kill the explainer process at once, without locks (a second SIGTERM's signal handler)."""
        explainer = self._explainer
        if explainer is not None and explainer.process.pid is not None:
            try:
                os.kill(explainer.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _is_background(job: _LocalJob) -> bool:
    """Whether a job was submitted in the background (nobody waits for its answer)."""
    return bool(getattr(job.reply, "background", False))


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


def _close_channels(explainer: _ExplainerProcess) -> None:
    """Close an ended process's channels; jobs still in its queue are dropped (they were resubmitted)."""
    while True:  # a job left in the pipe would keep the queue's feeder thread blocked for good
        try:
            explainer.jobs.get_nowait()
        except (queue.Empty, OSError, EOFError, ValueError):  # ValueError: closed already
            break
    explainer.jobs.cancel_join_thread()
    explainer.jobs.close()
    explainer.results.close()


def _exit_reason(code: int | None) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL`` for a process exit code."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
