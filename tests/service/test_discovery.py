"""Home Assistant MQTT discovery: the messages carry what Home Assistant's schemas require,
match the MQTT contract, and survive a real broker retained (and are removed by empty ones)."""

from __future__ import annotations

import json
import re

import jinja2  # Home Assistant's template engine
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from daemon.contract import CameraTopics
from daemon.discovery import EXPLAIN_REQUEST, discovery_messages, handles_birth, removal_messages
from tests.conftest import daemon_config, wait_until
from tests.service.tls_broker import Subscriber

PREFIX, CAMERA = "explaincam", "cam"
COMMON = {"name", "unique_id", "default_entity_id", "availability_topic", "payload_available",
          "payload_not_available", "device", "origin"}
REQUIRED = {  # per component, beside COMMON (Home Assistant: sensor.mqtt, image.mqtt, button.mqtt)
    "sensor": {"state_topic", "value_template", "json_attributes_topic"},
    "image": {"image_topic", "content_type"},
    "button": {"command_topic", "payload_press"},
    "binary_sensor": {"state_topic", "value_template"},
    "event": {"state_topic", "event_types"},  # event.mqtt: event_types is a list of strings
}
TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor|image|button|event)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$")


def messages(camera: str = CAMERA, **kwargs) -> list[tuple[str, dict]]:
    return discovery_messages(PREFIX, camera, model_name="scenes-mnv3s", version="0.1.0", **kwargs)


def by_key(camera: str = CAMERA) -> dict[str, dict]:
    """Payloads by the last level before /config (caption, snapshot, explain, explanation, source)."""
    return {topic.split("/")[-2]: payload for topic, payload in messages(camera)}


def test_every_message_has_its_components_required_fields():
    for topic, payload in messages():
        assert TOPIC.match(topic), topic
        component = topic.split("/")[1]
        missing = (COMMON | REQUIRED[component]) - payload.keys()
        assert not missing, f"{topic} lacks {missing}"
        assert payload["default_entity_id"] == f"{component}.{payload['unique_id']}"
        assert payload["availability_topic"] == f"{PREFIX}/{CAMERA}/availability"  # this camera's own
        assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
        json.dumps(payload)  # publishable as JSON


def test_device_and_origin_blocks():
    for _, payload in messages():
        device = payload["device"]
        assert device["identifiers"] and all(isinstance(i, str) for i in device["identifiers"])
        assert device == {"identifiers": device["identifiers"], "name": "explaincam cam",
                          "manufacturer": "explaincam", "model": "scenes-mnv3s", "sw_version": "0.1.0"}
        assert payload["origin"]["name"] == "explaincam" and payload["origin"]["sw_version"] == "0.1.0"


def test_unique_ids_are_unique_across_entities_and_cameras():
    ids = [payload["unique_id"] for camera in ("cam", "cam2") for _, payload in messages(camera)]
    topics = [topic for camera in ("cam", "cam2") for topic, _ in messages(camera)]
    assert len(ids) == len(set(ids)) == 14
    assert len(topics) == len(set(topics)) == 14


def test_two_cameras_share_no_topic_that_home_assistant_reads():
    """Availability, states, attributes, pictures and commands of cam and cam2 are apart."""
    def used(camera):
        return {value for _, payload in messages(camera) for key, value in payload.items() if key.endswith("_topic")}
    assert used("cam").isdisjoint(used("cam2"))


def test_topics_match_the_mqtt_contract():
    entities = by_key()
    base = f"{PREFIX}/{CAMERA}"
    assert CameraTopics.for_camera(PREFIX, CAMERA).caption_state == f"{base}/caption/state"
    # the sensor reads the caption/state topic (published on change), not the per-frame caption
    assert entities["caption"]["state_topic"] == entities["caption"]["json_attributes_topic"] == f"{base}/caption/state"
    assert entities["caption"]["value_template"] == "{{ value_json.caption[:255] }}"
    assert (entities["snapshot"]["image_topic"], entities["snapshot"]["content_type"]) == (f"{base}/snapshot", "image/jpeg")
    assert entities["explain"]["command_topic"] == f"{base}/explain/request"
    assert json.loads(entities["explain"]["payload_press"]) == EXPLAIN_REQUEST == {
        "id": "ha-button", "frame": "latest", "methods": ["gradcam", "saliency"], "words": "all"}
    assert (entities["explanation"]["image_topic"], entities["explanation"]["content_type"]) == (
        f"{base}/explain/image", "image/jpeg")
    assert entities["explanation"]["json_attributes_topic"] == f"{base}/explain/image/info"  # made_at
    assert entities["source"]["state_topic"] == f"{base}/source"
    assert all("url_topic" not in payload for payload in entities.values())  # exclusive with image_topic


def test_icons_categories_and_configuration_url():
    entities = by_key()
    assert all(payload["icon"].startswith("mdi:") for payload in entities.values())
    assert entities["source"]["entity_category"] == "diagnostic"
    assert all("entity_category" not in entities[key] for key in ("caption", "snapshot", "explain", "explanation"))
    assert all("configuration_url" not in payload["device"] for payload in entities.values())  # none by default
    url = "http://box.local/explaincam/cam/"
    for _, payload in messages(configuration_url=url):
        assert payload["device"]["configuration_url"] == url


def test_unfamiliar_scene_sensor_follows_the_captions_flag():
    sensor = by_key()["unfamiliar"]
    assert sensor["state_topic"] == f"{PREFIX}/{CAMERA}/caption" and sensor["device_class"] == "problem"
    template = jinja2.Environment().from_string(sensor["value_template"])
    assert template.render(value_json={"caption": "x", "out_of_distribution": True}) == "ON"
    assert template.render(value_json={"caption": "x", "out_of_distribution": False}) == "OFF"
    assert template.render(value_json={"caption": "x"}) == "OFF"  # a bundle without feature statistics


def test_discovery_prefix_is_configurable():
    for topic, _ in messages(discovery_prefix="ha"):
        assert topic.startswith("ha/") and topic.endswith("/config")


def test_removal_messages_empty_every_config_topic():
    assert removal_messages(PREFIX, CAMERA) == [(topic, b"") for topic, _ in messages()]


@pytest.mark.parametrize("topic, payload, expected", [
    ("homeassistant/status", b"online", True),
    ("homeassistant/status", "online\n", True),
    ("homeassistant/status", b"offline", False),
    ("explaincam/cam/availability", b"online", False),
    ("ha/status", b"online", False),
])
def test_handles_birth(topic, payload, expected):
    assert handles_birth(topic, payload) is expected


def test_handles_birth_with_another_discovery_prefix():
    assert handles_birth("ha/status", b"online", "ha")


def publish_all(client: paho.Client, items) -> None:
    for topic, payload in items:
        data = payload if isinstance(payload, bytes) else json.dumps(payload)
        client.publish(topic, data, qos=1, retain=True).wait_for_publish(5)


def test_messages_are_retained_by_a_real_broker_and_removed_again(plain_broker):
    publisher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    publisher.connect("127.0.0.1", plain_broker.port)
    publisher.loop_start()
    try:
        publish_all(publisher, messages())
        # Home Assistant subscribes later and still gets every config, retained and intact.
        late = Subscriber(plain_broker.port, "homeassistant/#")
        got = late.wait_for(5)
        late.close()
        assert sorted((m.topic, json.loads(m.payload)) for m in got) == sorted(messages())
        assert all(m.retain for m in got)

        publish_all(publisher, removal_messages(PREFIX, CAMERA))
        after = Subscriber(plain_broker.port, "homeassistant/#")
        assert after.wait_for(1, timeout=1.0) == []  # nothing retained any more
        after.close()
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def test_daemon_announces_itself_and_again_when_home_assistant_restarts(mosquitto, collect, daemon_process,
                                                                       tmp_path):
    """`explaincam run` publishes the five entities retained, and re-sends them on HA's birth."""
    import time

    cfg = daemon_config(tmp_path, mosquitto.port)
    watcher = collect(mosquitto.port, "homeassistant/#")
    daemon_process(cfg)
    expected = {topic for topic, _ in discovery_messages("explaincam", "testcam", model_name="m", version="v")}

    wait_until(lambda: expected <= {m.topic for m in watcher.on_prefix("homeassistant/")}, 30,
               message="all discovery messages")
    button = watcher.wait_for(next(t for t in expected if "/button/" in t)).json()
    assert button["command_topic"] == "explaincam/testcam/explain/request"
    assert button["device"]["model"] == "scenes-mnv3s"

    since = time.monotonic()
    publisher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    publisher.publish("homeassistant/status", "online").wait_for_publish(5)
    wait_until(lambda: expected <= {m.topic for m in watcher.on_prefix("homeassistant/", since)}, 10,
               message="discovery sent again after the birth message")
    publisher.loop_stop()
    publisher.disconnect()
