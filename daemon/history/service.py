"""The timeline in the capture process: events from the caption loop into the store, queries over MQTT.

:meth:`HistoryService.observe` runs on the caption loop's thread and only compares captions
and queues writes (the writer thread encodes and writes). Each stored event is announced on
``{prefix}/{camera}/history/event`` (Home Assistant's event entity) and handed to the
``on_new_event`` callbacks (background explanations). Queries arrive on
``history/request`` (MQTT network thread), wait in a small queue and are answered by a
query thread of their own, on the request's MQTT 5 Response Topic with its Correlation Data
(else on ``history/response``).

:func:`open_history` sets it up, or says in one line why history is off (a read-only state
folder, say); captioning never depends on it.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from daemon.captioner import CaptionResult
from daemon.config import HistoryConfig
from daemon.contract import CameraTopics, history_event_message
from daemon.framecache import CachedFrame
from daemon.history import store
from daemon.history.events import Event, EventBudget, EventTracker
from daemon.history.page_files import TimelineFiles
from daemon.history.query import (QueryError, SimilarityIndex, answer, error_answer, fitted_answer, parse_request,
                                  request_id_of, search)
from daemon.history.writer import HistoryWriter, Insert, KeepExplanation, UpdateEnd
from daemon.imaging import decode_png

log = logging.getLogger("explaincam.history")

QUERY_QUEUE_SIZE = 8


class HistoryService:
    """One camera's timeline: tracker, writer and query thread (see the module doc)."""

    def __init__(self, config: HistoryConfig, path: Path, camera: str, topics: CameraTopics, publish: Callable,
                 model: str, clock: Callable[[], float] = time.monotonic, snapshot=None):
        self.config = config
        self.path = path
        self.camera = camera
        self.topics = topics
        self.publish = publish
        budget = EventBudget(config.max_events_per_hour, config.max_frame_mb_per_day * 1e6, clock)
        self.budget = budget
        self.writer = HistoryWriter(path, model, budget, thumbnail_px=config.thumbnail_px,
                                    queue_size=config.queue_size, retention_s=config.retention_days * 86400,
                                    max_bytes=int(config.max_size_mb * 1e6),
                                    after_change=TimelineFiles(snapshot).update if snapshot is not None else None)
        self.tracker = EventTracker(config.hold_frames, first_id=self.writer.first_id)
        self.on_new_event: list[Callable[[Event], None]] = []
        self._stored_open_id: int | None = None
        self.events_seen = 0
        self.dropped_rate_limited = 0
        self.queries = 0
        self.queries_refused = 0
        self._queries: queue.Queue = queue.Queue(maxsize=QUERY_QUEUE_SIZE)
        self._query_con: sqlite3.Connection | None = None
        self._query_identity = None
        self._index = SimilarityIndex()
        self._stop = threading.Event()
        self._query_thread = threading.Thread(target=self._query_loop, name="explaincam-history-query", daemon=True)

    def start(self) -> None:
        """Start the writer and the query thread."""
        self.writer.start()
        self._query_thread.start()

    # --- events (the caption loop's thread) ------------------------------------------

    def observe(self, frame) -> None:
        """Take one captioned frame (a daemon.framecache.CachedFrame); never waits."""
        for change, event in self.tracker.observe(frame.frame_id, frame.ts, frame.image, frame.caption):
            self._handle(change, event)

    def _handle(self, change: str, event: Event) -> None:
        if change == "closed":
            if event.event_id == self._stored_open_id:
                self.writer.submit(UpdateEnd(event.event_id, event.end, event.frames))
            return
        self.events_seen += 1
        if not self.budget.take_event():
            self.dropped_rate_limited += 1
            self._stored_open_id = None
            return
        self._stored_open_id = event.event_id
        if not self.writer.submit(Insert(event)):
            return
        self.publish(self.topics.history_event, json.dumps(history_event_message(
            event.event_id, event.caption, event.start, event.familiarity, event.out_of_distribution)))
        for callback in self.on_new_event:
            try:
                callback(event)
            except Exception:
                log.exception("a new-event callback failed")

    def keep_explanation(self, event_id: int, methods: list[str], response: dict) -> None:
        """Keep an explain response with its event (written by the writer thread)."""
        self.writer.submit(KeepExplanation(event_id, time.time(), list(methods), response))

    def stats(self) -> dict:
        """The ``history`` section of the stats message."""
        return {**self.writer.status(), "events_seen": self.events_seen,
                "dropped_rate_limited": self.dropped_rate_limited, "queries": self.queries,
                "queries_refused": self.queries_refused}

    def stop(self, timeout: float = 2.0) -> None:
        """Close the open event, write what is queued, stop the query thread."""
        for change, event in self.tracker.close(time.time()):
            self._handle(change, event)
        self._stop.set()
        self.writer.stop(timeout)
        self._query_thread.join(timeout=1.0)

    # --- stored events (any thread) ----------------------------------------------------

    def event_frame(self, event_id: int) -> CachedFrame | None:
        """A stored event as the frame cache holds frames (its ``image`` None when the event kept no
        lossless frame), for an explain request that names the event; None if it is not stored."""
        try:
            con = store.connect(self.path, create=False)
        except store.StoreUnusable:
            return None
        try:
            row = store.event_row(con, event_id)
            png = store.frame_png(con, event_id) if row is not None else None
        except sqlite3.Error as exc:
            log.warning("cannot read event %d: %s", event_id, exc)
            return None
        finally:
            con.close()
        if row is None:
            return None
        caption = CaptionResult(row["caption"], json.loads(row["tokens"]), row["caption"].split(), row["score"])
        image = decode_png(png) if png is not None else None
        return CachedFrame(row["first_frame_id"], row["start"], image, caption)

    # --- queries (MQTT thread -> query thread) -----------------------------------------

    def handle_query(self, payload: bytes, response_topic: str | None = None,
                     correlation_data: bytes | None = None) -> None:
        """Queue a query; a full queue is answered ``busy`` at once (runs on the MQTT thread)."""
        try:
            self._queries.put_nowait((payload, response_topic, correlation_data))
        except queue.Full:
            self.queries_refused += 1
            self._reply(error_answer(request_id_of(payload), self.camera, "busy",
                                     "too many history queries at once; ask again"), response_topic, correlation_data)

    def _query_loop(self) -> None:
        while not self._stop.is_set():
            try:
                payload, response_topic, correlation = self._queries.get(timeout=0.5)
            except queue.Empty:
                continue
            self._reply(self.answer(payload), response_topic, correlation)

    def answer(self, payload: bytes) -> dict:
        """The answer to one query payload (never raises)."""
        self.queries += 1
        request_id = request_id_of(payload)
        try:
            request = parse_request(payload, self.config.max_query_limit)
            events, next_offset = search(self._connection(), self._index, request)
            return answer(request.id, self.camera, events, request.offset, next_offset)
        except QueryError as exc:
            return error_answer(request_id, self.camera, exc.code, str(exc))
        except (sqlite3.Error, store.StoreUnusable) as exc:
            self._query_con = None
            log.warning("history query failed: %s", exc)
            return error_answer(request_id, self.camera, "store_unavailable", f"the event store cannot be read: {exc}")
        except Exception as exc:
            log.exception("history query failed")
            return error_answer(request_id, self.camera, "internal", f"{type(exc).__name__}: {exc}")

    def _connection(self) -> sqlite3.Connection:
        """The query thread's read connection, opened again when the store was replaced."""
        identity = store.file_identity(self.path)
        if self._query_con is None or identity != self._query_identity:
            if self._query_con is not None:
                self._query_con.close()
            self._query_con = store.connect(self.path, create=False)
            self._query_identity = identity
            self._index = SimilarityIndex()
        return self._query_con

    def _reply(self, payload: dict, response_topic: str | None, correlation: bytes | None) -> None:
        """Publish an answer; one larger than the broker accepts is sent smaller (``fitted_answer``)."""
        self.publish(response_topic or self.topics.history_response, json.dumps(payload), qos=1,
                     correlation_data=correlation, fit=lambda room: fitted_answer(payload, room))


def open_history(config: HistoryConfig, snapshot_dir: Path, camera: str, topics: CameraTopics, publish: Callable,
                 model: str, snapshot=None) -> HistoryService | None:
    """The started timeline, or None (said in one line) when it is off or its folder cannot be used;
    with ``snapshot`` (the daemon's SnapshotFolder) it keeps the page's timeline files there."""
    if not config.enabled:
        return None
    path = config.folder(snapshot_dir) / store.FILE_NAME
    try:
        service = HistoryService(config, path, camera, topics, publish, model, snapshot=snapshot)
    except store.StoreUnusable as exc:
        log.error("history is off: %s (set history.dir to a writable folder, or history.enabled: false)", exc)
        return None
    service.start()
    log.info("history: events kept in %s (%g days, %g MB at most)", path, config.retention_days, config.max_size_mb)
    return service
