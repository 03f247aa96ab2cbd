"""A fleet end to end: three camera daemons (`explaincam run`, explain.mode remote) and two
workers (`explaincam worker`) on one real Mosquitto; the tests run in file order and the last
one kills a worker."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from daemon.broker import LocalBroker, free_port
from daemon.explain.heatmap import heatmap_from_base64
from daemon import contract
from daemon.contract import CameraTopics, JobMessage, PrefixTopics, ProgressMessage, ResultMessage, read_answer
from tests.conftest import PREFIX, START_TIMEOUT, DaemonProcess, MessageCollector, daemon_config, wait_until
from tests.fleet.conftest import Requester, WorkerProcess, worker_config

CAMERAS = ("cam1", "cam2", "cam3")
WORKERS = ("w1", "w2")
RETRY_S = 45  # longer than one job takes on this busy box (load 10+): no retry unless a worker dies
WORKER_START_TIMEOUT = 180  # backend and model load and warm-up, two at once on 2 cores


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A broker, three camera daemons and two workers, all started; a collector of jobs, results and workers."""
    root = tmp_path_factory.mktemp("fleet")
    broker = LocalBroker(free_port(), root / "broker")
    broker.start()
    workers, daemons, watcher = [], [], None
    try:
        workers = [WorkerProcess(worker_config(broker.port, w), root / w) for w in WORKERS]
        for camera in CAMERAS:
            config = daemon_config(root / camera, broker.port, camera={"name": camera},
                                   explain={"mode": "remote", "remote": {"retry_s": RETRY_S, "max_tries": 3}})
            config["camera"]["source"]["fps"] = 1  # leaves the CPU to the workers
            daemons.append(DaemonProcess(config, root / camera))
        watcher = MessageCollector(broker.port, [f"{PREFIX}/+/explain/job", f"{PREFIX}/+/explain/result",
                                                 f"{PREFIX}/+/caption", f"{PREFIX}/workers/#"])
        for camera in CAMERAS:
            watcher.wait_for(f"{PREFIX}/{camera}/caption", timeout=START_TIMEOUT)
        for w in WORKERS:
            watcher.wait_for(PrefixTopics(PREFIX).worker(w), lambda m: m.payload and m.json()["state"] == "online",
                             timeout=WORKER_START_TIMEOUT)
        yield broker, daemons, workers, watcher
    finally:
        if watcher is not None:
            watcher.close()
        for process in daemons + workers:
            process.kill()
        broker.stop()


@pytest.fixture(scope="module")
def local_explainer():
    """The explainer a camera's own explainer process would load (same bundle, same options)."""
    from daemon.config import ExplainConfig
    from daemon.explain.process import ProcessSettings, load_explainer
    from tests.conftest import SHIPPED_BUNDLE

    from daemon.bundle import manifest_sha256

    return load_explainer(ProcessSettings(bundle_path=str(SHIPPED_BUNDLE), explain=ExplainConfig(threads=1),
                                          bundle_sha256=manifest_sha256(SHIPPED_BUNDLE)))


def test_every_request_is_answered_once_by_one_worker_with_the_local_maps(fleet, local_explainer):
    broker, daemons, workers, watcher = fleet
    requester = Requester(broker.port)
    try:
        sent = {}
        for n, camera in enumerate(CAMERAS + CAMERAS[:1]):  # four jobs: the shared subscription deals both workers some
            correlation = f"{camera}-{n}".encode()
            requester.send(camera, {"id": f"{camera}-{n}", "methods": ["gradcam"], "words": [0, 1]}, correlation)
            sent[correlation] = camera
        answers = {c: requester.answer(c, 120) for c in sent}
        time.sleep(1.0)  # room for a second answer, were there one
        for correlation, camera in sent.items():
            assert len(requester.answers(correlation)) == 1, correlation
            answer = answers[correlation]
            assert (answer["id"], answer["status"]) == (correlation.decode(), "ok"), answer.get("error")
            assert answer["worker"] in WORKERS and answer["timings_ms"]["tries"] == 1
        assert {a["worker"] for a in answers.values()} == set(WORKERS)  # the group shared the jobs
        backend = local_explainer.backend.name  # the workers run the backend `auto` picks here too
        for w in WORKERS:
            announcement = watcher.wait_for(PrefixTopics(PREFIX).worker(w), lambda m: m.payload).json()
            assert announcement["backend"] == backend and announcement["bundles"][0]["backend"] == backend

        jobs = [JobMessage.decode(m.payload) for m in watcher.on_prefix(PREFIX) if m.topic.endswith("/explain/job")]
        answers_and_notes = [read_answer(m.payload) for m in watcher.on_prefix(PREFIX)
                             if m.topic.endswith("/explain/result")]
        results = [r for r in answers_and_notes if isinstance(r, ResultMessage)]
        notes = {(n.job_id, n.progress) for n in answers_and_notes if isinstance(n, ProgressMessage)}
        assert len(jobs) == len(sent) and len({j.job_id for j in jobs}) == len(sent)  # published once each
        assert sorted(r.job_id for r in results) == sorted(j.job_id for j in jobs)  # explained once each
        assert notes == {(j.job_id, p) for j in jobs for p in (contract.QUEUED, contract.STARTED)}
        for job in jobs:
            answer = answers[job.request_id.encode()]
            assert job.camera == sent[job.request_id.encode()] and answer["frame_id"] == job.frame_id
            expected, _ = _local_answer(local_explainer, job)
            assert answer["caption"] == expected["caption"] and answer["float_caption"] == expected["float_caption"]
            for remote_word, local_word in zip(answer["words"], expected["words"], strict=True):
                assert remote_word["word"] == local_word["word"]
                remote_map = heatmap_from_base64(remote_word["gradcam"]["heatmap"])
                local_map = heatmap_from_base64(local_word["gradcam"]["heatmap"])
                assert np.abs(remote_map - local_map).max() <= 1 / 255 + 1e-6, (job.request_id, remote_word["index"])
                assert remote_word["gradcam"]["peak"] == local_word["gradcam"]["peak"]
    finally:
        requester.close()


def _local_answer(explainer, job: JobMessage) -> tuple[dict, bytes]:
    """The answer pipeline run here on the job's frame."""
    from daemon.explain.job import Job, answer_job

    return answer_job(explainer, Job(0, job.request_id, job.frame_id, job.image, job.caption, job.tokens,
                                 job.indices, job.methods))


def test_a_job_for_a_bundle_the_workers_do_not_hold_is_refused_naming_it(fleet):
    broker, daemons, workers, watcher = fleet
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    job = JobMessage(job_id="foreign-1", camera="cam9", request_id="f1", frame_id=1, caption="a b", tokens=[1, 2],
                     indices=[0], methods=["gradcam"], bundle_name="other-model", bundle_sha256="ab" * 32,
                     image=np.zeros((224, 224, 3), np.uint8),
                     options={"smoothgrad_samples": 2, "ig_steps": 4, "gradcam_layer": None})
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="foreign-camera", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = CameraTopics(PREFIX, "cam9").explain_result
        properties.CorrelationData = b"foreign-1"
        client.publish(CameraTopics(PREFIX, "cam9").explain_job, job.encode(), 1,
                       properties=properties).wait_for_publish(5)
        result = read_answer(watcher.wait_for(CameraTopics(PREFIX, "cam9").explain_result, timeout=10).payload)
    finally:
        client.disconnect()
        client.loop_stop()
    assert result.job_id == "foreign-1" and result.worker in WORKERS and result.grid_png is None
    error = result.response["error"]
    assert (result.response["status"], error["code"]) == ("error", "unknown_bundle")
    assert "other-model" in error["message"] and "ab" * 32 in error["message"] and "scenes-mnv3s" in error["message"]


def test_a_worker_killed_mid_job_leaves_the_request_to_the_other(fleet):
    broker, daemons, workers, watcher = fleet
    requester = Requester(broker.port, "test/fleet/kill")
    try:
        sent = time.monotonic()
        # smoothgrad of every word: seconds on LiteRT (gradcam takes well under one), so the kill lands mid-job
        requester.send("cam2", {"id": "kill-1", "methods": ["smoothgrad"]}, b"kill-1")
        started = "(request 'kill-1' of cam2) started"
        victim = wait_until(lambda: next((w for w in workers if started in w.log()), None), 60,
                            message="a worker to start the job")
        victim.kill(signal.SIGKILL)
        killed = time.monotonic()
        survivor = next(w for w in workers if w is not victim)
        answer = requester.answer(b"kill-1", RETRY_S + 60)
        answered = time.monotonic()
        time.sleep(1.0)
    finally:
        requester.close()
    assert (answer["status"], answer["worker"]) == ("ok", survivor.id), answer.get("error")
    assert answer["timings_ms"]["tries"] >= 2 and len(requester.answers(b"kill-1")) == 1
    # within the configured retry time plus one job's time (the survivor's) and a little slack
    job_s = answer["timings_ms"]["worker_ms"] / 1e3
    assert answered - sent <= RETRY_S + job_s + 3.0, (answered - sent, job_s)
    assert answered - killed <= RETRY_S + job_s + 3.0
    # the broker published the victim's last will
    watcher.wait_for(PrefixTopics(PREFIX).worker_availability(victim.id), lambda m: m.payload == b"offline",
                     timeout=15)
    cam2 = daemons[CAMERAS.index("cam2")]  # it did not wait for retry_s: the last will told it
    assert f"its worker {victim.id} went offline; published again (try 2 of 3)" in cam2.log()
