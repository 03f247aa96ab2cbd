"""The fleet's MQTT topics and payloads: jobs, results and worker announcements (no TensorFlow).

=========================================  ==============  ========================================
topic                                      direction        payload
=========================================  ==============  ========================================
``{prefix}/{camera}/explain/job``          daemon → worker  JSON job (below), QoS 1, not retained;
                                                            MQTT 5 Response Topic = the result topic,
                                                            Correlation Data = the job id, Message
                                                            Expiry Interval = the daemon's retry time
``{prefix}/{camera}/explain/result``       worker → daemon  JSON result (below), QoS 1
``{prefix}/workers/{id}``                  worker           JSON announcement, retained, QoS 1, with a
                                                            Message Expiry Interval (so a stale one goes)
``{prefix}/workers/{id}/availability``     worker           ``online`` / ``offline`` (last will), retained
=========================================  ==============  ========================================

Workers subscribe to ``$share/{group}/{prefix}/+/explain/job``: each job goes to one
member of the group.

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

Announcement: ``{"id", "state": "online", "bundles": [{"name", "sha256"}], "backend",
"queue_depth", "queue_size", "jobs_done", "jobs_failed", "jobs_refused", "jobs_per_min",
"explain_ms": {"p50", "p95"}, "uptime_s"}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

from daemon.explain.heatmap import decode_png, encode_png

JOB_FORMAT = 1
ONLINE, OFFLINE = "online", "offline"


def job_topic(prefix: str, camera: str) -> str:
    """Where a camera's daemon publishes its explain jobs."""
    return f"{prefix}/{camera}/explain/job"


def result_topic(prefix: str, camera: str) -> str:
    """Where workers answer a camera's jobs (the jobs' MQTT 5 Response Topic)."""
    return f"{prefix}/{camera}/explain/result"


def job_subscription(group: str, prefix: str) -> str:
    """The shared subscription of a worker group to every camera's jobs."""
    return f"$share/{group}/{prefix}/+/explain/job"


def worker_topic(prefix: str, worker_id: str) -> str:
    """A worker's retained announcement."""
    return f"{prefix}/workers/{worker_id}"


def worker_availability_topic(prefix: str, worker_id: str) -> str:
    """A worker's ``online`` / ``offline`` (its last will)."""
    return f"{prefix}/workers/{worker_id}/availability"


def workers_subscription(prefix: str) -> str:
    """Every worker's announcement and availability."""
    return f"{prefix}/workers/#"


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
            "attempt": self.attempt, "frame_png": base64.b64encode(encode_png(self.image)).decode("ascii"),
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
            image = decode_png(base64.b64decode(data["frame_png"], validate=True))
            job = cls(job_id=str(data["job_id"]), camera=str(data["camera"]), request_id=data.get("request_id"),
                      frame_id=int(data["frame_id"]), caption=str(data["caption"]),
                      tokens=[int(t) for t in data["tokens"]], indices=[int(i) for i in data["words"]],
                      methods=[str(m) for m in data["methods"]], options=_options(data["options"]),
                      bundle_name=str(bundle["name"]),
                      bundle_sha256=str(bundle["sha256"]), image=image, attempt=int(data.get("attempt", 1)))
        except KeyError as exc:
            raise MessageError(f"the job lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise MessageError(f"the job has a malformed field: {exc}") from None
        if image.ndim != 3 or image.shape[2] != 3:
            raise MessageError(f"the job's frame is not an RGB image (shape {image.shape})")
        return job


def _options(data) -> dict:
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
    grid = base64.b64encode(grid_png).decode("ascii") if grid_png is not None else None
    return json.dumps({"job_id": job_id, "attempt": attempt, "worker": worker, "response": response,
                       "grid_png": grid}).encode()


QUEUED, STARTED = "queued", "started"


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


def read_answer(payload: bytes) -> "ResultMessage | ProgressMessage":
    """A worker's message on a result topic: a result or a progress note; MessageError if neither."""
    try:
        data = json.loads(payload)
        if isinstance(data, dict) and data.get("progress") in (QUEUED, STARTED):
            return ProgressMessage(str(data["job_id"]), int(data["attempt"]), str(data["worker"]),
                                   data["progress"], int(data.get("ahead", 0)))
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as exc:
        raise MessageError(f"unreadable progress: {type(exc).__name__}: {exc}") from None
    return ResultMessage.decode(payload)


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
                         base64.b64decode(grid, validate=True) if grid is not None else None)
        except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
            raise MessageError(f"unreadable result: {type(exc).__name__}: {exc}") from None
        if not isinstance(result.response, dict) or "status" not in result.response:
            raise MessageError("the result's response is not an explain response")
        return result
