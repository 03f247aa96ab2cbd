"""The camera daemon's side of a fleet over a real Mosquitto: the explain service's accepted
requests become jobs, and the dispatcher's retries, duplicate answers and error codes.

A test client plays the worker on the shared subscription, so each test decides what the
worker answers (the real worker is tested in test_fleet_e2e.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.captioner import Captioner
from daemon.config import ExplainConfig, MqttConfig
from daemon.imaging import decode_image, encode_png
from daemon.explain.requests import response
from daemon.explain.local import LocalDispatcher
from daemon.explain.service import ExplainService
from daemon import contract
from daemon.contract import CameraTopics, JobMessage, PrefixTopics
from daemon.fleet.dispatcher import RemoteDispatcher
from daemon.framecache import CachedFrame, FrameCache
from daemon.mqtt import MqttPublisher
from daemon.scenes import scene_at
from daemon.snapshot import SnapshotFolder
from tests.conftest import PREFIX, SHIPPED_BUNDLE, wait_until

CAMERA = "fleetcam"
REPLY = "test/fleet/reply"
MANIFEST_SHA = hashlib.sha256((SHIPPED_BUNDLE / "manifest.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def frames():
    """A frame cache holding two captioned scenes, as the caption loop leaves it."""
    captioner = Captioner.from_path(SHIPPED_BUNDLE)
    cache = FrameCache(4)
    for i in range(2):
        scene = scene_at(2024, i)
        cache.put(CachedFrame(100 + i, time.time(), scene.image, captioner.caption(scene.image), scene.caption))
    return cache


class FakeWorker:
    """A real MQTT 5 client on the workers' shared subscription that records jobs and answers as told."""

    def __init__(self, port: int):
        self.jobs: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-worker", protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(PrefixTopics(PREFIX).explain_jobs("explainers"), 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.jobs.append(message)

    def job(self, n: int, timeout: float = 10) -> tuple[JobMessage, paho.MQTTMessage]:
        """The n-th job received (1-based), decoded, with its MQTT message."""
        message = wait_until(lambda: len(self.jobs) >= n and self.jobs[n - 1], timeout, message=f"job {n}")
        return JobMessage.decode(message.payload), message

    def answer(self, message: paho.MQTTMessage, result: dict, grid: bytes | None = None) -> None:
        """Publish a result to the job's Response Topic with its Correlation Data."""
        job = JobMessage.decode(message.payload)
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = message.properties.CorrelationData
        self.client.publish(message.properties.ResponseTopic,
                            contract.encode_result(job.job_id, job.attempt, "fake", result, grid), qos=1,
                            properties=properties).wait_for_publish(5)

    def announce(self, online: bool = True) -> None:
        """Retained announcement holding the shipped bundle, and the availability."""
        announcement = {"id": "fake", "state": "online", "bundles": [{"name": "scenes-mnv3s", "sha256": MANIFEST_SHA}]}
        properties = Properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = 60
        self.client.publish(PrefixTopics(PREFIX).worker("fake"), json.dumps(announcement), 1, True,
                            properties=properties).wait_for_publish(5)
        self.client.publish(PrefixTopics(PREFIX).worker_availability("fake"), "online" if online else "offline",
                            1, True).wait_for_publish(5)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet_service(mosquitto, frames, tmp_path):
    """Factory: ``fleet_service(mode, **remote)`` -> (ExplainService with a RemoteDispatcher on a real broker)."""
    made = []

    def make(mode="remote", **remote):
        topics = CameraTopics.for_camera(PREFIX, CAMERA)
        publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=mosquitto.port), f"daemon-{len(made)}",
                                  topics.availability)
        config = ExplainConfig(mode=mode, remote=remote, threads=1, idle_exit_s=60)
        dispatcher = RemoteDispatcher(config, topics, SHIPPED_BUNDLE, publisher.publish, publisher.subscribe)
        service = ExplainService(config=config, local=LocalDispatcher(config, SHIPPED_BUNDLE), remote=dispatcher,
                                 snapshot=SnapshotFolder(tmp_path / "snapshot", CAMERA), publish=publisher.publish,
                                 topics=topics, frame_cache=frames, model_name="scenes-mnv3s")
        publisher.start()
        assert publisher.wait_connected(5)
        made.append((service, publisher))
        time.sleep(0.2)  # the subscriptions of on_connect reach the broker
        return service

    yield make
    for service, publisher in made:
        service.stop()
        publisher.stop()


def request(service, request_id: str, correlation: bytes, **fields) -> None:
    """Hand the service a request as the MQTT thread does."""
    body = {"id": request_id, "frame": 100, "methods": ["gradcam"], "words": [0], **fields}
    service.handle_request(json.dumps(body).encode(), REPLY, correlation)


def replies(collector, correlation: bytes) -> list[dict]:
    """Replies on the reply topic with this Correlation Data."""
    return [m.json() for m in collector.on(REPLY) if getattr(m.properties, "CorrelationData", None) == correlation]


def test_a_job_carries_the_cached_frame_and_the_first_answer_wins(mosquitto, collect, fleet_service, frames, tmp_path):
    topics = CameraTopics.for_camera(PREFIX, CAMERA)
    requester = collect(mosquitto.port, REPLY, topics.explain_image, topics.explain_image_info)
    worker = FakeWorker(mosquitto.port)
    try:
        service = fleet_service(retry_s=30)
        request(service, "r1", b"c1", words=[0, 1])
        job, message = worker.job(1)
        cached = frames.get(100)
        # the frame exactly as cached (lossless), the published caption's tokens, and where to answer
        assert job.image.dtype == cached.image.dtype and (job.image == cached.image).all()
        assert (job.camera, job.request_id, job.frame_id) == (CAMERA, "r1", 100)
        assert job.tokens == list(cached.caption.tokens) and job.caption == cached.caption.caption
        assert (job.indices, job.methods, job.attempt) == ([0, 1], ["gradcam"], 1)
        assert (job.bundle_name, job.bundle_sha256) == ("scenes-mnv3s", MANIFEST_SHA)
        assert job.options == {"smoothgrad_samples": 16, "ig_steps": 64, "gradcam_layer": None}
        assert message.properties.ResponseTopic == CameraTopics(PREFIX, CAMERA).explain_result
        assert message.properties.CorrelationData == job.job_id.encode()
        assert 29 <= message.properties.MessageExpiryInterval <= 30
        assert message.qos == 1

        grid = encode_png(cached.image)
        ok = response("r1", "ok", frame_id=100, caption=job.caption, float_caption=job.caption,
                      words=[{"index": 0, "word": "w"}], timings_ms={"gradcam_ms": 1.0})
        worker.answer(message, ok, grid)
        worker.answer(message, ok, grid)  # a second worker's answer after a retry, say
        answer = wait_until(lambda: replies(requester, b"c1"), 10, message="the answer")[0]
        time.sleep(0.5)
        assert len(replies(requester, b"c1")) == 1  # the duplicate was dropped
        assert (answer["id"], answer["status"], answer["worker"]) == ("r1", "ok", "fake")
        assert answer["timings_ms"]["tries"] == 1 and answer["timings_ms"]["total_ms"] > 0
        assert service.remote.counts["duplicates"] == 1
        image = requester.wait_for(topics.explain_image, timeout=5)
        assert np.abs(decode_image(image.payload).astype(int) - cached.image).mean() < 3  # as a JPEG
        info = requester.wait_for(topics.explain_image_info, timeout=5).json()  # as for a local explanation
        assert (info["placeholder"], info["request_id"], info["frame_id"]) == (False, "r1", 100)
        record = json.loads((tmp_path / "snapshot" / "explanation.json").read_text())
        assert (record["id"], record["worker"], record["made_at"]) == ("r1", "fake", info["made_at"])
        assert (tmp_path / "snapshot" / "explanation.jpg").stat().st_size > 0  # the frame, for the snapshot page
    finally:
        worker.close()


def test_busy_is_retried_at_once_silence_after_retry_s_then_no_worker(mosquitto, collect, fleet_service):
    requester = collect(mosquitto.port, REPLY)
    worker = FakeWorker(mosquitto.port)
    try:
        service = fleet_service(retry_s=1, max_tries=3)
        sent = time.monotonic()
        request(service, "r2", b"c2")
        first, message = worker.job(1)
        worker.answer(message, response("r2", "busy", error={"code": "busy", "message": "full"}))
        second, _ = worker.job(2)
        assert second.job_id == first.job_id and second.attempt == 2
        assert worker.jobs[1].properties.CorrelationData == first.job_id.encode()
        assert time.monotonic() - sent < 0.9  # at once, not after retry_s
        third, _ = worker.job(3, timeout=5)  # nobody answers try 2: again after retry_s
        assert third.attempt == 3 and time.monotonic() - sent >= 1.0
        answer = wait_until(lambda: replies(requester, b"c2"), 5, message="the no_worker answer")[0]
        assert (answer["id"], answer["status"], answer["error"]["code"]) == ("r2", "error", "no_worker")
        assert "explaincam worker" in answer["error"]["message"]
        assert 2.0 <= time.monotonic() - sent < 4.0
        assert len(worker.jobs) == 3
    finally:
        worker.close()


def test_auto_uses_announced_workers_and_says_timeout_when_they_are_silent(mosquitto, collect, fleet_service):
    requester = collect(mosquitto.port, REPLY)
    worker = FakeWorker(mosquitto.port)
    try:
        service = fleet_service(mode="auto", retry_s=1, max_tries=2)
        assert not service.remote.takes()  # nobody announced: the local explainer would answer
        worker.announce()
        wait_until(service.remote.takes, 5, message="the announcement to arrive")
        request(service, "r3", b"c3")
        worker.job(1)
        answer = wait_until(lambda: replies(requester, b"c3"), 6, message="the timeout answer")[0]
        assert (answer["status"], answer["error"]["code"]) == ("error", "timeout")
        assert worker.job(2)[0].attempt == 2 and len(worker.jobs) == 2
        assert service.local.explainer_pid is None  # the local explainer never started
        worker.announce(online=False)  # the last will of a worker that died
        wait_until(lambda: not service.remote.takes(), 5, message="the worker to count as gone")
    finally:
        worker.close()


def test_auto_without_a_worker_falls_back_to_the_local_explainer(mosquitto, collect, fleet_service):
    requester = collect(mosquitto.port, REPLY, CameraTopics(PREFIX, CAMERA).explain_job)
    service = fleet_service(mode="auto", retry_s=1)
    request(service, "r4", b"c4")
    answer = wait_until(lambda: replies(requester, b"c4"), 180, message="the local answer")[0]
    assert (answer["id"], answer["status"]) == ("r4", "ok")
    assert "worker" not in answer and "gradcam" in answer["words"][0]
    assert not requester.on(CameraTopics(PREFIX, CAMERA).explain_job)  # no job went to the fleet


def test_a_worker_session_kept_by_session_expiry_gets_the_jobs_sent_while_it_was_away(mosquitto):
    config = MqttConfig(host="127.0.0.1", port=mosquitto.port)
    subscription = PrefixTopics(PREFIX).explain_jobs("explainers")
    first = MqttPublisher(config, "worker-session", "test/w/availability", session_expiry_s=60)
    first.subscribe(subscription, lambda *a: None, qos=1, with_topic=True)
    first.start()
    assert first.wait_connected(5)
    time.sleep(0.3)  # the SUBSCRIBE reaches the broker
    first.stop()
    sender = MqttPublisher(config, "camera-session", "test/c/availability")
    sender.start()
    assert sender.wait_connected(5)
    sender.publish(CameraTopics(PREFIX, CAMERA).explain_job, b'{"job": 1}', qos=1, message_expiry_s=30)
    time.sleep(0.5)
    received = []
    again = MqttPublisher(config, "worker-session", "test/w/availability", session_expiry_s=60)
    again.subscribe(subscription, lambda payload, properties, topic: received.append((payload, topic)), qos=1,
                    with_topic=True)
    again.start()
    try:
        wait_until(lambda: received, 5, message="the job queued in the session")
        assert received == [(b'{"job": 1}', CameraTopics(PREFIX, CAMERA).explain_job)]
    finally:
        again.stop()
        sender.stop()


def test_a_job_a_live_worker_holds_waits_for_its_queue_and_goes_again_when_the_worker_dies(mosquitto, collect,
                                                                                         fleet_service):
    requester = collect(mosquitto.port, REPLY)
    worker = FakeWorker(mosquitto.port)
    try:
        service = fleet_service(retry_s=1, max_tries=2)
        worker.announce()
        request(service, "r5", b"c5")
        job, message = worker.job(1)
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = message.properties.CorrelationData
        worker.client.publish(message.properties.ResponseTopic,
                              contract.encode_progress(job.job_id, 1, "fake", contract.QUEUED, ahead=2), 1,
                              properties=properties).wait_for_publish(5)
        time.sleep(2.0)  # past retry_s, within retry_s per job ahead and its own
        assert len(worker.jobs) == 1 and not replies(requester, b"c5")
        killed = time.monotonic()
        worker.announce(online=False)  # the broker publishes its last will
        second, _ = worker.job(2, timeout=3)
        assert second.attempt == 2 and time.monotonic() - killed < 1.0
    finally:
        worker.close()


def test_jobs_waiting_for_the_fleet_are_answered_shutting_down_when_the_daemon_stops(mosquitto, collect,
                                                                                   fleet_service):
    requester = collect(mosquitto.port, REPLY)
    worker = FakeWorker(mosquitto.port)
    try:
        service = fleet_service(retry_s=30)
        request(service, "r6", b"c6")
        worker.job(1)
        service.stop()
        answer = wait_until(lambda: replies(requester, b"c6"), 5, message="the shutting_down answer")[0]
        assert (answer["id"], answer["status"], answer["error"]["code"]) == ("r6", "error", "shutting_down")
        request(service, "r7", b"c7")  # a request racing the shutdown
        answer = wait_until(lambda: replies(requester, b"c7"), 5, message="the second answer")[0]
        assert answer["error"]["code"] == "shutting_down" and len(worker.jobs) == 1
    finally:
        worker.close()
