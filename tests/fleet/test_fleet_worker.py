"""The fleet worker (``daemon.fleet.worker.FleetWorker``) one job at a time: its MQTT client on a
real Mosquitto, jobs handed to its job handler and explain step directly (no subprocess, no
shared subscription), so each answer can be traced to the job that caused it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config import WorkerConfig
from daemon.contract import QUEUED, STARTED, CameraTopics, JobMessage, ProgressMessage, ResultMessage, read_answer
from daemon.explain.explainer import Explainer, answer
from daemon.imaging import decode_png
from daemon.fleet.dispatcher import bundle_identity
from daemon.fleet.worker import FleetWorker
from daemon.scenes import scene_at
from tests.conftest import PREFIX, SHIPPED_BUNDLE, wait_until
from tests.fleet.conftest import worker_config

REPLIES = "test/fleet-worker/replies"
MODEL, SHA256 = bundle_identity(SHIPPED_BUNDLE)
SCENE = scene_at(6262, 0)


@pytest.fixture
def worker(mosquitto):
    """A FleetWorker (queue of 2) whose MQTT client is connected; its explain loop is not running."""
    fleet_worker = FleetWorker(WorkerConfig.model_validate(worker_config(mosquitto.port, "unit", queue_size=2)))
    fleet_worker.publisher.start()
    assert fleet_worker.publisher.wait_connected(15)
    yield fleet_worker
    fleet_worker.publisher.stop()


@pytest.fixture(scope="module")
def local():
    """The shipped bundle's explainer in this process (what a camera's local explainer runs)."""
    return Explainer(SHIPPED_BUNDLE)


def a_job(job_id: str, tokens: list[int], **changes) -> JobMessage:
    """A job of the shipped bundle for the words of SCENE's caption (``tokens``), as a camera daemon sends it."""
    fields = dict(job_id=job_id, camera="cam", request_id=f"request-{job_id}", frame_id=3, caption=SCENE.caption,
                  tokens=tokens, indices=list(range(len(tokens))), methods=["gradcam", "saliency"],
                  bundle_name=MODEL, bundle_sha256=SHA256, image=SCENE.image,
                  options={"smoothgrad_samples": 4, "ig_steps": 8, "gradcam_layer": None})
    fields.update(changes)
    return JobMessage(**fields)


def send(worker: FleetWorker, payload: bytes, correlation: bytes | None = b"corr") -> None:
    """Hand a job message to the worker as its MQTT subscription would, with a Response Topic."""
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = REPLIES
    if correlation is not None:
        properties.CorrelationData = correlation
    worker._on_job(payload, properties, CameraTopics.for_camera(PREFIX, "cam").explain_job)


def answers(watcher, topic: str = REPLIES, count: int = 1) -> list:
    """The first ``count`` progress notes / results on ``topic``, with their Correlation Data."""
    wait_until(lambda: len(watcher.on(topic)) >= count, 30, message=f"{count} message(s) on {topic}")
    return [(read_answer(m.payload), getattr(m.properties, "CorrelationData", None)) for m in watcher.on(topic)]


def test_queued_jobs_hear_how_many_are_ahead_and_one_beyond_the_queue_is_answered_busy(worker, mosquitto, collect,
                                                                                       local):
    watcher = collect(mosquitto.port, REPLIES)
    for n in range(3):
        send(worker, a_job(f"j{n}", local.vocab.encode(SCENE.caption)).encode(), f"c{n}".encode())
    got = answers(watcher, count=3)
    queued = [(m.job_id, m.progress, m.ahead, c) for m, c in got if isinstance(m, ProgressMessage)]
    assert queued == [("j0", QUEUED, 0, b"c0"), ("j1", QUEUED, 1, b"c1")]
    busy = [(m, c) for m, c in got if isinstance(m, ResultMessage)]
    assert len(busy) == 1 and busy[0][1] == b"c2" and busy[0][0].worker == "unit"
    response = busy[0][0].response
    assert (response["id"], response["status"], response["error"]["code"]) == ("request-j2", "busy", "busy")
    assert "2 jobs waiting" in response["error"]["message"]
    announced = worker.announcement()
    assert announced["queue_depth"] == 2 and announced["queue_size"] == 2
    assert (announced["jobs_refused"], announced["jobs_done"]) == (1, 0)


def test_a_job_is_explained_as_the_local_explainer_would_and_counted(worker, mosquitto, collect, local):
    watcher = collect(mosquitto.port, REPLIES)
    job = a_job("j-ok", local.vocab.encode(SCENE.caption))
    send(worker, job.encode())
    worker._explain(worker._jobs.get_nowait())
    (queued, _), (started, _), (result, correlation) = answers(watcher, count=3)
    assert (queued.progress, started.progress) == (QUEUED, STARTED)
    assert isinstance(result, ResultMessage)
    assert (result.job_id, result.worker, correlation) == ("j-ok", "unit", b"corr")
    response = result.response
    assert (response["id"], response["status"], response["frame_id"]) == ("request-j-ok", "ok", 3)
    expected, _ = answer(local, SCENE.image, job.tokens, job.indices, job.methods, job.request_id,
                      frame_id=3, caption=job.caption)
    assert response["words"] == expected["words"]  # the same maps and peaks, word for word
    assert response["caption"] == SCENE.caption and response["float_caption"] == expected["float_caption"]
    assert decode_png(result.grid_png).ndim == 3
    timings = response["timings_ms"]
    assert timings["worker_ms"] > 0 and timings["worker_queue_ms"] >= 0
    announced = worker.announcement()
    assert (announced["jobs_done"], announced["jobs_failed"], announced["queue_depth"]) == (1, 0, 0)
    assert announced["explain_ms"]["p50"] == pytest.approx(timings["worker_ms"], abs=1.0)
    # one job in the last minute, over the minute or the uptime when shorter
    assert announced["jobs_per_min"] == pytest.approx(60 / max(announced["uptime_s"], 1.0), rel=0.05)


def test_unknown_bundles_and_unreadable_jobs_are_answered_with_their_reason(worker, mosquitto, collect):
    default_topic = CameraTopics.for_camera(PREFIX, "cam").explain_result
    watcher = collect(mosquitto.port, REPLIES, default_topic)
    send(worker, a_job("j-other", [1], bundle_name="other", bundle_sha256="0" * 64).encode(), b"c-other")
    send(worker, b'{"job_id": "j-bad", "format": 1}', b"c-bad")
    worker._on_job(b"not json at all", None, CameraTopics.for_camera(PREFIX, "cam").explain_job)  # no id: no answer
    worker._on_job(b'{"job_id": "j-plain"}', None, CameraTopics.for_camera(PREFIX, "cam").explain_job)
    got = answers(watcher, count=2)
    by_job = {m.job_id: (m.response, c) for m, c in got}
    other, correlation = by_job["j-other"]
    assert other["error"]["code"] == "unknown_bundle" and correlation == b"c-other"
    assert f"{MODEL} ({SHA256[:12]})" in other["error"]["message"] and "0" * 64 in other["error"]["message"]
    bad, correlation = by_job["j-bad"]
    assert bad["error"]["code"] == "bad_job" and correlation == b"c-bad"
    # without a Response Topic the answer goes to the camera's result topic
    plain = answers(watcher, default_topic)[0][0]
    assert plain.job_id == "j-plain" and plain.response["error"]["code"] == "bad_job"
    time.sleep(1.0)
    assert len(watcher.on(REPLIES)) == 2 and len(watcher.on(default_topic)) == 1
    assert worker.announcement()["jobs_refused"] == 1  # the unknown bundle; unreadable jobs are not counted


def test_a_job_that_fails_is_answered_internal_and_the_next_one_still_explained(worker, mosquitto, collect, local):
    watcher = collect(mosquitto.port, REPLIES)
    tokens = local.vocab.encode(SCENE.caption)
    broken = a_job("j-broken", tokens,
                   options={"smoothgrad_samples": 4, "ig_steps": 8, "gradcam_layer": "no_such_layer"})
    send(worker, broken.encode(), b"c-broken")
    worker._explain(worker._jobs.get_nowait())
    send(worker, a_job("j-next", tokens, indices=[0], methods=["gradcam"]).encode(), b"c-next")
    worker._explain(worker._jobs.get_nowait())
    results = {m.job_id: m.response for m, _ in answers(watcher, count=6) if isinstance(m, ResultMessage)}
    assert results["j-broken"]["status"] == "error" and results["j-broken"]["error"]["code"] == "internal"
    assert "no_such_layer" in results["j-broken"]["error"]["message"]
    assert results["j-next"]["status"] == "ok" and [w["index"] for w in results["j-next"]["words"]] == [0]
    announced = worker.announcement()
    assert (announced["jobs_failed"], announced["jobs_done"]) == (1, 1)
    assert np.isfinite(announced["explain_ms"]["p50"])
