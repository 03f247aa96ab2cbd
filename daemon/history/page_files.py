"""The timeline's part of the snapshot page: what the newest events are, for ``SnapshotFolder.write_timeline``.

``timeline/index.json`` lists the newest ``TIMELINE_EVENTS`` events (id, times, caption,
familiarity, flags, thumbnail file, explanation file); ``timeline/<id>.jpg`` is each one's
thumbnail and ``timeline/<id>.json`` the explanation kept with it (the explain response: per
word and method a heatmap as base64 PNG). The page (``daemon/page/``) fetches them; no web
server of our own is needed. Built by the store's writer thread after a commit that changed
something, never on the caption path; each file is handed over once (again only when it
changed), and files of events that left the list are removed by the snapshot folder.
"""

from __future__ import annotations

import sqlite3
import time

from daemon.contract import iso_time
from daemon.history.store import EVENT_COLUMNS

TIMELINE_EVENTS = 50


class TimelineFiles:
    """Hands a SnapshotFolder the timeline of a store's newest events."""

    def __init__(self, snapshot, keep: int = TIMELINE_EVENTS):
        self.snapshot = snapshot  # the daemon's SnapshotFolder
        self.keep = keep
        self._handed: dict[str, str] = {}  # file name -> the version handed over (the explanation's methods)

    def update(self, con: sqlite3.Connection) -> None:
        """Build the index from ``con`` and hand it over with the files it names that are new or changed."""
        rows = con.execute(f"SELECT {EVENT_COLUMNS}, events.thumbnail AS thumbnail FROM events "
                           "ORDER BY events.id DESC LIMIT ?", (self.keep,)).fetchall()
        entries, files, versions = [], {}, {}
        for row in rows:
            event_id = row["id"]
            entry = {"event_id": event_id, "start": row["start"], "end": row["end"],
                     "start_iso": iso_time(row["start"]), "caption": row["caption"],
                     "familiarity": row["familiarity"], "out_of_distribution": bool(row["ood"]),
                     "frames": row["frames"], "thumbnail": None, "explanation": None,
                     "explained": row["explained"].split(",") if row["explained"] else []}
            if row["thumbnail"] is not None:
                entry["thumbnail"] = f"{event_id}.jpg"
                versions[entry["thumbnail"]] = "jpg"
                if self._handed.get(entry["thumbnail"]) != "jpg":
                    files[entry["thumbnail"]] = bytes(row["thumbnail"])
            if row["explained"]:
                entry["explanation"] = f"{event_id}.json"
                versions[entry["explanation"]] = row["explained"]
                if self._handed.get(entry["explanation"]) != row["explained"]:
                    response = con.execute("SELECT response FROM explanations WHERE event_id = ?",
                                           (event_id,)).fetchone()
                    files[entry["explanation"]] = response[0].encode() if response else b"{}"
            entries.append(entry)
        if self.snapshot.write_timeline({"updated": iso_time(time.time()), "events": entries}, files):
            self._handed = versions
