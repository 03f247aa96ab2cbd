"""What Home Assistant's MQTT sensor and image entities make of a stream of messages, and
so what its recorder stores: the state machine writes a new state (a recorder row) only
when the state or the attributes differ from the last ones (``force_update`` is off),
except that, as Home Assistant's MQTT documentation says, a message on
``json_attributes_topic`` "implies force_update": it is counted as a write even when
nothing changed (the stricter reading: a topic that repeats itself costs rows).

Templates are evaluated with Jinja2, as Home Assistant does, with the variables its MQTT
integration gives them (``value``, ``value_json``). Home Assistant itself (2024.3.3) is not
installed in the test venv: it would downgrade PyYAML, requests and urllib3 there.
"""

from __future__ import annotations

import json

import jinja2

# Attributes Home Assistant's MQTT integration drops from json_attributes (MQTT_ATTRIBUTES_BLOCKED).
ATTRIBUTES_BLOCKED = {"assumed_state", "available", "context_recent_time", "device_class", "device_info",
                      "entity_category", "entity_picture", "entity_registry_enabled_default", "extra_state_attributes",
                      "force_update", "icon", "name", "should_poll", "state", "supported_features", "unique_id",
                      "unit_of_measurement"}

_ENV = jinja2.Environment()


def render(template: str | None, payload: bytes) -> str:
    """A discovery template applied to a payload (the payload itself when there is no template)."""
    text = payload.decode("utf-8", "replace")
    if template is None:
        return text
    try:
        value_json = json.loads(text)
    except ValueError:
        value_json = None
    return _ENV.from_string(template).render(value=text, value_json=value_json)


class SensorEntity:
    """An MQTT sensor built from a discovery payload; ``feed`` messages, read ``writes``."""

    def __init__(self, config: dict):
        self.config = config
        self.state: str | None = None
        self.attributes: dict = {}
        self.writes: list[tuple[str | None, dict]] = []  # each one a recorder row

    def feed(self, topic: str, payload: bytes) -> None:
        """Handle one message as Home Assistant does (every subscription, then one state write)."""
        state, attributes, forced = self.state, self.attributes, False
        if topic == self.config.get("state_topic"):
            state = render(self.config.get("value_template"), payload)
        if topic == self.config.get("json_attributes_topic"):
            loaded = json.loads(render(self.config.get("json_attributes_template"), payload))
            if isinstance(loaded, dict):
                attributes = {k: v for k, v in loaded.items() if k not in ATTRIBUTES_BLOCKED}
                forced = True
        if forced or (state, attributes) != (self.state, self.attributes):
            self.state, self.attributes = state, attributes
            self.writes.append((state, attributes))


class ImageEntity:
    """An MQTT image: every message on ``image_topic`` is a new state (its time of receipt)."""

    def __init__(self, config: dict):
        self.config = config
        self.writes = 0
        self.attributes: dict = {}

    def feed(self, topic: str, payload: bytes) -> None:
        """Handle one message as Home Assistant does."""
        if topic == self.config.get("image_topic"):
            self.writes += 1
        if topic == self.config.get("json_attributes_topic"):  # implies force_update (see above)
            self.attributes = json.loads(render(self.config.get("json_attributes_template"), payload))
            self.writes += 1
