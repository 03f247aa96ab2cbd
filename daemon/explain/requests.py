"""The explain request/response contract (DESIGN.md, MQTT contract); no TensorFlow.

Request: ``{"id": "...", "frame": "latest" | <frame_id>, "methods": [...], "words": "all" | [indices]}``,
or with ``"event": <event_id>`` instead of a frame: a stored event of the timeline (daemon.history),
explained from its lossless key frame; the response then names ``event_id`` too.
Response: ``{"id", "status": "ok" | "error" | "busy", "frame_id", "caption", "float_caption",
"words": [{"index", "word", "<method>": {"heatmap": base64 PNG, "peak": [x, y] | null, ...}}],
"<method>": {...} for a method that answers a block of its own (ace),
"timings_ms": {...}, "error": {"code", "message"} | null}``. A peak is null when the map is all zero.

Every answer carries the request's ``id`` whenever it can be recovered from the payload,
even from one that is not valid JSON or too large.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from daemon.explain import heatmap, picture
from daemon.explain_settings import METHODS
from daemon.imaging import encode_png, from_base64

ERROR_CODES = ("too_large", "bad_json", "bad_request", "unknown_method", "bad_word_index",
               "frame_not_cached", "no_such_event", "event_not_explainable", "busy", "internal", "shutting_down",
               "bundle_changed", "response_too_large",
               "timeout", "no_worker", "unknown_bundle", "bad_job")  # the last four: a fleet (daemon/fleet/)
MAX_ID_LENGTH = 128
_ID_PATTERN = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.){1,%d})"' % MAX_ID_LENGTH)


class ExplainRequest(BaseModel):
    """One explain request; unknown fields and wrong types are refused."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr = Field(min_length=1, max_length=MAX_ID_LENGTH,
                          description="caller's request id, echoed in the response")
    frame: Union[Literal["latest"], StrictInt] = Field(
        "latest", description="frame_id of a cached frame, or 'latest'")
    event: StrictInt | None = Field(None, ge=0, description="event_id of a stored event, instead of a frame")
    methods: list[StrictStr] | None = Field(
        None, min_length=1, description="explanation methods (default: the configured ones)")
    words: Union[Literal["all"], list[StrictInt]] = Field(
        "all", description="caption word indices (0-based) to explain, or 'all'")


@dataclass
class ErrorResponse:
    """A request that is answered at once without an explanation (error or busy)."""

    id: str | int | None
    code: str
    message: str
    frame_id: int | None = None
    caption: str | None = None

    def payload(self) -> dict:
        """The response JSON object."""
        return response(self.id, "busy" if self.code == "busy" else "error", frame_id=self.frame_id,
                        caption=self.caption, error={"code": self.code, "message": self.message})


def response(request_id, status: str, *, frame_id=None, caption=None, float_caption=None,
             words=None, timings_ms=None, error=None) -> dict:
    """A response object with every key of the contract present (null where unknown)."""
    return {"id": request_id, "status": status, "frame_id": frame_id, "caption": caption,
            "float_caption": float_caption, "words": words or [], "timings_ms": timings_ms or {},
            "error": error}


def recover_id(payload: bytes, parsed=None):
    """The request id, from the parsed object if it has a usable one, else from the raw bytes."""
    if isinstance(parsed, dict):
        value = parsed.get("id")
        if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return None
    match = _ID_PATTERN.search(payload[:64 * 1024])
    if not match:
        return None
    try:
        return json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return None


def _describe(exc: ValidationError) -> str:
    """One line naming each invalid field and what was wrong with it."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "request"
        if err["type"] == "extra_forbidden":
            parts.append(f"unexpected field {where!r}")
        elif err["type"] == "missing":
            parts.append(f"missing field {where!r}")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(dict.fromkeys(parts))


def validate_request(payload: bytes | str, max_bytes: int,
                     default_methods: list[str] | None = None) -> ExplainRequest | ErrorResponse:
    """Parse and check a request payload; methods default to ``default_methods``.

    Returns the request, or an ErrorResponse with code too_large, bad_json, bad_request or
    unknown_method. Frame and word checks need the frame cache: see ``check_words``.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    if len(payload) > max_bytes:
        return ErrorResponse(recover_id(payload), "too_large",
                             f"request is {len(payload)} bytes; at most {max_bytes} are accepted")
    try:
        parsed = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return ErrorResponse(recover_id(payload), "bad_json", f"request is not valid UTF-8 JSON: {exc}")
    except RecursionError:  # the parser's nesting limit, not a fault of the daemon
        return ErrorResponse(recover_id(payload), "bad_json", "request nests arrays or objects too deeply to be read")
    if not isinstance(parsed, dict):
        return ErrorResponse(None, "bad_request",
                             f"request must be a JSON object, not {type(parsed).__name__}")
    request_id = recover_id(payload, parsed)
    try:
        request = ExplainRequest.model_validate(parsed)
    except ValidationError as exc:
        return ErrorResponse(request_id, "bad_request", _describe(exc))
    if request.event is not None and request.frame != "latest":
        return ErrorResponse(request.id, "bad_request", "name a frame or an event, not both")
    if request.methods is None:
        request = request.model_copy(update={"methods": list(default_methods or [])})
    for name in request.methods:
        if name not in METHODS:
            return ErrorResponse(request.id, "unknown_method", f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if len(set(request.methods)) != len(request.methods):
        return ErrorResponse(request.id, "bad_request", "methods lists a method twice")
    return request


def check_words(request: ExplainRequest, caption_words: list[str], frame_id: int | None = None,
                caption: str | None = None) -> list[int] | ErrorResponse:
    """The word indices to explain, checked against the cached frame's published caption."""
    n = len(caption_words)
    if request.words == "all":
        return list(range(n))
    bad = [i for i in request.words if not 0 <= i < n]
    if bad:
        valid = f"indices 0..{n - 1}" if n else "no word can be explained"
        return ErrorResponse(request.id, "bad_word_index",
                             f"word index {bad[0]} is out of range: the caption {caption!r} has {n} words "
                             f"({valid})", frame_id, caption)
    if len(set(request.words)) != len(request.words):
        return ErrorResponse(request.id, "bad_request", "words lists an index twice", frame_id, caption)
    return list(request.words)


def parse_words(text: str) -> str | list[int]:
    """``all`` or a comma-separated list of word indices, as the command-line tools take them."""
    if text.strip() == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"words must be 'all' or indices like 0,2 (got {text!r})") from None


def fitted_response(payload: dict, room: int, image_topic: str) -> bytes | None:
    """An ok response as at most ``room`` bytes of JSON (a broker's packet limit): without the inline
    heatmaps (and method blocks such as ACE's), saying so and where the picture is; else the error
    ``response_too_large``; None when not even that fits."""
    full = len(json.dumps(payload))
    slim = {key: value for key, value in payload.items() if not (isinstance(value, dict) and key in METHODS)}
    slim["words"] = [{key: ({k: v for k, v in value.items() if k != "heatmap"} if isinstance(value, dict) else value)
                      for key, value in word.items()} for word in payload.get("words", [])]
    slim["omitted"] = {"heatmaps": True, "reason": f"the full answer ({full} bytes) is larger than the broker "
                                                   f"accepts ({room} bytes)",
                       "picture": f"the explanation picture is on {image_topic}; the full answer is the "
                                  "snapshot folder's explanation.json"}
    for candidate in (slim, ErrorResponse(payload.get("id"), "response_too_large",
                                          f"the answer ({full} bytes) is larger than the broker accepts ({room} "
                                          f"bytes), even without its heatmaps; the explanation picture is on "
                                          f"{image_topic}", payload.get("frame_id"), payload.get("caption")).payload()):
        text = json.dumps(candidate).encode()
        if len(text) <= room:
            return text
    return None


def summary_lines(payload: dict) -> list[str]:
    """A human summary of an ok response: captions, then each word's peak per method, timings."""
    frame = f"frame {payload['frame_id']}: " if payload.get("frame_id") is not None else ""
    lines = [f"{frame}caption {payload.get('caption')!r}",
             f"float model's caption {payload.get('float_caption')!r}"]
    for record in payload.get("words", []):
        peaks = ", ".join(f"{k} peak {tuple(v['peak']) if v['peak'] else None}" for k, v in record.items()
                          if isinstance(v, dict) and "peak" in v)
        lines.append(f"  #{record['index']} {record['word']}: {peaks}")
    for method, why in (payload.get("unavailable") or {}).items():
        lines.append(f"not run: {method}: {why}")
    timings = payload.get("timings_ms") or {}
    if timings:
        lines.append("timings (ms): " + ", ".join(f"{k[:-3] if k.endswith('_ms') else k} {v}"
                                                  for k, v in timings.items()))
    return lines


def save_explanation(out: str | Path, payload: dict, grid_png: bytes | None) -> list[Path]:
    """Write response.json, one grey PNG per word and method, and grid.png into ``out``.

    Without ``grid_png`` the grid is drawn from the heatmaps alone. Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "response.json"]
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    rows = []
    for record in payload.get("words", []):
        panels = []
        for method, value in record.items():
            if not (isinstance(value, dict) and "heatmap" in value):
                continue
            path = out / f"{record['index']:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', record['word'])}_{method}.png"
            path.write_bytes(from_base64(value["heatmap"]))
            written.append(path)
            peak = tuple(value["peak"]) if value.get("peak") else None
            panels.append((method, heatmap.heatmap_from_base64(value["heatmap"]), peak))
        rows.append((f"#{record['index']} {record['word']}", panels))
    if grid_png is None:
        grid_png = encode_png(picture.grid(None, rows))
    (out / "grid.png").write_bytes(grid_png)
    written.append(out / "grid.png")
    return written
