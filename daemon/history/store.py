"""The event store: one SQLite file per camera (``history.sqlite`` in the state folder).

WAL journal (readers never wait for the writer; a SIGKILL loses at most the transaction in
flight), ``synchronous=NORMAL``, incremental auto-vacuum (pruning gives space back in small
steps). Tables:

- ``events``: id (milliseconds of the start, growing), start, end (Unix s), caption, tokens
  (JSON), score, familiarity, ood, frames, first_frame_id, model, thumbnail (JPEG), features
  (float16);
- ``events_fts``: FTS5 over the captions (external content, kept in step by triggers);
- ``frames``: the lossless key frame (PNG at model input size) of events that kept one;
- ``explanations``: an event's explain response (JSON, the maps as base64 PNGs) and methods.

Every statement takes its values as parameters; nothing a user sends is pasted into SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from daemon.history.events import Event, pack_features

FILE_NAME = "history.sqlite"
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 2000
PRUNE_STEP = 200  # events deleted per pruning step at most

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, start REAL NOT NULL, "end" REAL NOT NULL, caption TEXT NOT NULL,
    tokens TEXT NOT NULL, score REAL, familiarity REAL, ood INTEGER NOT NULL DEFAULT 0,
    frames INTEGER NOT NULL, first_frame_id INTEGER, model TEXT, thumbnail BLOB, features BLOB);
CREATE INDEX IF NOT EXISTS events_start ON events(start);
CREATE INDEX IF NOT EXISTS events_ood ON events(ood, id);
CREATE TABLE IF NOT EXISTS frames (event_id INTEGER PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS explanations (
    event_id INTEGER PRIMARY KEY, made_at REAL NOT NULL, methods TEXT NOT NULL, response TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(caption, content='events', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS events_ai AFTER INSERT ON events BEGIN
    INSERT INTO events_fts(rowid, caption) VALUES (new.id, new.caption); END;
CREATE TRIGGER IF NOT EXISTS events_ad AFTER DELETE ON events BEGIN
    INSERT INTO events_fts(events_fts, rowid, caption) VALUES ('delete', old.id, old.caption);
    DELETE FROM frames WHERE event_id = old.id;
    DELETE FROM explanations WHERE event_id = old.id; END;
"""

EVENT_COLUMNS = ('events.id AS id, events.start AS start, events."end" AS "end", events.caption AS caption, '
                 'events.tokens AS tokens, events.score AS score, events.familiarity AS familiarity, '
                 'events.ood AS ood, events.frames AS frames, events.first_frame_id AS first_frame_id, '
                 'events.model AS model, EXISTS(SELECT 1 FROM frames WHERE event_id = events.id) AS has_frame, '
                 '(SELECT methods FROM explanations WHERE event_id = events.id) AS explained')


class StoreUnusable(Exception):
    """The store's folder or file cannot be used at all (read-only folder, not a database)."""


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """A connection to the store at ``path`` with the schema in place (created when ``create``);
    StoreUnusable when the folder or file cannot be used."""
    if not create and not path.exists():
        raise StoreUnusable(f"{path} does not exist")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if create and not os.access(path.parent, os.W_OK):
            raise StoreUnusable(f"the folder {path.parent} is not writable")
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if create:
            con.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.executescript(SCHEMA)
        return con
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnusable(f"{path}: {exc}") from exc


def looks_sound(path: Path) -> bool:
    """Whether ``path`` still is an SQLite file (a cheap check of its header, not of every page)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file, None when it is gone: a deleted or replaced store shows as a change."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove_store(path: Path) -> None:
    """Delete the store and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def insert_event(con: sqlite3.Connection, event: Event, model: str, thumbnail: bytes | None,
                 frame_png: bytes | None) -> None:
    """Store a new event (and its lossless frame, when kept); times to the millisecond, as answers give them."""
    con.execute(
        'INSERT OR REPLACE INTO events (id, start, "end", caption, tokens, score, familiarity, ood, frames, '
        'first_frame_id, model, thumbnail, features) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)',
        (event.event_id, round(event.start, 3), round(event.end, 3), event.caption, json.dumps(event.tokens), event.score,
         event.familiarity, int(event.out_of_distribution), event.frames, event.first_frame_id, model, thumbnail,
         pack_features(event.features)))
    if frame_png is not None:
        con.execute("INSERT OR REPLACE INTO frames (event_id, png) VALUES (?, ?)", (event.event_id, frame_png))


def update_end(con: sqlite3.Connection, event_id: int, end: float, frames: int) -> None:
    """An event's end and frame count, once known."""
    con.execute('UPDATE events SET "end" = ?, frames = ? WHERE id = ?', (round(end, 3), frames, event_id))


def save_explanation(con: sqlite3.Connection, event_id: int, made_at: float, methods: list[str],
                     response: dict) -> None:
    """Keep an explain response (its maps) with the event, if the event is still there."""
    con.execute("INSERT OR REPLACE INTO explanations (event_id, made_at, methods, response) "
                "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM events WHERE id = ?)",
                (event_id, made_at, ",".join(methods), json.dumps(response), event_id))


def used_bytes(con: sqlite3.Connection) -> int:
    """Bytes the store's pages hold (the file less its free pages)."""
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0] - con.execute("PRAGMA freelist_count").fetchone()[0]
    return int(page_size * pages)


def prune(con: sqlite3.Connection, oldest_start: float, max_bytes: int, step: int = PRUNE_STEP) -> int:
    """One small pruning step: delete up to ``step`` events that started before ``oldest_start``,
    else, while the store holds more than ``max_bytes``, the ``step`` oldest; give free pages back.
    The number of events deleted."""
    deleted = con.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE start < ? "
                          "ORDER BY id LIMIT ?)", (oldest_start, step)).rowcount
    if not deleted and used_bytes(con) > max_bytes:
        deleted = con.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                              (step,)).rowcount
    if deleted:
        con.execute("PRAGMA incremental_vacuum(256)")
    return max(0, deleted)


def last_event_id(con: sqlite3.Connection) -> int:
    """The newest event's id (0 when empty): new ids continue after it."""
    return int(con.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])


def event_row(con: sqlite3.Connection, event_id: int) -> sqlite3.Row | None:
    """One event's row (the columns of :data:`EVENT_COLUMNS`), None if there is no such event."""
    return con.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()


def frame_png(con: sqlite3.Connection, event_id: int) -> bytes | None:
    """The event's lossless key frame, None if it kept none."""
    row = con.execute("SELECT png FROM frames WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None else bytes(row[0])
