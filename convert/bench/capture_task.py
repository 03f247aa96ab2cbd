"""The bench's capture child (no TensorFlow): the daemon as ``explaincam run`` assembles it
(:func:`daemon.app.build_daemon`), its caption loop fed pre-drawn scenes, idle and while each
explainer backend is kept busy. Run by convert/bench/child.py as ``python -m convert.bench.capture_task``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import time
from typing import Callable

from convert.bench.child import EXPLAINER_START_TIMEOUT_S, serve_task
from convert.bench.measure import BENCH_SCENES_SEED, cpu_seconds, read_proc_status
from daemon.app import Daemon, build_daemon
from daemon.config import AppConfig
from daemon.contract import CameraTopics
from daemon.mqtt import MqttPublisher
from daemon.scenes import scene_at
from daemon.sources import Frame


class OfflinePublisher(MqttPublisher):
    """The daemon's MQTT publisher with no broker to reach (a box being benched may have none): messages
    queue up and the oldest are dropped, as while a broker is down. ``topics`` keeps every topic
    published and ``observer(topic, payload)``, when set, sees each message first."""

    def __init__(self, cfg: AppConfig):
        topics = CameraTopics.for_camera(cfg.mqtt.topic_prefix, cfg.camera.name)
        super().__init__(cfg.mqtt, "explaincam-bench", topics.availability)
        self.topics: set[str] = set()
        self.observer: Callable[[str, bytes | str], None] | None = None

    def publish(self, topic: str, payload: bytes | str, **kwargs) -> bool:
        """Note the topic, show the message to the observer, then queue it as the daemon's publisher does."""
        self.topics.add(topic)
        if self.observer is not None:
            self.observer(topic, payload)
        return super().publish(topic, payload, **kwargs)


class RequestFeeder(threading.Thread):
    """Keeps an explain service supplied with requests for the latest frame; collects the answers."""

    def __init__(self, methods: list[str], outstanding: int = 2):
        super().__init__(name="bench-feeder", daemon=True)
        self.methods, self.outstanding = methods, outstanding
        self.service = None
        self.sent = 0
        self.answers: list[dict] = []
        self.answered = threading.Event()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    def observe(self, topic: str, payload: bytes | str) -> None:
        """Keep each explain response the daemon publishes; explanation images are ignored."""
        if topic.endswith("/response"):
            with self._lock:
                self.answers.append(json.loads(payload))
            self.answered.set()

    def answer_to(self, request_id: str) -> dict | None:
        """The answer to one request, if it came."""
        with self._lock:
            return next((a for a in self.answers if a.get("id") == request_id), None)

    def ok_count(self) -> int:
        """Explanations answered ``ok`` so far."""
        with self._lock:
            return sum(a.get("status") == "ok" for a in self.answers)

    def feed(self, service) -> None:
        """Start sending requests to ``service``."""
        self.service = service
        self.start()

    def run(self) -> None:
        """Send a request whenever fewer than ``outstanding`` are unanswered."""
        while not self.stop_event.wait(0.02):
            with self._lock:
                waiting = self.sent - len(self.answers)
            if waiting < self.outstanding:
                self.sent += 1
                request = {"id": f"bench-{self.sent}", "frame": "latest", "methods": self.methods, "words": "all"}
                self.service.handle_request(json.dumps(request).encode())


def explaining(daemon: Daemon, caption_for: Callable, seconds: float) -> dict:
    """The daemon's explainer: cold answer, caption rate while it is kept busy, warm answer, its RSS."""
    service = daemon.explain_service
    if service is None:  # the service could not even be set up (logged): captions were measured without it
        return {"error": "no explainer service (see the log)"}
    feeder = RequestFeeder(["gradcam", "saliency"])
    daemon.publisher.observer = feeder.observe
    out: dict = {}
    try:
        feeder.feed(service)
        cold_start = time.monotonic()  # the loop waits meanwhile (the daemon's default rate is 2 captions/s)
        feeder.answered.wait(EXPLAINER_START_TIMEOUT_S)
        out["cold_answer_s"] = round(time.monotonic() - cold_start, 2)
        if feeder.ok_count() == 0:
            return {"error": f"the explainer gave no explanation within {EXPLAINER_START_TIMEOUT_S:.0f} s: "
                             f"{feeder.answers[0] if feeder.answers else 'no answer'}"}
        pid = service.local.explainer_pid
        cpu_before, ok_before = cpu_seconds(pid) if pid else None, feeder.ok_count()
        done, elapsed = caption_for(seconds)
        if feeder.ok_count() == ok_before:  # the window must hold at least one whole explanation
            more, more_s = caption_for(EXPLAINER_START_TIMEOUT_S, lambda: feeder.ok_count() > ok_before)
            done, elapsed = done + more, elapsed + more_s
        cpu_after = cpu_seconds(pid) if pid else None
        out.update({"explaining_per_s": round(done / elapsed, 2), "explanations_done": feeder.ok_count() - ok_before,
                    "explainer_cpu_share": (round((cpu_after - cpu_before) / elapsed, 2)
                                            if cpu_before is not None and cpu_after is not None else None)})
        feeder.stop_event.set()
        feeder.join(5)
        wait_s = time.monotonic() + EXPLAINER_START_TIMEOUT_S
        while feeder.ok_count() + sum(a.get("status") != "ok" for a in feeder.answers) < feeder.sent \
                and time.monotonic() < wait_s:
            time.sleep(0.02)
        warm_start = time.monotonic()  # the explainer is loaded and idle: one request alone
        service.handle_request(json.dumps({"id": "bench-warm", "frame": "latest",
                                           "methods": ["gradcam", "saliency"], "words": "all"}).encode())
        while feeder.answer_to("bench-warm") is None and time.monotonic() - warm_start < EXPLAINER_START_TIMEOUT_S:
            time.sleep(0.005)
        out["warm_answer_s"] = round(time.monotonic() - warm_start, 3) if feeder.answer_to("bench-warm") else None
        out["explainer_rss"] = read_proc_status(pid) if pid else None
        if out["explainer_rss"] is None:
            out["explainer_rss_error"] = "the explainer process had ended before its memory could be read"
    finally:
        feeder.stop_event.set()
        daemon.close()
    return out


def capture_task(params: dict) -> dict:
    """Capture child: caption-loop rate idle and with each backend's explainer busy, the RSS of both
    processes, and the topics the daemon published."""
    history_dir = tempfile.mkdtemp(prefix="explaincam-bench-history-")  # the timeline as configured, kept apart
    data = {"model": {"bundle": params["bundle"], "threads": 1}, "caption": {"rate": 0, "change_threshold": 0},
            "snapshot": {"enabled": False}, "history": {"dir": history_dir}}
    configs = {backend: AppConfig.model_validate({**data, "explain": {"backend": backend}})
               for backend in params["backends"]}
    idle_daemon = build_daemon(AppConfig.model_validate(data), publisher=OfflinePublisher(AppConfig.model_validate(data)))
    scenes = [scene_at(BENCH_SCENES_SEED, i) for i in range(params["frames"])]
    frames = [Frame(i + 1, s.image, time.time(), time.monotonic(), 0.0, s.caption) for i, s in enumerate(scenes)]

    def caption_for_with(daemon: Daemon) -> Callable[..., tuple[int, float]]:
        def caption_for(seconds: float, until: Callable[[], bool] = lambda: False) -> tuple[int, float]:
            """Run the loop's per-frame work for ``seconds`` or until ``until()``; (captions, seconds taken)."""
            done, started = 0, time.monotonic()
            while time.monotonic() - started < seconds and not until():
                frame = dataclasses.replace(frames[done % len(frames)], grab_started=time.monotonic())
                done += daemon.loop.process(frame) is not None
            return done, time.monotonic() - started
        return caption_for

    idle_captions = caption_for_with(idle_daemon)
    idle_captions(min(1.0, params["seconds"]))  # warm-up
    idle = [idle_captions(params["seconds"])]
    out: dict = {"capture_rss": read_proc_status(), "backends": {}}
    topics = set(idle_daemon.publisher.topics)
    for backend, cfg in configs.items():
        daemon = build_daemon(cfg, publisher=OfflinePublisher(cfg))
        captions = caption_for_with(daemon)
        captions(min(1.0, params["seconds"]))  # warm-up, and frames in its cache to explain
        out["backends"][backend] = explaining(daemon, captions, params["seconds"])
        topics |= daemon.publisher.topics
        idle.append(idle_captions(params["seconds"]))  # again without an explainer: drift shows and averages out
    idle_daemon.close()
    out["idle_per_s"] = round(sum(n for n, _ in idle) / sum(t for _, t in idle), 2)
    out["idle_windows_per_s"] = [round(n / t, 2) for n, t in idle]
    out["published_topics"] = sorted(topics)
    shutil.rmtree(history_dir, ignore_errors=True)
    return out


if __name__ == "__main__":
    serve_task(capture_task)
