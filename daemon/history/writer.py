"""The store's writer: one thread, a bounded queue, commits at least every half second.

The caption loop hands it events and never waits: a full queue drops the write and counts
it. The thread encodes the key frame (JPEG thumbnail, lossless PNG when the frame budget
allows), writes, commits within ``COMMIT_EVERY_S`` (so a SIGKILL loses at most that much)
and prunes in small steps every ``PRUNE_EVERY_S``.

Faults, each logged once and survived: the file deleted or overwritten under the running
daemon (seen by its inode and header before each batch, or by SQLite's "malformed" error)
-> a new store is created and writing goes on; the disk full -> the batch is dropped and
counted until writes succeed again.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from daemon.history import store
from daemon.history.events import Event, EventBudget, encode_thumbnail
from daemon.imaging import encode_png
from daemon.problems import RecurringProblem

log = logging.getLogger("explaincam.history")

COMMIT_EVERY_S = 0.5
PRUNE_EVERY_S = 30.0
IDLE_WAIT_S = 0.5
MAX_BATCH = 1000  # writes in one transaction at most
PROBLEM_SETTLE_S = 60.0  # a write problem is over once writes have worked this long (a full disk flaps)


@dataclass
class Insert:
    """Store a new event."""

    event: Event


@dataclass
class UpdateEnd:
    """An event ended."""

    event_id: int
    end: float
    frames: int


@dataclass
class KeepExplanation:
    """Keep an explain response with its event."""

    event_id: int
    made_at: float
    methods: list[str]
    response: dict


def thread_bytes_written(native_id: int) -> int | None:
    """Bytes a thread of this process passed to write() (``wchar`` of /proc/self/task/ID/io), None without /proc."""
    try:
        for line in Path(f"/proc/self/task/{native_id}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class HistoryWriter:
    """Writes events into the store at ``path`` on a thread of its own (see the module doc)."""

    def __init__(self, path: Path, model: str, budget: EventBudget, *, thumbnail_px: int = 128,
                 queue_size: int = 64, retention_s: float = 7 * 86400, max_bytes: int = 1 << 30,
                 after_change: Callable[[sqlite3.Connection], None] | None = None):
        self.path = path
        self.model = model
        self.budget = budget
        self.thumbnail_px = thumbnail_px
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._con = store.connect(path)  # StoreUnusable here: the caller turns history off
        self._identity = store.file_identity(path)
        self._lost = False  # the folder could hold no store at the last try: writes go to memory
        self.first_id = store.last_event_id(self._con)
        self._problem = RecurringProblem(log, f"write the event store {path}", settle_s=PROBLEM_SETTLE_S)
        self.after_change = after_change  # called on this thread after a commit or pruning changed the store
        self._after_change_problem = RecurringProblem(log, "write the timeline's page files")
        self._thread = threading.Thread(target=self._run, name="explaincam-history", daemon=True)
        self._native_id: int | None = None
        self._written_at_end: int | None = None  # the thread's bytes written, read as it ended
        self.counts = {"events_stored": 0, "frames_kept": 0, "frames_over_budget": 0, "updates": 0,
                       "explanations_kept": 0, "dropped_queue_full": 0, "dropped_write_failed": 0,
                       "store_recreated": 0, "events_pruned": 0, "payload_bytes": 0}
        self.store_bytes = store.used_bytes(self._con)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, item: Insert | UpdateEnd | KeepExplanation) -> bool:
        """Queue a write without waiting; False (dropped and counted) when the queue is full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.counts["dropped_queue_full"] += 1
            return False

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout`` s), commit and close."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> dict:
        """Figures for the stats message: counts, the store's size, bytes this thread wrote."""
        written = self._written_at_end
        if written is None and self._native_id is not None:
            written = thread_bytes_written(self._native_id)
        return {**self.counts, "queue_depth": self._queue.qsize(), "store_bytes": self.store_bytes,
                "bytes_written": written if written is not None else self.counts["payload_bytes"]}

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        self._native_id = threading.get_native_id()
        next_prune = 0.0
        while True:
            try:
                first = self._queue.get(timeout=IDLE_WAIT_S)
            except queue.Empty:
                first = None
            if first is not None:
                self._write_batch(first)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                self._prune()
            if self._stop.is_set() and self._queue.empty():
                break
        self._con.close()
        self._written_at_end = thread_bytes_written(self._native_id)

    def _write_batch(self, first) -> None:
        """Write ``first`` and whatever follows within COMMIT_EVERY_S in one transaction (each key frame
        encoded, and its budget decided, as it is taken from the queue)."""
        batch = [(first, self._encode(first))]
        deadline = time.monotonic() + COMMIT_EVERY_S
        while time.monotonic() < deadline and not self._stop.is_set() and len(batch) < MAX_BATCH:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append((item, self._encode(item)))
        while not self._queue.empty() and len(batch) < MAX_BATCH:
            item = self._queue.get_nowait()
            batch.append((item, self._encode(item)))
        self._check_file()
        if self._lost:
            self.counts["dropped_write_failed"] += sum(isinstance(i, Insert) for i, _ in batch)
            return
        try:
            self._con.execute("BEGIN")
            for item, images in batch:
                self._apply(item, images)
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self.counts["dropped_write_failed"] += sum(isinstance(i, Insert) for i, _ in batch)
            if _is_corruption(exc):
                self._reopen(f"is damaged ({exc})", remove=True)
            else:
                self._problem.failed(exc)
            return
        self._problem.succeeded()
        for item, images in batch:
            self._count(item, images)
        self._changed()

    def _changed(self) -> None:
        """Tell ``after_change`` (the page's files); its failures are logged once, never raised."""
        if self.after_change is None:
            return
        try:
            self.after_change(self._con)
        except (OSError, sqlite3.Error) as exc:
            self._after_change_problem.failed(exc)
        else:
            self._after_change_problem.succeeded()

    def _encode(self, item) -> tuple[bytes | None, bytes | None]:
        """(thumbnail JPEG, lossless PNG or None when over the frame budget) of an Insert."""
        if not isinstance(item, Insert) or item.event.image is None:
            return None, None
        image = item.event.image
        png = encode_png(image)  # lossless: decoding gives the pixels the model saw
        if not self.budget.take_frame_bytes(len(png)):
            png = None
        return encode_thumbnail(image, self.thumbnail_px), png

    def _apply(self, item, images) -> None:
        if isinstance(item, Insert):
            store.insert_event(self._con, item.event, self.model, *images)
        elif isinstance(item, UpdateEnd):
            store.update_end(self._con, item.event_id, item.end, item.frames)
        else:
            store.save_explanation(self._con, item.event_id, item.made_at, item.methods, item.response)

    def _count(self, item, images) -> None:
        counts = self.counts
        if isinstance(item, Insert):
            thumbnail, png = images
            counts["events_stored"] += 1
            counts["frames_kept" if png is not None else "frames_over_budget"] += 1
            counts["payload_bytes"] += len(thumbnail or b"") + len(png or b"") + 2 * len(item.event.features if
                                                                                         item.event.features is not None else ())
        elif isinstance(item, UpdateEnd):
            counts["updates"] += 1
        else:
            counts["explanations_kept"] += 1

    def _prune(self) -> None:
        """One small retention step (age, then size)."""
        try:
            deleted = store.prune(self._con, time.time() - self.retention_s, self.max_bytes)
            self.counts["events_pruned"] += deleted
            self.store_bytes = store.used_bytes(self._con)
            if deleted:
                self._changed()
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                self._reopen(f"is damaged ({exc})", remove=True)
            else:
                self._problem.failed(exc)

    def _check_file(self) -> None:
        """A store deleted or overwritten since the last batch is recreated; one replaced by another
        database (a folder restored, say) is written to from now on."""
        identity = store.file_identity(self.path)
        sound = identity is not None and store.looks_sound(self.path)
        if identity is not None and identity == self._identity and sound:
            return
        if identity is None:
            self._reopen("was deleted", remove=False)
        elif sound:
            self._reopen(None, remove=False)
        else:
            self._reopen("was replaced or overwritten", remove=True)

    def _reopen(self, damage: str | None, remove: bool) -> None:
        """Open the store again (a new, empty one after ``damage``, logged once per incident); while the
        folder cannot hold one, writes go to memory and each batch tries again, quietly."""
        if damage is not None and not self._lost:
            log.error("the event store %s %s under the running daemon; starting a new one (events so far are "
                      "lost)", self.path, damage)
            self.counts["store_recreated"] += 1
        try:
            self._con.close()
        except sqlite3.Error:
            pass
        if remove:
            store.remove_store(self.path)
        try:
            self._con = store.connect(self.path)
        except store.StoreUnusable as exc:
            if not self._lost:
                log.error("cannot open an event store: %s; events are dropped until it can", exc)
            self._lost = True
            self._con = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._con.executescript(store.SCHEMA)
            self._identity = None
            return
        if self._lost or damage is None:
            log.warning("writing the event store %s again", self.path)
        self._lost = False
        self._identity = store.file_identity(self.path)

    def _rollback(self) -> None:
        try:
            self._con.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _is_corruption(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is no (longer a sound) database."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text)
