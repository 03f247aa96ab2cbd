"""History queries: the request a user sends, checked; the search it runs; the answer it gets.

Request (JSON on ``{prefix}/{camera}/history/request``, see daemon.contract)::

    {"id": "...", "text": "red circle" | "\\"red circle\\" cross", "since": 1765000000 | "2026-12-07T06:00:00+00:00",
     "until": ..., "unfamiliar": false, "similar": <event id>, "limit": 20, "offset": 0, "thumbnails": true}

``text`` holds words and double-quoted phrases, matched as words (every one must occur);
FTS5 operators (``AND``, ``NEAR``, ``*``, parentheses...) are plain words here or refused,
never interpreted: each word and phrase reaches FTS5 as a quoted string, and the query as
an SQL parameter. ``similar`` ranks events by the cosine of their encoder features to that
event's (numpy over the stored vectors; no SQLite extension). Events come newest first
(most similar first with ``similar``); ``next_offset`` is set when more match.

Where the broker caps the packet size (``daemon.packet_limits``), an answer too large is sent
without its thumbnails, then with fewer events (``next_offset`` pointing at the first left
out), saying so in ``omitted`` (:func:`fitted_answer`).
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.contract import iso_time, parse_iso_time
from daemon.history.events import unpack_features
from daemon.history.store import EVENT_COLUMNS
from daemon.imaging import to_base64

MAX_TEXT_CHARS = 200
MAX_OFFSET = 100_000
TEXT_ALLOWED = re.compile(r"^[\w\s\"'\-]*$")  # words, spaces, quotes, apostrophes, hyphens


class QueryError(Exception):
    """A request that cannot be answered: ``code`` and a message for the user."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class HistoryRequest(BaseModel):
    """One history query, as sent (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    id: str | int | None = None
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    since: float | str | None = None
    until: float | str | None = None
    unfamiliar: bool = False
    similar: int | None = Field(None, ge=0)
    limit: int = Field(20, ge=1)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    thumbnails: bool = True

    @field_validator("since", "until")
    @classmethod
    def _time(cls, value):
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = parse_iso_time(value)
            except ValueError:
                raise ValueError("a time is Unix seconds or ISO 8601 (2026-12-07T06:00:00+00:00)") from None
        if not np.isfinite(value) or value < 0:
            raise ValueError("a time must be a non-negative number of Unix seconds")
        return float(value)


def parse_request(payload: bytes, max_limit: int, max_bytes: int = 4096) -> HistoryRequest:
    """The checked request; QueryError (``bad_request``) saying what is wrong."""
    if len(payload) > max_bytes:
        raise QueryError("bad_request", f"the request is larger than {max_bytes} bytes")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise QueryError("bad_json", "the request is not valid JSON") from None
    if not isinstance(data, dict):
        raise QueryError("bad_request", "the request must be a JSON object")
    try:
        request = HistoryRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise QueryError("bad_request", f"{where}: {first['msg']}") from None
    if request.limit > max_limit:
        raise QueryError("bad_request", f"limit: at most {max_limit} events per query (ask for the next page "
                                        f"with offset)")
    if request.since is not None and request.until is not None and request.since > request.until:
        raise QueryError("bad_request", "since is after until")
    if request.text is not None:
        fts_query(request.text)  # refuses bad text before anything runs
    return request


def request_id_of(payload: bytes) -> Any:
    """The ``id`` of a request that may be malformed (None when there is none)."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    request_id = data.get("id") if isinstance(data, dict) else None
    return request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else None


def fts_query(text: str) -> str | None:
    """The FTS5 query for a user's words and "phrases": each one a quoted FTS5 string, all required;
    None when the text holds no word. QueryError for characters other than words, spaces, quotes,
    apostrophes and hyphens, or an unpaired double quote."""
    if not TEXT_ALLOWED.match(text):
        raise QueryError("bad_text", "text may hold words and \"quoted phrases\" only (no operators, "
                                     "brackets or punctuation)")
    if text.count('"') % 2:
        raise QueryError("bad_text", "text has an unpaired double quote")
    parts = []
    for phrase, word in re.findall(r'"([^"]*)"|([^\s"]+)', text):
        words = re.findall(r"\w+", phrase if phrase else word)
        if words:
            parts.append('"' + " ".join(words) + '"')
    return " ".join(parts) or None


class SimilarityIndex:
    """The stored feature vectors, L2-normalised, in memory for cosine ranking; brought in step with
    the store before each use at little cost: nothing is read unless another connection committed
    (``PRAGMA data_version``), then only events newer than the newest held, and pruning (which takes
    the oldest) drops the ids below the store's oldest. A recreated store gets a new index."""

    def __init__(self):
        self.ids = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, 0), np.float32)
        self._data_version: int | None = None

    def refresh(self, con: sqlite3.Connection) -> None:
        """Bring the index in step with the store."""
        version = con.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version and len(self.ids):
            return
        self._data_version = version
        low = con.execute("SELECT min(id) FROM events").fetchone()[0]
        if low is None:
            self.__init__()
            return
        first_kept = np.searchsorted(self.ids, low)
        if first_kept:
            self.ids, self.vectors = self.ids[first_kept:], self.vectors[first_kept:]
        last = int(self.ids[-1]) if len(self.ids) else -1
        rows = con.execute("SELECT id, features FROM events WHERE id > ? AND features IS NOT NULL ORDER BY id",
                           (last,)).fetchall()
        if not rows:
            return
        new = np.stack([unpack_features(r[1]) for r in rows])
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        self.ids = np.concatenate([self.ids, ids])
        self.vectors = new if not len(self.vectors) else np.concatenate([self.vectors, new])

    def rank(self, event_id: int, allowed: np.ndarray | None, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosines) of the ``count`` events most like ``event_id``, best first, itself left out;
        ``allowed``: only these ids. QueryError if the event is not stored (or has no features)."""
        where = np.searchsorted(self.ids, event_id)
        if where >= len(self.ids) or self.ids[where] != event_id:
            raise QueryError("no_such_event", f"event {event_id} is not stored (or has no features)")
        scores = self.vectors @ self.vectors[where]
        scores[where] = -np.inf
        if allowed is not None:
            scores[~np.isin(self.ids, allowed)] = -np.inf
        count = min(count, len(scores))
        best = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]
        return self.ids[best], scores[best]


def _filters(request: HistoryRequest) -> tuple[list[str], list]:
    """The SQL conditions on ``events`` other than the text (placeholders only) and their values."""
    where, values = [], []
    if request.since is not None:
        where.append('"end" >= ?')
        values.append(request.since)
    if request.until is not None:
        where.append("start <= ?")
        values.append(request.until)
    if request.unfamiliar:
        where.append("ood = 1")
    return where, values


def search(con: sqlite3.Connection, index: SimilarityIndex, request: HistoryRequest) -> tuple[list[dict], int | None]:
    """The events answering ``request`` (one page) and the offset of the next page (None: no more).

    With text, FTS5 drives the query newest first (its rowids are the event ids, which grow with
    time), so a common word costs a page of rows, not every match."""
    where, values = _filters(request)
    text = fts_query(request.text) if request.text else None
    if text is not None:
        source = "events_fts JOIN events ON events.id = events_fts.rowid"
        where, values = ["events_fts MATCH ?", *where], [text, *values]
        order = "events_fts.rowid DESC"
    else:
        source, order = "events", "events.id DESC"
    condition = " AND ".join(where) or "1"
    want = request.limit + 1
    similarity: dict[int, float] = {}
    if request.similar is not None:
        index.refresh(con)
        allowed = None
        if where:
            allowed = np.fromiter((r[0] for r in con.execute(f"SELECT events.id FROM {source} WHERE {condition}",
                                                             values)), np.int64)
        ids, scores = index.rank(request.similar, allowed, request.offset + want)
        page = ids[request.offset:request.offset + want]
        similarity = {int(i): float(s) for i, s in zip(page, scores[request.offset:request.offset + want])}
        rows = {r["id"]: r for r in con.execute(
            f"SELECT {EVENT_COLUMNS}, events.thumbnail AS thumbnail FROM events WHERE events.id IN ({','.join('?' * len(page))})",
            [int(i) for i in page])}
        rows = [rows[int(i)] for i in page if int(i) in rows]
    else:
        rows = con.execute(f"SELECT {EVENT_COLUMNS}, events.thumbnail AS thumbnail FROM {source} WHERE {condition} "
                           f"ORDER BY {order} LIMIT ? OFFSET ?", [*values, want, request.offset]).fetchall()
    more = len(rows) > request.limit
    events = [event_json(r, request.thumbnails, similarity.get(r["id"])) for r in rows[:request.limit]]
    return events, (request.offset + request.limit if more else None)


def event_json(row: sqlite3.Row, thumbnail: bool = True, similarity: float | None = None) -> dict:
    """An event as it appears in answers (times as Unix s and ISO 8601; the thumbnail as base64 JPEG)."""
    event = {"event_id": row["id"], "start": round(row["start"], 3), "end": round(row["end"], 3),
             "start_iso": iso_time(row["start"]), "end_iso": iso_time(row["end"]), "caption": row["caption"],
             "tokens": json.loads(row["tokens"]), "score": row["score"], "familiarity": row["familiarity"],
             "out_of_distribution": bool(row["ood"]), "frames": row["frames"],
             "first_frame_id": row["first_frame_id"], "model": row["model"],
             "explainable": bool(row["has_frame"]),
             "explained": row["explained"].split(",") if row["explained"] else []}
    if similarity is not None:
        event["similarity"] = round(similarity, 4)
    if thumbnail and "thumbnail" in row.keys() and row["thumbnail"] is not None:
        event["thumbnail_jpeg"] = to_base64(row["thumbnail"])
    return event


def answer(request_id, camera: str, events: list[dict], offset: int, next_offset: int | None) -> dict:
    """The ``ok`` answer: a page of events starting at ``offset``."""
    return {"id": request_id, "status": "ok", "camera": camera, "events": events, "offset": offset,
            "next_offset": next_offset}


def fitted_answer(payload: dict, room: int) -> bytes | None:
    """An answer as at most ``room`` bytes of JSON (a broker's packet limit): an ok answer without its
    thumbnails, else with only as many events as fit (``next_offset`` at the first one left out),
    saying so in ``omitted``; else the error ``response_too_large``; None when not even that fits."""
    full = len(json.dumps(payload))
    if payload.get("status") == "ok":
        reason = f"the full answer ({full} bytes) is larger than the broker accepts ({room} bytes)"
        events = [{k: v for k, v in event.items() if k != "thumbnail_jpeg"} for event in payload["events"]]
        slim = {**payload, "events": events, "omitted": {"thumbnails": True, "reason": reason}}
        text = json.dumps(slim).encode()
        if len(text) <= room:
            return text
        kept = len(events)
        while kept > 0 and len(text) > room:
            kept = min(kept - 1, kept * room // len(text))
            page = {**slim, "events": events[:kept], "next_offset": payload["offset"] + kept,
                    "omitted": {"thumbnails": True, "events": len(events) - kept, "reason": reason}}
            text = json.dumps(page).encode()
        if kept > 0:
            return text
    error = error_answer(payload.get("id"), payload.get("camera"), "response_too_large",
                         f"the answer ({full} bytes) is larger than the broker accepts ({room} bytes); "
                         "ask for fewer events or without thumbnails")
    text = json.dumps(error).encode()
    return text if len(text) <= room else None


def error_answer(request_id, camera: str, code: str, message: str) -> dict:
    """An ``error`` answer."""
    return {"id": request_id, "status": "error", "camera": camera, "error": {"code": code, "message": message}}
