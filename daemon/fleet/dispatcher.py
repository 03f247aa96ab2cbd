"""The camera daemon's side of a fleet: accepted explain requests become jobs for the workers.

``explain.mode: remote`` (or ``auto`` while a worker holding this bundle has announced
itself) hands each request that the explain service accepted (validated against the frame
cache) to ``RemoteDispatcher.submit``. It publishes the job (QoS 1) to
``{prefix}/{camera}/explain/job``; the workers' shared subscription gives it to one worker.

The answer comes back through this daemon: the worker publishes its result to the job's
MQTT 5 Response Topic (``{prefix}/{camera}/explain/result``) with the job id as Correlation
Data, and the dispatcher answers the requester (its Response Topic and Correlation Data, or
the default response topic), publishes the explanation image and writes the snapshot files,
exactly as for a local explanation. Going through the daemon costs one hop on the broker and
buys what a direct answer cannot: one answer per request. The dispatcher keeps each job until
its first answer. A worker says when it has queued a job (with the number of jobs ahead) and
when it starts it; the job is published again when its worker goes offline (its last will:
Mosquitto neither hands a disconnected member's in-flight message to another member nor says
the job failed), when ``explain.remote.retry_s`` passes without any word of a worker (lost on
the way, no worker) or per job ahead and running (a worker that hangs), and at once when a
worker says ``busy`` or does not hold the bundle; answers of a job already answered are
dropped by job id; after
``explain.remote.max_tries`` publishes the requester gets ``no_worker`` (no worker has
announced itself) or ``timeout``. Each job is published with a Message Expiry Interval of
``retry_s``, so a copy stranded in a dead worker's broker session goes when it is retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from daemon.bundle import MANIFEST, load_bundle
from daemon.contract import (ONLINE, CameraTopics, JobMessage, MessageError, PrefixTopics, ProgressMessage,
                             read_answer)
from daemon.explain.requests import ErrorResponse

log = logging.getLogger("explaincam.fleet")

RETRY_POLL_S = 0.1  # how often the retry thread looks at the waiting jobs
RETRIED_AT_ONCE = ("busy", "unknown_bundle")  # worker answers that another worker may not give


class WorkerRegistry:
    """The fleet's workers as their announcements and availability describe them."""

    def __init__(self, stale_s: float, clock: Callable[[], float] = time.monotonic):
        self.stale_s = stale_s
        self._clock = clock
        self._workers: dict[str, dict] = {}  # id -> {"announcement", "seen", "online"}
        self._lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes) -> None:
        """Take in one message of ``{prefix}/workers/#``."""
        parts = topic.split("/")
        if len(parts) >= 2 and parts[-1] == "availability":
            worker_id = parts[-2]
            with self._lock:
                entry = self._workers.setdefault(worker_id, {"announcement": None, "seen": None, "online": None})
                entry["online"] = payload == ONLINE.encode()
            return
        worker_id = parts[-1]
        with self._lock:
            if not payload:  # the retained announcement was cleared or expired
                self._workers.pop(worker_id, None)
                return
            try:
                announcement = json.loads(payload)
            except (UnicodeDecodeError, ValueError):
                log.warning("unreadable announcement of worker %r ignored", worker_id)
                return
            entry = self._workers.setdefault(worker_id, {"announcement": None, "seen": None, "online": None})
            entry["announcement"], entry["seen"] = announcement, self._clock()

    def gone(self, worker_id: str) -> bool:
        """Whether a worker said ``offline`` (its last will, or a last announcement) or stopped announcing
        itself; a worker not heard of yet is not gone."""
        now = self._clock()
        with self._lock:
            entry = self._workers.get(worker_id)
            if entry is None:
                return False
            announcement = entry["announcement"]
            return entry["online"] is False or (announcement is not None and (
                announcement.get("state") != ONLINE or now - entry["seen"] > self.stale_s))

    def available(self, bundle_sha256: str) -> list[str]:
        """Ids of the workers online, recently announced and holding this bundle."""
        now = self._clock()
        with self._lock:
            return sorted(
                worker_id for worker_id, entry in self._workers.items()
                if entry["announcement"] is not None and entry["online"] is not False
                and entry["announcement"].get("state") == ONLINE and now - entry["seen"] <= self.stale_s
                and any(b.get("sha256") == bundle_sha256 for b in entry["announcement"].get("bundles", [])))


def bundle_identity(bundle_path: str | Path) -> tuple[str, str]:
    """A bundle's model name and the sha256 of its manifest (which hashes every other file)."""
    bundle = load_bundle(bundle_path, verify=False)
    return bundle.name, hashlib.sha256((Path(bundle_path) / MANIFEST).read_bytes()).hexdigest()


@dataclass
class _RemoteJob:
    """A published job waiting for its answer."""

    message: JobMessage
    reply: object  # the explain service's _Pending: request id, Response Topic, Correlation Data, received
    deadline: float
    holder: str | None = None  # the worker that queued or started the current try


class RemoteDispatcher:
    """Publishes accepted requests as fleet jobs and answers their requesters with the workers' results."""

    def __init__(self, config, topics: CameraTopics, bundle_path: str | Path, publish: Callable,
                 subscribe: Callable, clock: Callable[[], float] = time.monotonic):
        """``config`` is the ExplainConfig, ``topics`` the camera's; ``publish``/``subscribe`` are the
        daemon's MqttPublisher's."""
        self.config = config
        self.remote = config.remote
        self.camera = topics.camera
        self.publish = publish
        self.job_topic = topics.explain_job
        self.result_topic = topics.explain_result
        self.bundle_name, self.bundle_sha256 = bundle_identity(bundle_path)
        self.registry = WorkerRegistry(self.remote.worker_stale_s, clock)
        self.counts = {"published": 0, "answered": 0, "retried": 0, "duplicates": 0, "gave_up": 0}
        self._clock = clock
        self._pending: dict[str, _RemoteJob] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reply: Callable | None = None
        self._deliver: Callable | None = None
        subscribe(self.result_topic, self._on_result, qos=1,
                  purpose="no answer of a fleet's workers arrives: remote explain requests time out")
        subscribe(PrefixTopics(topics.prefix).workers, self._on_worker_message, qos=1, with_topic=True,
                  purpose="no fleet worker is seen: explain.mode auto explains locally, remote answers no_worker")
        self._thread = threading.Thread(target=self._retry_loop, name="fleet-retry", daemon=True)

    def start(self, reply: Callable, deliver: Callable) -> None:
        """Start retrying. The explain service's own ``reply(payload, pending)`` answers a requester;
        its ``deliver(payload, grid, pending)`` publishes a finished explanation (image, snapshot files, answer)."""
        self._reply, self._deliver = reply, deliver
        self._thread.start()

    def takes(self) -> bool:
        """Whether the next request goes to the fleet: always in remote mode, in auto while a worker is present."""
        return self.config.mode == "remote" or bool(self.registry.available(self.bundle_sha256))

    def submit(self, job, reply) -> ErrorResponse | None:
        """Publish an accepted job (a daemon.explain.job.Job); an ErrorResponse (busy) when too many wait."""
        message = JobMessage(job_id=uuid.uuid4().hex, camera=self.camera, request_id=job.request_id,
                             frame_id=job.frame_id, caption=job.caption, tokens=list(job.tokens),
                             indices=list(job.indices), methods=list(job.methods), bundle_name=self.bundle_name,
                             bundle_sha256=self.bundle_sha256, image=job.image,
                             options={"smoothgrad_samples": self.config.smoothgrad_samples,
                                      "ig_steps": self.config.ig_steps, "gradcam_layer": self.config.gradcam_layer})
        with self._lock:
            if self._stopping.is_set():
                return ErrorResponse(job.request_id, "shutting_down", "the daemon is shutting down; ask again later")
            if len(self._pending) >= self.config.queue_size:
                return ErrorResponse(job.request_id, "busy",
                                     f"{self.config.queue_size} explanations are already waiting for the fleet; "
                                     "try again later", job.frame_id, job.caption)
            self._pending[message.job_id] = _RemoteJob(message, reply, 0.0)
            self._send(self._pending[message.job_id])
        log.info("explain request %r sent to the fleet as job %s: frame %d, %d words, %s", job.request_id,
                 message.job_id, job.frame_id, len(job.indices), ", ".join(job.methods))
        return None

    def _send(self, pending: _RemoteJob) -> None:
        """Publish a job (again); the caller holds the lock."""
        pending.deadline = self._clock() + self.remote.retry_s
        pending.holder = None
        self.publish(self.job_topic, pending.message.encode(), qos=1, response_topic=self.result_topic,
                     correlation_data=pending.message.job_id.encode(),
                     message_expiry_s=max(1, int(round(self.remote.retry_s))))
        self.counts["published"] += 1

    # --- the retry thread --------------------------------------------------------------

    def _retry_loop(self) -> None:
        """Publish again the jobs nobody answered in time; give up on those out of tries."""
        while not self._stopping.wait(RETRY_POLL_S):
            now = self._clock()
            given_up = []
            with self._lock:
                for job_id, pending in list(self._pending.items()):
                    holder_gone = pending.holder is not None and self.registry.gone(pending.holder)
                    if now < pending.deadline and not holder_gone:
                        continue
                    if pending.message.attempt < self.remote.max_tries:
                        pending.message.attempt += 1
                        self.counts["retried"] += 1
                        why = (f"its worker {pending.holder} went offline" if holder_gone
                               else f"no answer in time from {pending.holder or 'any worker'}")
                        log.warning("job %s (request %r): %s; published again (try %d of %d)", job_id,
                                    pending.message.request_id, why, pending.message.attempt, self.remote.max_tries)
                        self._send(pending)
                    else:
                        given_up.append(self._pending.pop(job_id))
                        self.counts["gave_up"] += 1
            for pending in given_up:
                self._give_up(pending)

    def _give_up(self, pending: _RemoteJob) -> None:
        """Answer a job out of tries: ``no_worker`` when no worker holding the bundle is present, else ``timeout``."""
        message = pending.message
        waited = self.remote.retry_s * self.remote.max_tries
        if self.registry.available(self.bundle_sha256):
            error = ErrorResponse(message.request_id, "timeout",
                                  f"no worker answered within {waited:g} s ({message.attempt} tries)",
                                  message.frame_id, message.caption)
        else:
            error = ErrorResponse(message.request_id, "no_worker",
                                  f"no explainer worker holding bundle {self.bundle_name} "
                                  f"({self.bundle_sha256[:12]}) answered within {waited:g} s; is "
                                  "`explaincam worker` running on this broker?", message.frame_id, message.caption)
        log.error("explain request %r answered %s: %s", message.request_id, error.code, error.message)
        self._reply(error.payload(), pending.reply)

    # --- the MQTT thread ---------------------------------------------------------------

    def _on_worker_message(self, payload: bytes, properties, topic: str) -> None:
        """An announcement or availability of a worker."""
        self.registry.on_message(topic, payload)

    def _on_result(self, payload: bytes, properties) -> None:
        """A worker's result: the first answer of a job goes to its requester; later ones are dropped.
        A progress note names the worker holding the job and moves its deadline."""
        try:
            result = read_answer(payload)
        except MessageError as exc:
            log.warning("fleet result ignored: %s", exc)
            return
        if isinstance(result, ProgressMessage):
            self._on_progress(result)
            return
        response = result.response
        code = (response.get("error") or {}).get("code") if response.get("status") != "ok" else None
        status = response.get("status")
        with self._lock:
            pending = self._pending.get(result.job_id)
            if pending is None:
                self.counts["duplicates"] += 1
                log.info("answer of job %s by worker %s dropped: the job was already answered",
                         result.job_id, result.worker)
                return
            if status == "busy":
                code = "busy"
            if code in RETRIED_AT_ONCE:
                if result.attempt < pending.message.attempt:
                    return  # a newer publish of this job is on its way to another worker
                if pending.message.attempt < self.remote.max_tries:
                    pending.message.attempt += 1
                    self.counts["retried"] += 1
                    log.info("job %s: worker %s answered %s; published again (try %d of %d)", result.job_id,
                             result.worker, code, pending.message.attempt, self.remote.max_tries)
                    self._send(pending)
                    return
            del self._pending[result.job_id]
            self.counts["answered"] += 1
        reply = pending.reply
        response["worker"] = result.worker
        if status == "ok":
            timings = response.setdefault("timings_ms", {})
            timings["total_ms"] = round((time.monotonic() - reply.received) * 1e3, 1)
            timings["tries"] = pending.message.attempt
            if result.grid_png is not None:
                self._deliver(response, result.grid_png, reply)
                log.info("explanation %r by worker %s published (%.0f ms)", reply.request_id, result.worker,
                         timings["total_ms"])
                return
        log.info("explain request %r answered %s by worker %s", reply.request_id, code or status, result.worker)
        self._reply(response, reply)

    def _on_progress(self, progress: ProgressMessage) -> None:
        """A worker holds the current try of a job: wait for it while it lives, ``retry_s`` per job it does first."""
        with self._lock:
            pending = self._pending.get(progress.job_id)
            if pending is None or progress.attempt != pending.message.attempt:
                return
            pending.holder = progress.worker
            pending.deadline = self._clock() + self.remote.retry_s * (1 + max(0, progress.ahead))

    def stop(self) -> None:
        """Stop retrying and answer the jobs still waiting ``shutting_down`` (their answers are dropped)."""
        with self._lock:
            self._stopping.set()
            waiting = list(self._pending.values())
            self._pending.clear()
        if self._thread.is_alive():
            self._thread.join(1.0)
        for pending in waiting:
            message = pending.message
            if self._reply is not None:
                self._reply(ErrorResponse(message.request_id, "shutting_down",
                                          "the daemon is shutting down; ask again once it is back").payload(),
                            pending.reply)
