"""ExplainService with a real spawn explainer process: queueing, busy, idle exit, crash and stuck recovery."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from daemon.captioner import Captioner
from daemon.config import ExplainConfig
from daemon.contract import CameraTopics
from daemon.explain import local as local_module
from daemon.explain.explainer import Explainer, answer
from daemon.explain.local import LocalDispatcher
from daemon.explain.service import ExplainService, picture_jpeg
from daemon.framecache import CachedFrame, FrameCache
from daemon.imaging import decode_image
from daemon.scenes import scene_at
from daemon.snapshot import SnapshotFolder
from tests.conftest import SHIPPED_BUNDLE, wait_until

EXPLAIN_TIMEOUT = 180
TOPICS = CameraTopics.for_camera("explaincam", "cam")


class Published:
    """The service's ``publish`` seam, recording what it is given (thread-safe)."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    def __call__(self, topic, payload, qos=0, retain=False, correlation_data=None, fit=None):
        with self.lock:
            self.messages.append((topic, payload, retain, correlation_data))

    def answer(self, request_id, timeout=EXPLAIN_TIMEOUT):
        """The JSON response with this id, its topic and correlation data."""
        def find():
            with self.lock:
                for topic, payload, _, correlation in self.messages:
                    if topic not in (TOPICS.explain_image, TOPICS.explain_image_info) \
                            and json.loads(payload)["id"] == request_id:
                        return json.loads(payload), topic, correlation
            return None
        return wait_until(find, timeout, message=f"the answer to {request_id!r}")


@pytest.fixture
def frames():
    """A frame cache holding three captioned scenes, as the caption loop leaves it."""
    captioner = Captioner.from_path(SHIPPED_BUNDLE)
    cache = FrameCache(4)
    for i in range(3):
        scene = scene_at(2024, i)
        cache.put(CachedFrame(100 + i, time.time(), scene.image, captioner.caption(scene.image), scene.caption))
    return cache


def test_queue_busy_idle_exit_crash_and_stuck_recovery(frames, tmp_path, monkeypatch):
    monkeypatch.setattr(local_module, "STUCK_S", 3.0)
    published = Published()
    config = ExplainConfig(idle_exit_s=3, queue_size=1, smoothgrad_samples=2, ig_steps=256, threads=1)
    service = ExplainService(config=config, local=LocalDispatcher(config, SHIPPED_BUNDLE),
                             snapshot=SnapshotFolder(tmp_path / "snap", "cam"), publish=published, topics=TOPICS,
                             frame_cache=frames, model_name="test-model")
    try:
        # the first request starts the process; the queue holds one, so the next is busy at once
        service.handle_request(b'{"id": "one", "frame": 101, "methods": ["gradcam"]}', "reply/one", b"c1")
        service.handle_request(b'{"id": "two", "methods": ["gradcam"]}')
        busy, topic, _ = published.answer("two", timeout=1)
        assert (busy["status"], busy["error"]["code"], topic) == ("busy", "busy", TOPICS.explain_response)
        one, topic, correlation = published.answer("one")
        assert (one["status"], topic, correlation) == ("ok", "reply/one", b"c1")
        assert one["frame_id"] == 101 and one["caption"] == frames.get(101).caption.caption
        image = next(p for t, p, retain, _ in published.messages if t == TOPICS.explain_image and retain)
        assert image.startswith(b"\xff\xd8") and decode_image(image).ndim == 3  # the picture as a JPEG
        info = json.loads(next(p for t, p, retain, _ in published.messages if t == TOPICS.explain_image_info))
        assert (info["request_id"], info["frame_id"], info["methods"]) == ("one", 101, ["gradcam"])
        snapshot = json.loads((tmp_path / "snap" / "explanation.json").read_text())
        assert snapshot["id"] == "one" and snapshot["model"] == "test-model"
        assert snapshot["made_at"] == info["made_at"]  # restored with the picture when the daemon restarts

        # idle: the process ends by itself, and the next request starts it again
        wait_until(lambda: service.local.explainer_pid is None, 30, message="the idle explainer to exit")
        service.handle_request(b'{"id": "three", "words": [0], "methods": ["saliency"]}')
        three, _, _ = published.answer("three")
        assert three["status"] == "ok" and "load_ms" in three["timings_ms"]

        # a crash mid-explanation is an `internal` error with the id; the daemon goes on
        service.handle_request(b'{"id": "four", "methods": ["integrated_gradients"]}')
        wait_until(lambda: service.local._running is not None, EXPLAIN_TIMEOUT, message="the job to start")
        os.kill(service.local.explainer_pid, signal.SIGKILL)
        four, _, _ = published.answer("four", timeout=30)
        assert (four["status"], four["error"]["code"]) == ("error", "internal")
        assert "crashed" in four["error"]["message"]
        service.handle_request(b'{"id": "five", "words": [0], "methods": ["gradcam"]}')
        assert published.answer("five")[0]["status"] == "ok"

        # a stuck explainer (stopped, say) that leaves a job untaken is killed and replaced
        stuck = service.local.explainer_pid
        os.kill(stuck, signal.SIGSTOP)
        service.handle_request(b'{"id": "six", "words": [0], "methods": ["gradcam"]}')
        assert published.answer("six")[0]["status"] == "ok"
        assert service.local.explainer_pid not in (None, stuck)
    finally:
        service.stop()
    assert service.local.explainer_pid is None


def test_the_picture_of_an_eight_word_caption_is_a_fraction_of_its_png():
    captioner = Captioner.from_path(SHIPPED_BUNDLE)
    scene = next(s for s in (scene_at(777, i) for i in range(200)) if len(s.caption.split()) == 8)
    tokens = list(captioner.caption(scene.image).tokens)
    assert len(tokens) == 8
    payload, png = answer(Explainer(SHIPPED_BUNDLE, backend="litert", threads=1), scene.image, tokens,
                          list(range(8)), ["gradcam", "saliency"], "eight")
    jpeg, fit = picture_jpeg(png)
    assert len(jpeg) <= 300_000 and len(png) > 4 * len(jpeg), (len(png), len(jpeg))
    # the picture a person sees: PSNR against the lossless one (above about 35 dB the difference
    # is hard to see; the scenes' sensor noise is most of what JPEG changes)
    error = ((decode_image(jpeg).astype(float) - decode_image(png).astype(float)) ** 2).mean()
    psnr = 10 * np.log10(255 ** 2 / error)
    print(f"picture: PNG {len(png)} bytes, JPEG {len(jpeg)} bytes, PSNR {psnr:.1f} dB")
    assert psnr > 35, psnr
    smaller = fit(20_000)  # a broker's packet limit: a smaller JPEG of the same picture, or nothing
    assert smaller is not None and len(smaller) <= 20_000 and decode_image(smaller).shape[2] == 3
