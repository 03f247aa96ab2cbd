"""The MQTT contract: every topic explaincam uses and every payload it publishes or answers.

Topics come in two classes. **Per camera**, under ``{prefix}/{camera}/`` (:class:`CameraTopics`):
each daemon owns exactly these, so several daemons on one broker and prefix never write to
each other's topics. **Per prefix**, under ``{prefix}/`` (:class:`PrefixTopics`): shared
by every daemon of the prefix, so nothing there is retained or stateful (a retained value
there would be overwritten by whichever daemon spoke last).

==========================================  ===  ========  =========================================
topic                                       dir  retained  payload
==========================================  ===  ========  =========================================
``{prefix}/{camera}/availability``          out  yes       ``online`` / ``offline`` (the last will)
``{prefix}/{camera}/caption``               out  yes       :func:`caption_message`, every caption
``{prefix}/{camera}/caption/state``         out  yes       :func:`caption_state_message`, only when
                                                           the caption text changes
``{prefix}/{camera}/snapshot``              out  yes       JPEG with the caption drawn on it, at
                                                           most every ``mqtt.jpeg_interval_s``
``{prefix}/{camera}/source``                out  yes       :func:`source_message`, on a change
``{prefix}/{camera}/explain/request``       in   no        :func:`explain_request`
``{prefix}/{camera}/explain/response``      out  no        the response (``daemon.explain.requests``),
                                                           unless the request named a Response Topic
``{prefix}/{camera}/explain/image``         out  yes       PNG grid of the last explanation, or
                                                           :func:`placeholder_png` until there is one
``{prefix}/{camera}/explain/image/info``    out  yes       :func:`explanation_info` of that PNG
``{prefix}/stats``                          out  no        stats JSON (``daemon.stats``) with ``camera``
==========================================  ===  ========  =========================================

Home Assistant discovery (``daemon.discovery``) uses :func:`discovery_config_topic` and
:func:`home_assistant_status_topic`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_PREFIX = "explaincam"
ONLINE, OFFLINE = "online", "offline"
PLACEHOLDER_TEXT = "no explanation yet"


@dataclass(frozen=True)
class CameraTopics:
    """The topics one daemon owns: ``{prefix}/{camera}/...``."""

    prefix: str
    camera: str

    @classmethod
    def for_camera(cls, prefix: str, camera: str) -> "CameraTopics":
        """Topics of ``camera`` under ``prefix``."""
        return cls(prefix, camera)

    @property
    def base(self) -> str:
        """``{prefix}/{camera}``: the first levels of every topic of this camera."""
        return f"{self.prefix}/{self.camera}"

    @property
    def availability(self) -> str:
        """``online`` / ``offline``, retained; ``offline`` is the connection's last will."""
        return f"{self.base}/availability"

    @property
    def caption(self) -> str:
        """Every caption, retained (:func:`caption_message`)."""
        return f"{self.base}/caption"

    @property
    def caption_state(self) -> str:
        """The caption as a state, retained, published only when its text changes (:func:`caption_state_message`)."""
        return f"{self.base}/caption/state"

    @property
    def snapshot(self) -> str:
        """JPEG of a recent frame with its caption drawn on it, retained."""
        return f"{self.base}/snapshot"

    @property
    def source(self) -> str:
        """The camera source's state, retained, on a change (:func:`source_message`)."""
        return f"{self.base}/source"

    @property
    def explain_request(self) -> str:
        """Explanation requests to this daemon (:func:`explain_request`)."""
        return f"{self.base}/explain/request"

    @property
    def explain_response(self) -> str:
        """Answers to requests that named no MQTT 5 Response Topic."""
        return f"{self.base}/explain/response"

    def private_response(self, client_id: str) -> str:
        """A Response Topic private to one requesting client."""
        return f"{self.explain_response}/{client_id}"

    @property
    def explain_image(self) -> str:
        """PNG grid of the last explanation (or the placeholder), retained."""
        return f"{self.base}/explain/image"

    @property
    def explain_image_info(self) -> str:
        """What the retained explain image shows and when it was made (:func:`explanation_info`), retained."""
        return f"{self.explain_image}/info"


@dataclass(frozen=True)
class PrefixTopics:
    """Topics shared by every daemon under one prefix: never retained."""

    prefix: str

    @property
    def stats(self) -> str:
        """Each daemon's statistics every ``mqtt.stats_interval_s`` (the payload names its ``camera``)."""
        return f"{self.prefix}/stats"


# --- payloads ------------------------------------------------------------------------------

def iso_time(ts: float) -> str:
    """A Unix time as ISO 8601 in UTC to the second (``2024-03-20T18:02:11+00:00``)."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(microsecond=0).isoformat()


def parse_iso_time(text: str) -> float:
    """The Unix time of an :func:`iso_time` string; ValueError if it is not one."""
    return datetime.datetime.fromisoformat(text).timestamp()


def caption_message(frame_id: int, ts: float, caption: str, tokens: list[int], score: float, timings: dict,
                    model: str, ground_truth: str | None = None, familiarity: dict | None = None) -> dict:
    """The JSON published on ``caption`` for every captioned frame (volatile: ids, score, timings);
    ``familiarity``: the frame's ``familiarity`` and ``out_of_distribution`` (daemon.familiarity)."""
    message = {"frame_id": frame_id, "ts": round(ts, 3), "caption": caption, "tokens": tokens, "score": score,
               "timings": timings, "model": model, **(familiarity or {})}
    if ground_truth is not None:
        message["ground_truth"] = ground_truth
    return message


def caption_state_message(caption: str, since_ts: float, frame_id: int, model: str) -> dict:
    """The JSON published on ``caption/state`` when the caption text changes: nothing in it
    changes while the caption stays the same (``since``: when it first appeared, ``frame_id``:
    the frame where it did)."""
    return {"caption": caption, "since": iso_time(since_ts), "frame_id": frame_id, "model": model}


def source_message(state: dict, description: str) -> dict:
    """The JSON published on ``source``: the source state (state, message, since, failures) and what it is;
    ``since`` (Unix s in ``state``) as :func:`iso_time`, like every time in the contract (Home Assistant
    shows the attribute as a date, not as a ten-digit number)."""
    return {**state, "since": iso_time(state["since"]), "source": description}


def explain_request(request_id: str, frame: str | int = "latest", methods: list[str] | None = None,
                    words: str | list[int] = "all") -> dict:
    """An explanation request; ``methods`` None leaves the choice to the daemon's ``explain.default_methods``."""
    request = {"id": request_id, "frame": frame}
    if methods is not None:
        request["methods"] = list(methods)
    request["words"] = words
    return request


def explanation_info(response: dict, made_at: float) -> dict:
    """The JSON on ``explain/image/info`` for an explanation: when it was made, of which request and frame."""
    methods = sorted({key for word in response.get("words", []) for key, value in word.items()
                      if isinstance(value, dict)} | ({"ace"} if response.get("ace") else set()))
    return {"placeholder": False, "made_at": iso_time(made_at), "request_id": response.get("id"),
            "frame_id": response.get("frame_id"), "caption": response.get("caption"), "methods": methods}


def placeholder_info() -> dict:
    """The JSON on ``explain/image/info`` while the image is the placeholder."""
    return {"placeholder": True, "made_at": None, "note": PLACEHOLDER_TEXT}


def _safe_slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def placeholder_png(width: int = 448, height: int = 224) -> bytes:
    """A grey PNG that says "no explanation yet": the explain image before the first explanation."""
    image = np.full((height, width, 3), 48, np.uint8)
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.9, 2
    (text_w, text_h), _ = cv2.getTextSize(PLACEHOLDER_TEXT, font, scale, thickness)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.putText(image, PLACEHOLDER_TEXT, origin, font, scale, (220, 220, 220), thickness, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


# --- Home Assistant discovery topics ---------------------------------------------------------

def discovery_node(prefix: str, camera: str) -> str:
    """The discovery node id (and device identifier) of one camera: unique per prefix and camera."""
    return _safe_slug(f"{prefix}_{camera}")


def discovery_config_topic(discovery_prefix: str, component: str, node: str, key: str) -> str:
    """Where one entity's discovery config is published (retained)."""
    return f"{discovery_prefix}/{component}/{node}/{key}/config"


def home_assistant_status_topic(discovery_prefix: str) -> str:
    """Home Assistant's birth/last-will topic: ``online`` means discovery must be sent again."""
    return f"{discovery_prefix}/status"
