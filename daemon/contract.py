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
``{prefix}/{camera}/claim``                 i/o  no        :func:`claim_message`: which daemon publishes
                                                           as this camera (``daemon.twins``), repeated
``{prefix}/{camera}/explain/request``       in   no        :func:`explain_request`
``{prefix}/{camera}/explain/response``      out  no        the response (``daemon.explain.requests``),
                                                           unless the request named a Response Topic
``{prefix}/{camera}/explain/image``         out  yes       JPEG grid of the last explanation, or
                                                           :func:`placeholder_png` until there is one
``{prefix}/{camera}/explain/image/info``    out  yes       :func:`explanation_info` of that PNG
``{prefix}/{camera}/explain/job``           out  no        :class:`JobMessage` for a fleet's workers
                                                           (QoS 1; Response Topic = the result topic,
                                                           Correlation Data = the job id, Message
                                                           Expiry Interval = ``explain.remote.retry_s``)
``{prefix}/{camera}/explain/result``        in   no        a worker's :func:`encode_progress` notes,
                                                           then its :func:`encode_result` (QoS 1)
``{prefix}/{camera}/history/request``       in   no        a history query (``daemon.history.query``)
``{prefix}/{camera}/history/response``      out  no        its answer, unless the query named a
                                                           Response Topic
``{prefix}/{camera}/history/event``         out  no        :func:`history_event_message`, once per
                                                           stored event (Home Assistant's event entity)
``{prefix}/stats``                          out  no        stats JSON (``daemon.stats``) with ``camera``
``{prefix}/workers/{id}``                   wkr  yes       a fleet worker's announcement (below), with
                                                           a Message Expiry Interval
``{prefix}/workers/{id}/availability``      wkr  yes       ``online`` / ``offline`` (its last will)
==========================================  ===  ========  =========================================

A fleet (``daemon.fleet``): workers (``wkr``) subscribe to ``$share/{group}/{prefix}/+/explain/job``
(:meth:`PrefixTopics.explain_jobs`), so the broker hands each camera's job to one member of
the group, and answer on the job's Response Topic; the daemon hears every worker on
:attr:`PrefixTopics.workers`.

Job: ``{"format": 1, "job_id", "camera", "request_id", "frame_id", "caption", "tokens",
"words": [indices], "methods", "options": {"smoothgrad_samples", "ig_steps", "gradcam_layer"},
"bundle": {"name", "sha256"}, "attempt", "frame_png"}``: ``options`` are the camera's
explain settings that change the maps (so a worker's maps equal the camera's local ones),
``tokens`` are the published caption's word tokens, ``frame_png`` the cached frame (RGB at the
model's input size) as a lossless PNG in base64, ``bundle.sha256`` the sha256 of the bundle's
``manifest.json`` (which holds the sha256 of every other file).

Result: ``{"job_id", "attempt", "worker", "response": {explain response}, "grid_png": base64 PNG | null}``;
the response is the one the requester gets (``status`` ok, error or busy). Before it, on the
same topic, progress: ``{"job_id", "attempt", "worker", "progress": "queued" | "started",
"ahead": jobs before it}``, so the daemon knows which live worker holds the job.

Announcement: ``{"id", "state": "online", "group", "bundles": [{"name", "sha256"}], "backend",
"queue_depth", "queue_size", "jobs_done", "jobs_failed", "jobs_refused", "jobs_per_min",
"explain_ms": {"p50", "p95"}, "uptime_s"}``; ``{"id", "state": "offline"}`` when it stops.

Home Assistant discovery (``daemon.discovery``) uses :func:`discovery_config_topic` and
:func:`home_assistant_status_topic`.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass

import cv2
import numpy as np

from daemon.imaging import encode_png, from_base64, png_base64, png_from_base64, to_base64

ONLINE, OFFLINE = "online", "offline"
PLACEHOLDER_TEXT = "no explanation yet"


class Subtopic:
    """A topic of a topics class, read as an attribute: ``{base}/{suffix}`` of the instance, with its doc."""

    def __init__(self, suffix: str, doc: str):
        self.suffix = suffix
        self.__doc__ = doc

    def __get__(self, topics, owner=None):
        return self if topics is None else f"{topics.base}/{self.suffix}"


@dataclass(frozen=True)
class CameraTopics:
    """The topics one daemon owns: ``{prefix}/{camera}/...``."""

    prefix: str
    camera: str

    availability = Subtopic("availability", "``online`` / ``offline``, retained; ``offline`` is the connection's "
                                            "last will.")
    caption = Subtopic("caption", "Every caption, retained (:func:`caption_message`).")
    caption_state = Subtopic("caption/state", "The caption as a state, retained, published only when its text "
                                              "changes (:func:`caption_state_message`).")
    snapshot = Subtopic("snapshot", "JPEG of a recent frame with its caption drawn on it, retained.")
    source = Subtopic("source", "The camera source's state, retained, on a change (:func:`source_message`).")
    claim = Subtopic("claim", "Which daemon publishes as this camera (:func:`claim_message`), repeated; a daemon "
                              "that hears another's claim has a twin (``daemon.twins``).")
    explain_request = Subtopic("explain/request", "Explanation requests to this daemon (:func:`explain_request`).")
    explain_response = Subtopic("explain/response", "Answers to requests that named no MQTT 5 Response Topic.")
    explain_image = Subtopic("explain/image", "JPEG grid of the last explanation (or the placeholder), retained.")
    explain_image_info = Subtopic("explain/image/info", "What the retained explain image shows and when it was made "
                                                        "(:func:`explanation_info`), retained.")
    explain_job = Subtopic("explain/job", "This camera's explain jobs for a fleet's workers (:class:`JobMessage`).")
    explain_result = Subtopic("explain/result", "Where workers answer this camera's jobs: the jobs' MQTT 5 "
                                                "Response Topic.")

    history_request = Subtopic("history/request", "Queries of this camera's timeline (``daemon.history.query``).")
    history_response = Subtopic("history/response", "Answers to history queries that named no Response Topic.")
    history_event = Subtopic("history/event", "Each new stored event (:func:`history_event_message`).")

    @classmethod
    def for_camera(cls, prefix: str, camera: str) -> "CameraTopics":
        """Topics of ``camera`` under ``prefix``."""
        return cls(prefix, camera)

    @property
    def base(self) -> str:
        """``{prefix}/{camera}``: the first levels of every topic of this camera."""
        return f"{self.prefix}/{self.camera}"

    def private_response(self, client_id: str) -> str:
        """A Response Topic private to one requesting client."""
        return f"{self.explain_response}/{client_id}"

    def private_history_response(self, client_id: str) -> str:
        """A Response Topic for history answers private to one requesting client."""
        return f"{self.history_response}/{client_id}"


@dataclass(frozen=True)
class PrefixTopics:
    """Topics shared by every daemon under one prefix: no daemon retains anything there
    (a fleet worker retains its own ``workers/{id}`` topics)."""

    prefix: str

    stats = Subtopic("stats", "Each daemon's statistics every ``mqtt.stats_interval_s`` (the payload names its "
                              "``camera``).")
    workers = Subtopic("workers/#", "Filter of every worker's announcement and availability.")

    @property
    def base(self) -> str:
        """``{prefix}``: the first level of every shared topic."""
        return self.prefix

    def explain_jobs(self, group: str) -> str:
        """The MQTT 5 shared subscription of a worker group to every camera's explain jobs."""
        return f"$share/{group}/{self.prefix}/+/explain/job"

    def worker(self, worker_id: str) -> str:
        """A fleet worker's announcement, retained (it is the only writer of its own id)."""
        return f"{self.prefix}/workers/{worker_id}"

    def worker_availability(self, worker_id: str) -> str:
        """A fleet worker's ``online`` / ``offline`` (its last will), retained."""
        return f"{self.worker(worker_id)}/availability"


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


def claim_message(instance: str, host: str, pid: int, client_id: str, started: float, ts: float) -> dict:
    """The JSON on ``claim``: one daemon's run (``instance``: random per run), where it runs, when it
    started and when it said so (``ts``, Unix s: a claim much older than its repeat interval is stale)."""
    return {"instance": instance, "host": host, "pid": pid, "client_id": client_id, "started": round(started, 3),
            "ts": round(ts, 3)}


def explain_request(request_id: str, frame: str | int = "latest", methods: list[str] | None = None,
                    words: str | list[int] = "all", event: int | None = None) -> dict:
    """An explanation request; ``methods`` None leaves the choice to the daemon's ``explain.default_methods``;
    ``event``: a stored event of the timeline instead of a frame."""
    request = {"id": request_id, "event": event} if event is not None else {"id": request_id, "frame": frame}
    if methods is not None:
        request["methods"] = list(methods)
    request["words"] = words
    return request


HISTORY_EVENT_TYPES = ("caption", "unfamiliar")  # Home Assistant's event_types of the timeline's event entity


def history_event_message(event_id: int, caption: str, start: float, familiarity: float | None,
                          out_of_distribution: bool) -> dict:
    """The JSON on ``history/event`` for a new event: Home Assistant's event entity reads ``event_type``
    (``unfamiliar`` for an out-of-distribution frame, else ``caption``) and keeps the rest as attributes."""
    return {"event_type": HISTORY_EVENT_TYPES[1] if out_of_distribution else HISTORY_EVENT_TYPES[0],
            "event_id": event_id, "caption": caption, "start": iso_time(start), "familiarity": familiarity}


def history_query(request_id: str, text: str | None = None, since: float | None = None, until: float | None = None,
                  unfamiliar: bool = False, similar: int | None = None, limit: int = 20, offset: int = 0,
                  thumbnails: bool = True) -> dict:
    """A history query (``daemon.history.query`` reads it); None fields are left out."""
    query = {"id": request_id, "text": text, "since": since, "until": until, "similar": similar}
    query = {key: value for key, value in query.items() if value is not None}
    return {**query, "unfamiliar": unfamiliar, "limit": limit, "offset": offset, "thumbnails": thumbnails}


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
    return encode_png(image)


# --- a fleet's payloads (daemon.fleet) ---------------------------------------------------------

JOB_FORMAT = 1
QUEUED, STARTED = "queued", "started"


class MessageError(ValueError):
    """A fleet message that cannot be read; the text says why."""


@dataclass
class JobMessage:
    """One explain job as it travels to a worker."""

    job_id: str
    camera: str
    request_id: str | int | None
    frame_id: int
    caption: str
    tokens: list[int]
    indices: list[int]
    methods: list[str]
    bundle_name: str
    bundle_sha256: str
    image: np.ndarray  # RGB uint8 at the model's input size
    options: dict  # smoothgrad_samples, ig_steps, gradcam_layer (None = the bundle's)
    attempt: int = 1

    def encode(self) -> bytes:
        """The job's JSON payload (the frame as a base64 PNG)."""
        return json.dumps({
            "format": JOB_FORMAT, "job_id": self.job_id, "camera": self.camera, "request_id": self.request_id,
            "frame_id": self.frame_id, "caption": self.caption, "tokens": self.tokens, "words": self.indices,
            "methods": self.methods, "options": self.options, "bundle": {"name": self.bundle_name, "sha256": self.bundle_sha256},
            "attempt": self.attempt, "frame_png": png_base64(self.image),
        }).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "JobMessage":
        """Read a job payload; MessageError naming what is wrong."""
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise MessageError(f"the job is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MessageError("the job must be a JSON object")
        if data.get("format") != JOB_FORMAT:
            raise MessageError(f"job format {data.get('format')!r} is not supported (expected {JOB_FORMAT})")
        try:
            bundle = data["bundle"]
            image = png_from_base64(data["frame_png"])
            job = cls(job_id=str(data["job_id"]), camera=str(data["camera"]), request_id=data.get("request_id"),
                      frame_id=int(data["frame_id"]), caption=str(data["caption"]),
                      tokens=[int(t) for t in data["tokens"]], indices=[int(i) for i in data["words"]],
                      methods=[str(m) for m in data["methods"]], options=_job_options(data["options"]),
                      bundle_name=str(bundle["name"]),
                      bundle_sha256=str(bundle["sha256"]), image=image, attempt=int(data.get("attempt", 1)))
        except KeyError as exc:
            raise MessageError(f"the job lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise MessageError(f"the job has a malformed field: {exc}") from None
        if image.ndim != 3 or image.shape[2] != 3:
            raise MessageError(f"the job's frame is not an RGB image (shape {image.shape})")
        return job


def _job_options(data) -> dict:
    """A job's explain options, checked."""
    layer = data["gradcam_layer"]
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"options.gradcam_layer must be a layer name or null, not {layer!r}")
    samples, steps = int(data["smoothgrad_samples"]), int(data["ig_steps"])
    if not (1 <= samples <= 256 and 2 <= steps <= 512):
        raise ValueError(f"options out of range: smoothgrad_samples {samples}, ig_steps {steps}")
    return {"smoothgrad_samples": samples, "ig_steps": steps, "gradcam_layer": layer}


def job_id_of(payload: bytes) -> str | None:
    """The job id of a job payload that may be malformed (None when there is none)."""
    try:
        data = json.loads(payload)
        return str(data["job_id"]) if isinstance(data, dict) and "job_id" in data else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def encode_result(job_id: str, attempt: int, worker: str, response: dict, grid_png: bytes | None) -> bytes:
    """A worker's result payload."""
    grid = to_base64(grid_png) if grid_png is not None else None
    return json.dumps({"job_id": job_id, "attempt": attempt, "worker": worker, "response": response,
                       "grid_png": grid}).encode()


def encode_progress(job_id: str, attempt: int, worker: str, progress: str, ahead: int = 0) -> bytes:
    """A worker's progress payload: it has queued (``ahead`` jobs before it) or started a job."""
    return json.dumps({"job_id": job_id, "attempt": attempt, "worker": worker, "progress": progress,
                       "ahead": ahead}).encode()


@dataclass
class ProgressMessage:
    """A worker holds a job: queued behind ``ahead`` others, or started."""

    job_id: str
    attempt: int
    worker: str
    progress: str
    ahead: int


@dataclass
class ResultMessage:
    """A worker's answer to one job."""

    job_id: str
    attempt: int
    worker: str
    response: dict
    grid_png: bytes | None

    @classmethod
    def decode(cls, payload: bytes) -> "ResultMessage":
        """Read a result payload; MessageError naming what is wrong."""
        try:
            data = json.loads(payload)
            grid = data.get("grid_png")
            result = cls(str(data["job_id"]), int(data.get("attempt", 1)), str(data.get("worker")), data["response"],
                         from_base64(grid) if grid is not None else None)
        except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
            raise MessageError(f"unreadable result: {type(exc).__name__}: {exc}") from None
        if not isinstance(result.response, dict) or "status" not in result.response:
            raise MessageError("the result's response is not an explain response")
        return result


def read_answer(payload: bytes) -> ResultMessage | ProgressMessage:
    """A worker's message on a result topic: a result or a progress note; MessageError if neither."""
    try:
        data = json.loads(payload)
        if isinstance(data, dict) and data.get("progress") in (QUEUED, STARTED):
            return ProgressMessage(str(data["job_id"]), int(data["attempt"]), str(data["worker"]),
                                   data["progress"], int(data.get("ahead", 0)))
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as exc:
        raise MessageError(f"unreadable progress: {type(exc).__name__}: {exc}") from None
    return ResultMessage.decode(payload)


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
