"""Home Assistant MQTT discovery for one camera: pure functions, no network.

Five entities on one device ("explaincam <camera>"), each announced on
``{discovery_prefix}/{component}/{node}/{key}/config`` (retained):

=============  ===========  ======================================================
component      key          what
=============  ===========  ======================================================
sensor         caption      the caption (first 255 characters); the whole caption
                            JSON (long text, tokens, score, familiarity, ...) as
                            attributes
binary_sensor  unfamiliar   on while the caption says ``out_of_distribution``: the
                            frame is unlike what the model was made for
                            (daemon/familiarity.py)
image          snapshot     the JPEG on ``{prefix}/{camera}/snapshot``
button         explain      publishes an explanation request for the latest frame
image          explanation  the PNG grid on ``{prefix}/{camera}/explain/image``
=============  ===========  ======================================================

All of them are available while ``{prefix}/availability`` says ``online``. The MQTT
client publishes :func:`discovery_messages` retained after connecting, again whenever
:func:`handles_birth` says Home Assistant came online, and :func:`removal_messages` to
take the entities away.
"""

from __future__ import annotations

import json
import re

ORIGIN_NAME = "explaincam"
MANUFACTURER = "explaincam"
STATE_MAX_CHARS = 255  # Home Assistant refuses longer states
EXPLAIN_REQUEST = {"id": "ha-button", "frame": "latest", "methods": ["gradcam", "saliency"], "words": "all"}


def _slug(text: str) -> str:
    """Letters, digits and underscores only: safe in discovery topics, ids and entity ids."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def _entities(prefix: str, camera: str) -> list[tuple[str, str, dict]]:
    """(component, key, component-specific fields) of every discovered entity."""
    base = f"{prefix}/{camera}"
    return [
        ("sensor", "caption", {
            "name": "Caption",
            "icon": "mdi:image-text",
            "state_topic": f"{base}/caption",
            "value_template": f"{{{{ value_json.caption[:{STATE_MAX_CHARS}] }}}}",
            "json_attributes_topic": f"{base}/caption",
        }),
        ("binary_sensor", "unfamiliar", {
            "name": "Unfamiliar scene",
            "device_class": "problem",
            "state_topic": f"{base}/caption",
            "value_template": "{{ 'ON' if value_json.out_of_distribution | default(false) else 'OFF' }}",
        }),
        ("image", "snapshot", {
            "name": "Snapshot",
            "image_topic": f"{base}/snapshot",
            "content_type": "image/jpeg",
        }),
        ("button", "explain", {
            "name": "Explain latest frame",
            "icon": "mdi:magnify-scan",
            "command_topic": f"{base}/explain/request",
            "payload_press": json.dumps(EXPLAIN_REQUEST, separators=(",", ":")),
            "qos": 1,
            "retain": False,
        }),
        ("image", "explanation", {
            "name": "Last explanation",
            "image_topic": f"{base}/explain/image",
            "content_type": "image/png",
        }),
    ]


def _config_topic(discovery_prefix: str, component: str, node: str, key: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{key}/config"


def discovery_messages(prefix: str, camera: str, discovery_prefix: str = "homeassistant", *,
                       model_name: str, version: str) -> list[tuple[str, dict]]:
    """(config topic, payload) of every entity; publish each payload as JSON, retained, QoS 1.

    ``prefix`` and ``camera`` are the MQTT contract's topic levels, ``model_name`` the
    bundle's model (shown as the device model) and ``version`` explaincam's version.
    """
    node = _slug(f"{prefix}_{camera}")
    device = {
        "identifiers": [node],
        "name": f"explaincam {camera}",
        "manufacturer": MANUFACTURER,
        "model": model_name,
        "sw_version": version,
    }
    origin = {"name": ORIGIN_NAME, "sw_version": version}
    messages = []
    for component, key, fields in _entities(prefix, camera):
        object_id = f"{node}_{key}"
        payload = {
            **fields,
            "unique_id": object_id,
            # Home Assistant 2025.10 and later read default_entity_id; older ones object_id
            # (each ignores the key it does not know).
            "default_entity_id": f"{component}.{object_id}",
            "object_id": object_id,
            "availability_topic": f"{prefix}/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": origin,
        }
        messages.append((_config_topic(discovery_prefix, component, node, key), payload))
    return messages


def removal_messages(prefix: str, camera: str, discovery_prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """(config topic, empty payload) of every entity; publish retained to remove the entities."""
    node = _slug(f"{prefix}_{camera}")
    return [(_config_topic(discovery_prefix, component, node, key), b"")
            for component, key, _ in _entities(prefix, camera)]


def handles_birth(topic: str, payload: bytes | str, discovery_prefix: str = "homeassistant") -> bool:
    """Whether a message is Home Assistant's birth (``{discovery_prefix}/status`` = ``online``),
    after which the discovery messages must be sent again."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    return topic == f"{discovery_prefix}/status" and payload.strip() == "online"
