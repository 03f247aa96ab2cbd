"""``explaincam worker -c worker.yaml``: an explainer worker of a fleet.

It loads its bundles' explainers (the same answer pipeline as the camera daemon's local
explainer process, on the backend of ``backend``: LiteRT or TensorFlow), then subscribes
(MQTT 5, QoS 1) to ``$share/{group}/{prefix}/+/explain/job``,
so the broker hands each camera's job to one worker of the group. Jobs wait in a bounded
queue (a full one answers ``busy``) for the one explain thread. Each answer goes to the
job's Response Topic with its Correlation Data (the camera's daemon, which answers the
requester and writes the snapshot files); the worker writes nothing on the camera box. A job
whose bundle (sha256 of its manifest) this worker does not hold is answered
``unknown_bundle``. It tells the camera's daemon when it has queued a job (and how many are
ahead) and when it starts it, so the daemon waits for a live worker's queue instead of
publishing the job again.

It announces itself retained on ``{prefix}/workers/{id}`` (bundles, backend, queue, counts,
rates; refreshed every ``announce_interval_s`` and expiring after three of them) and keeps
``{prefix}/workers/{id}/availability`` ``online`` (its last will says ``offline``). Topics
and payloads: daemon.contract.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon import contract
from daemon.bundle import BundleError, load_bundle
from daemon.config import LOG_LEVELS, WorkerConfig
from daemon.config_file import ConfigError, load_config
from daemon.contract import JobMessage, MessageError, PrefixTopics
from daemon.explain.backends import BackendError
from daemon.explain.explainer import Explainer
from daemon.explain.job import Job, answer_job
from daemon.explain.requests import ErrorResponse
from daemon.explain_settings import ExplainOptions
from daemon.fleet.dispatcher import bundle_identity
from daemon.mqtt import MqttPublisher, MqttSetupError
from daemon.notify import SystemdNotifier
from daemon.process import EXIT_CONFIG, install_signal_handlers, setup_logging
from daemon.stats import percentiles

log = logging.getLogger("explaincam.worker")

RATE_WINDOW_S = 60.0  # jobs_per_min counts the jobs finished in this window


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam worker``."""
    parser.add_argument("-c", "--config", default="worker.yaml", help="worker config file (default: worker.yaml)")
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        help="override the config's log_level")


def main(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT; 2 for a config, bundle, backend or MQTT settings error."""
    try:
        cfg = load_config(args.config, WorkerConfig)
    except ConfigError as exc:
        print(f"error: invalid worker configuration\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or cfg.log_level)
    stop = threading.Event()
    install_signal_handlers(stop, [])
    try:
        worker = FleetWorker(cfg, instance=str(Path(args.config).resolve()))
    except (BundleError, MqttSetupError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    notifier = SystemdNotifier.from_environment()
    try:
        worker.run(stop, notifier)
    except BackendError as exc:  # the configured backend cannot run here (no graph, no TensorFlow)
        log.error("%s", exc)
        return EXIT_CONFIG
    finally:
        notifier.close()
    return 0


@dataclass
class _Queued:
    """A job waiting here and where to answer it."""

    job: JobMessage
    response_topic: str
    correlation_data: bytes | None
    received: float


class FleetWorker:
    """Explains the fleet's jobs with its bundles' explainers, one job at a time."""

    def __init__(self, cfg: WorkerConfig, instance: str = ""):
        """``instance`` (the config file's path) tells this worker's MQTT client id from another's on the box."""
        self.cfg = cfg
        self.id = cfg.worker_id()
        self.prefix = cfg.mqtt.topic_prefix
        self.topics = PrefixTopics(self.prefix)
        self.bundles: dict[str, tuple[str, str]] = {}  # manifest sha256 -> (model name, folder)
        for path in cfg.bundle_paths():
            load_bundle(path)  # refuses a bundle whose files do not match their hashes
            name, sha256 = bundle_identity(path)
            self.bundles[sha256] = (name, str(path))
        self.publisher = MqttPublisher(cfg.mqtt, cfg.mqtt.resolved_client_id(f"worker-{self.id}", instance),
                                       self.topics.worker_availability(self.id),
                                       session_expiry_s=cfg.session_expiry_s)
        self.announce_topic = self.topics.worker(self.id)
        self._jobs: queue.Queue[_Queued] = queue.Queue(maxsize=cfg.queue_size)
        self._explainers: dict[tuple[str, str | None], object] = {}
        self._backends: dict[str, str] = {}  # manifest sha256 -> backend name ("litert" | "tensorflow")
        self.counts = {"jobs_done": 0, "jobs_failed": 0, "jobs_refused": 0}
        self._finished: deque[float] = deque()
        self._explain_ms: deque[float] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._running = 0  # jobs being explained now (0 or 1)

    # --- lifecycle ---------------------------------------------------------------------

    def run(self, stop: threading.Event, notifier: SystemdNotifier | None = None) -> None:
        """Load the explainers, connect, explain jobs until ``stop`` is set, then announce ``offline``.

        ``notifier`` hears READY=1 (systemd Type=notify) once the worker subscribes.
        """
        notifier = notifier or SystemdNotifier(None)
        notifier.status("loading the bundles")
        for sha256, (name, path) in self.bundles.items():
            started = time.perf_counter()
            explainer = self._explainer(sha256, None)
            self._backends[sha256] = explainer.backend.name
            self._warm_up(explainer)
            log.info("bundle %s (%s, manifest sha256 %s…) loaded on %s and warmed up in %.1f s", name, path,
                     sha256[:12], explainer.backend.name, time.perf_counter() - started)
        self.publisher.subscribe(self.topics.explain_jobs(self.cfg.group), self._on_job, qos=1,
                                 with_topic=True, purpose="this worker gets no explain jobs")
        self.publisher.start()
        explain_thread = threading.Thread(target=self._explain_loop, args=(stop,), name="fleet-explain", daemon=True)
        explain_thread.start()
        log.info("worker %r in group %r: jobs of %s/+/explain/job, %d bundle(s)", self.id, self.cfg.group,
                 self.prefix, len(self.bundles))
        notifier.ready(f"worker {self.id}: explaining jobs of group {self.cfg.group}")
        while not stop.is_set():
            self._announce()
            stop.wait(self.cfg.announce_interval_s)
        self.publisher.publish(self.announce_topic, json.dumps({"id": self.id, "state": contract.OFFLINE}),
                               qos=1, retain=True)
        notifier.stopping()
        self.publisher.stop(timeout=1.0)
        log.info("worker %r stopped after %d jobs", self.id, self.counts["jobs_done"])

    def _explainer(self, sha256: str, gradcam_layer: str | None):
        """The explainer of a bundle (and Grad-CAM layer) on the configured backend, loaded on first use
        as the local explainer process loads it (BackendError when that backend cannot run here)."""
        key = (sha256, gradcam_layer)
        if key not in self._explainers:
            explainer = Explainer(self.bundles[sha256][1], ExplainOptions(batch_size=self.cfg.batch_size),
                                  gradcam_layer, self.cfg.backend, self.cfg.threads)
            if explainer.backend is None:  # a worker is there to run every method
                raise BackendError(explainer.backend_problem)
            self._explainers[key] = explainer
        return self._explainers[key]

    @staticmethod
    def _warm_up(explainer) -> None:
        """Explain one grey frame's first word, so the first job does not pay for building the graphs."""
        image = np.full((explainer.size, explainer.size, 3), 128, np.uint8)
        tokens = explainer.float_caption(image)[:1]
        if tokens:
            answer_job(explainer, Job(0, None, 0, image, "", tokens, [0], ["gradcam"]))

    # --- announcements -----------------------------------------------------------------

    def announcement(self) -> dict:
        """The retained announcement: bundles (each with its backend), backend(s), queue, counts and rates."""
        now = time.monotonic()
        with self._lock:
            while self._finished and now - self._finished[0] > RATE_WINDOW_S:
                self._finished.popleft()
            rate = len(self._finished) * 60.0 / min(RATE_WINDOW_S, max(now - self._started, 1.0))
            explain_ms = percentiles(list(self._explain_ms))
            counts = dict(self.counts)
        backends = sorted(set(self._backends.values()))
        return {"id": self.id, "state": contract.ONLINE, "group": self.cfg.group,
                "bundles": [{"name": name, "sha256": sha, "backend": self._backends.get(sha)}
                            for sha, (name, _) in self.bundles.items()],
                "backend": ",".join(backends) or None, "queue_depth": self._jobs.qsize(), "queue_size": self.cfg.queue_size,
                **counts, "jobs_per_min": round(rate, 2), "explain_ms": explain_ms,
                "uptime_s": round(now - self._started, 1)}

    def _announce(self) -> None:
        """Publish the announcement, retained, expiring after three announce intervals."""
        self.publisher.publish(self.announce_topic, json.dumps(self.announcement()), qos=1, retain=True,
                               message_expiry_s=max(1, int(3 * self.cfg.announce_interval_s + 0.999)))

    # --- the MQTT thread -----------------------------------------------------------------

    def _on_job(self, payload: bytes, properties, topic: str) -> None:
        """Queue a job, or answer at once: ``bad_job``, ``unknown_bundle`` or ``busy``."""
        received = time.monotonic()
        camera = topic.split("/")[-3] if topic.count("/") >= 3 else "?"
        response_topic = (getattr(properties, "ResponseTopic", None)
                          or contract.CameraTopics.for_camera(self.prefix, camera).explain_result)
        correlation = getattr(properties, "CorrelationData", None)
        try:
            job = JobMessage.decode(payload)
        except MessageError as exc:
            job_id = contract.job_id_of(payload)
            log.warning("job %s from %s refused: %s", job_id, camera, exc)
            if job_id is not None:
                self._answer(job_id, 1, response_topic, correlation,
                             ErrorResponse(None, "bad_job", str(exc)).payload(), None)
            return
        if job.bundle_sha256 not in self.bundles:
            held = ", ".join(f"{name} ({sha[:12]})" for sha, (name, _) in self.bundles.items())
            self._refuse(job, response_topic, correlation, ErrorResponse(
                job.request_id, "unknown_bundle",
                f"worker {self.id} does not hold bundle {job.bundle_name} (manifest sha256 {job.bundle_sha256}); "
                f"it holds {held}", job.frame_id, job.caption))
            return
        queued = _Queued(job, response_topic, correlation, received)
        with self._lock:  # the count ahead must match the queue this job joins
            ahead = self._jobs.qsize() + self._running
            try:
                self._jobs.put_nowait(queued)
            except queue.Full:
                ahead = None
        if ahead is None:
            self._refuse(job, response_topic, correlation, ErrorResponse(
                job.request_id, "busy", f"worker {self.id} has {self.cfg.queue_size} jobs waiting",
                job.frame_id, job.caption))
            return
        self.publisher.publish(response_topic, contract.encode_progress(job.job_id, job.attempt, self.id,
                                                                        contract.QUEUED, ahead),
                               qos=1, correlation_data=correlation)
        log.info("job %s (request %r of %s, try %d) queued: %d words, %s", job.job_id, job.request_id, job.camera,
                 job.attempt, len(job.indices), ", ".join(job.methods))

    def _refuse(self, job: JobMessage, response_topic: str, correlation, error: ErrorResponse) -> None:
        """Answer a job that will not be explained here."""
        with self._lock:
            self.counts["jobs_refused"] += 1
        log.info("job %s of %s refused: %s: %s", job.job_id, job.camera, error.code, error.message)
        self._answer(job.job_id, job.attempt, response_topic, correlation, error.payload(), None)

    def _answer(self, job_id: str, attempt: int, topic: str, correlation, response: dict, grid: bytes | None) -> None:
        """Publish a result to the job's Response Topic with its Correlation Data."""
        self.publisher.publish(topic, contract.encode_result(job_id, attempt, self.id, response, grid), qos=1,
                               correlation_data=correlation)

    # --- the explain thread --------------------------------------------------------------

    def _explain_loop(self, stop: threading.Event) -> None:
        """Explain queued jobs one at a time until ``stop`` is set."""
        while not stop.is_set():
            try:
                with self._lock:
                    queued = self._jobs.get_nowait()
                    self._running = 1
            except queue.Empty:
                time.sleep(0.05)
                continue
            try:
                self._explain(queued)
            finally:
                with self._lock:
                    self._running = 0

    def _explain(self, queued: _Queued) -> None:
        """Explain one job with the answer pipeline and publish its result."""
        job = queued.job
        started = time.monotonic()
        log.info("job %s (request %r of %s) started", job.job_id, job.request_id, job.camera)
        self.publisher.publish(queued.response_topic, contract.encode_progress(job.job_id, job.attempt, self.id,
                                                                               contract.STARTED),
                               qos=1, correlation_data=queued.correlation_data)
        try:
            explainer = self._explainer(job.bundle_sha256, job.options["gradcam_layer"])
            explainer.options = ExplainOptions(batch_size=self.cfg.batch_size,
                                               smoothgrad_samples=job.options["smoothgrad_samples"],
                                               ig_steps=job.options["ig_steps"])
            payload, grid = answer_job(explainer, Job(0, job.request_id, job.frame_id, job.image, job.caption,
                                                  job.tokens, job.indices, job.methods))
        except Exception as exc:  # answered as `internal`; the worker goes on
            log.exception("job %s failed", job.job_id)
            with self._lock:
                self.counts["jobs_failed"] += 1
            self._answer(job.job_id, job.attempt, queued.response_topic, queued.correlation_data,
                         ErrorResponse(job.request_id, "internal", f"{type(exc).__name__}: {exc}",
                                       job.frame_id, job.caption).payload(), None)
            return
        finished = time.monotonic()
        payload["timings_ms"]["worker_queue_ms"] = round((started - queued.received) * 1e3, 1)
        payload["timings_ms"]["worker_ms"] = round((finished - started) * 1e3, 1)
        with self._lock:
            self.counts["jobs_done"] += 1
            self._finished.append(finished)
            self._explain_ms.append((finished - started) * 1e3)
        self._answer(job.job_id, job.attempt, queued.response_topic, queued.correlation_data, payload, grid)
        log.info("job %s answered in %.0f ms", job.job_id, (finished - started) * 1e3)
