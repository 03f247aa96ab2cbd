"""Home Assistant MQTT discovery for one camera: pure functions, no network.

Seven entities on one device ("explaincam <camera>"), each announced on
``{discovery_prefix}/{component}/{node}/{key}/config`` (retained), topics from
``daemon.contract``:

=============  ===========  ===================================================================
component      key          what
=============  ===========  ===================================================================
sensor         caption      the caption (first 255 characters) from ``caption/state``, which
                            is published only when the caption changes; attributes: the
                            whole caption, since when, its first frame id, the model (all
                            stable until the next change, so the recorder stores one row per
                            change)
binary_sensor  unfamiliar   on while the caption says ``out_of_distribution``: the frame is
                            unlike what the model was made for (daemon/familiarity.py);
                            read from ``caption`` without attributes, so only changes record
image          snapshot     the JPEG on ``snapshot`` (at most every ``mqtt.jpeg_interval_s``)
button         explain      publishes an explanation request for the latest frame
image          explanation  the PNG on ``explain/image`` (a placeholder until the first
                            explanation); attributes from ``explain/image/info``:
                            ``made_at`` (when the explanation was made; the entity's own
                            state is when Home Assistant received the picture), request id,
                            frame id, caption, methods
sensor         source       diagnostic: the camera source's state (ok, retrying, ...) from
                            ``source``
event          timeline     fires once per event the timeline stores (``history/event``,
                            not retained): ``event_type`` ``caption`` or ``unfamiliar``,
                            attributes event id, caption, start, familiarity (left out when
                            history is off)
=============  ===========  ===================================================================
"""

from __future__ import annotations

import json

from daemon.contract import (HISTORY_EVENT_TYPES, OFFLINE, ONLINE, CameraTopics, discovery_config_topic,
                             discovery_node, explain_request, home_assistant_status_topic)

ORIGIN_NAME = "explaincam"
MANUFACTURER = "explaincam"
STATE_MAX_CHARS = 255  # Home Assistant refuses longer states
EXPLAIN_REQUEST = explain_request("ha-button", "latest", ["gradcam", "saliency"], "all")


def _entities(prefix: str, camera: str, timeline: bool = True) -> list[tuple[str, str, dict]]:
    """(component, key, component-specific fields) of every discovered entity (the timeline's event
    entity only with ``timeline``)."""
    topics = CameraTopics.for_camera(prefix, camera)
    timeline_entity = [("event", "timeline", {
        "name": "Timeline event",
        "icon": "mdi:timeline-clock-outline",
        "state_topic": topics.history_event,
        "event_types": list(HISTORY_EVENT_TYPES),
    })] if timeline else []
    return timeline_entity + [
        ("sensor", "caption", {
            "name": "Caption",
            "icon": "mdi:image-text",
            "state_topic": topics.caption_state,
            "value_template": f"{{{{ value_json.caption[:{STATE_MAX_CHARS}] }}}}",
            "json_attributes_topic": topics.caption_state,
        }),
        ("binary_sensor", "unfamiliar", {
            "name": "Unfamiliar scene",
            "device_class": "problem",
            "icon": "mdi:image-off-outline",
            "state_topic": topics.caption,
            "value_template": "{{ 'ON' if value_json.out_of_distribution | default(false) else 'OFF' }}",
        }),
        ("image", "snapshot", {
            "name": "Snapshot",
            "icon": "mdi:cctv",
            "image_topic": topics.snapshot,
            "content_type": "image/jpeg",
        }),
        ("button", "explain", {
            "name": "Explain latest frame",
            "icon": "mdi:magnify-scan",
            "command_topic": topics.explain_request,
            "payload_press": json.dumps(EXPLAIN_REQUEST, separators=(",", ":")),
            "qos": 1,
            "retain": False,
        }),
        ("image", "explanation", {
            "name": "Last explanation",
            "icon": "mdi:image-search",
            "image_topic": topics.explain_image,
            "content_type": "image/jpeg",
            "json_attributes_topic": topics.explain_image_info,
        }),
        ("sensor", "source", {
            "name": "Camera source",
            "icon": "mdi:camera-wireless",
            "entity_category": "diagnostic",
            "state_topic": topics.source,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.source,
        }),
    ]


def discovery_messages(prefix: str, camera: str, discovery_prefix: str = "homeassistant", *,
                       model_name: str, version: str, configuration_url: str | None = None,
                       timeline: bool = True) -> list[tuple[str, dict]]:
    """(config topic, payload) of every entity; publish each payload as JSON, retained, QoS 1.

    ``prefix`` and ``camera`` are the MQTT contract's topic levels, ``model_name`` the
    bundle's model (shown as the device model), ``version`` explaincam's version and
    ``configuration_url`` a page about the camera (the device's "Visit" link), if any;
    ``timeline``: whether history is on (the event entity).
    """
    node = discovery_node(prefix, camera)
    device = {
        "identifiers": [node],
        "name": f"explaincam {camera}",
        "manufacturer": MANUFACTURER,
        "model": model_name,
        "sw_version": version,
    }
    if configuration_url:
        device["configuration_url"] = configuration_url
    availability = CameraTopics.for_camera(prefix, camera).availability
    origin = {"name": ORIGIN_NAME, "sw_version": version}
    messages = []
    for component, key, fields in _entities(prefix, camera, timeline):
        object_id = f"{node}_{key}"
        payload = {
            **fields,
            "unique_id": object_id,
            # Home Assistant 2025.10 and later read default_entity_id; older ones object_id
            # (each ignores the key it does not know).
            "default_entity_id": f"{component}.{object_id}",
            "object_id": object_id,
            "availability_topic": availability,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": device,
            "origin": origin,
        }
        messages.append((discovery_config_topic(discovery_prefix, component, node, key), payload))
    return messages


def removal_messages(prefix: str, camera: str, discovery_prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """(config topic, empty payload) of every entity; publish retained to remove the entities."""
    node = discovery_node(prefix, camera)
    return [(discovery_config_topic(discovery_prefix, component, node, key), b"")
            for component, key, _ in _entities(prefix, camera)]


def handles_birth(topic: str, payload: bytes | str, discovery_prefix: str = "homeassistant") -> bool:
    """Whether a message is Home Assistant's birth (``{discovery_prefix}/status`` = ``online``),
    after which the discovery messages must be sent again."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    return topic == home_assistant_status_topic(discovery_prefix) and payload.strip() == ONLINE
