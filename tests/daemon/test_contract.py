"""The MQTT contract module: topic classes, payloads, and the explanation image a daemon
publishes at start (its last explanation from the snapshot folder, else the placeholder)."""

from __future__ import annotations

import json

import cv2
import numpy as np

from daemon.app import publish_last_explanation
from daemon.explain.service import picture_jpeg
from daemon.contract import (CameraTopics, PrefixTopics, caption_state_message, explain_request, explanation_info,
                             parse_iso_time, placeholder_png, source_message)

TOPICS = CameraTopics.for_camera("explaincam", "cam")
CAMERA_TOPICS = ("availability", "caption", "caption_state", "snapshot", "source", "explain_request",
                 "explain_response", "explain_image", "explain_image_info", "explain_job", "explain_result")


class Published(list):
    """The publisher's ``publish`` seam: keeps (topic, payload, retain)."""

    def publish(self, topic, payload, qos=0, retain=False, fit=None):
        self.append((topic, payload if isinstance(payload, bytes) else payload.encode(), retain))

    def on(self, topic):
        return [payload for t, payload, retain in self if t == topic and retain]


def test_every_camera_topic_is_under_its_own_camera_and_distinct():
    names = [getattr(TOPICS, name) for name in CAMERA_TOPICS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("explaincam/cam/") for name in names)
    other = {getattr(CameraTopics.for_camera("explaincam", "cam2"), name) for name in CAMERA_TOPICS}
    assert other.isdisjoint(names)
    assert TOPICS.availability == "explaincam/cam/availability"
    assert TOPICS.private_response("client-1") == "explaincam/cam/explain/response/client-1"
    assert PrefixTopics("explaincam").stats == "explaincam/stats"


def test_fleet_topics_a_worker_subscribes_to_match_every_cameras_jobs():
    import paho.mqtt.client as paho

    from daemon.mqtt import topic_filter

    fleet = PrefixTopics("explaincam")
    jobs = fleet.explain_jobs("explainers")
    assert jobs.startswith("$share/explainers/")
    assert paho.topic_matches_sub(topic_filter(jobs), TOPICS.explain_job)
    assert not paho.topic_matches_sub(topic_filter(jobs), TOPICS.explain_result)
    assert not paho.topic_matches_sub(topic_filter(jobs), PrefixTopics("other").worker("w1"))
    assert fleet.worker_availability("w1") == f"{fleet.worker('w1')}/availability"
    for topic in (fleet.worker("w1"), fleet.worker_availability("w1")):
        assert paho.topic_matches_sub(fleet.workers, topic)


def test_payloads():
    state = caption_state_message("a red circle", 1700000000.25, 12, "scenes-mnv3s")
    assert state == {"caption": "a red circle", "since": "2023-11-14T22:13:20+00:00", "frame_id": 12,
                     "model": "scenes-mnv3s"}
    assert parse_iso_time(state["since"]) == 1700000000
    assert explain_request("x") == {"id": "x", "frame": "latest", "words": "all"}  # methods: the daemon's default
    source = source_message({"state": "ok", "message": "reading", "since": 1700000000.412, "failures": 0}, "scenes")
    assert source == {"state": "ok", "message": "reading", "since": "2023-11-14T22:13:20+00:00", "failures": 0,
                      "source": "scenes"}
    response = {"id": "r1", "frame_id": 3, "caption": "a b", "ace": {"concepts": []},
                "words": [{"index": 0, "word": "a", "gradcam": {}, "saliency": {}}]}
    assert explanation_info(response, 1700000000)["methods"] == ["ace", "gradcam", "saliency"]


def test_the_placeholder_is_published_when_no_explanation_was_made(tmp_path):
    published = Published()
    publish_last_explanation(published, TOPICS, tmp_path)
    (jpeg,) = published.on(TOPICS.explain_image)
    assert jpeg.startswith(b"\xff\xd8") and jpeg == picture_jpeg(placeholder_png())[0]
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (224, 448, 3)
    assert json.loads(published.on(TOPICS.explain_image_info)[0])["placeholder"] is True


def test_the_last_explanation_of_the_snapshot_folder_is_published_with_when_it_was_made(tmp_path):
    grid = cv2.imencode(".png", np.full((16, 24, 3), 200, np.uint8))[1].tobytes()
    (tmp_path / "explanation.png").write_bytes(grid)
    made_at = "2024-03-20T18:02:11+00:00"
    (tmp_path / "explanation.json").write_text(json.dumps(
        {"id": "r7", "frame_id": 41, "caption": "a red circle", "made_at": made_at,
         "words": [{"index": 0, "word": "a", "gradcam": {}}]}))
    published = Published()
    publish_last_explanation(published, TOPICS, tmp_path)
    (jpeg,) = published.on(TOPICS.explain_image)  # the saved picture, as a JPEG
    assert jpeg.startswith(b"\xff\xd8")
    assert np.abs(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int) - 200).max() <= 2
    info = json.loads(published.on(TOPICS.explain_image_info)[0])
    assert info == {"placeholder": False, "made_at": made_at, "request_id": "r7", "frame_id": 41,
                    "caption": "a red circle", "methods": ["gradcam"]}


def test_an_unreadable_last_explanation_gives_the_placeholder(tmp_path):
    (tmp_path / "explanation.png").write_bytes(b"png")
    (tmp_path / "explanation.json").write_text("{torn")
    published = Published()
    publish_last_explanation(published, TOPICS, tmp_path)
    assert published.on(TOPICS.explain_image) == [picture_jpeg(placeholder_png())[0]]
