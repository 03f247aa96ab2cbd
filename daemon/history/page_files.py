"""The timeline's static files for the snapshot page: ``timeline/`` in the snapshot folder.

``timeline/index.json`` lists the newest ``TIMELINE_EVENTS`` events (id, times, caption,
familiarity, flags, thumbnail file, explanation file); ``timeline/<id>.jpg`` is each one's
thumbnail and ``timeline/<id>.json`` the explanation kept with it (the explain response: per
word and method a heatmap as base64 PNG). The page (index.html) fetches them; no web server
of our own is needed. Written atomically by the store's writer thread after a commit that
changed something, never on the caption path; files of events that left the list are removed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from daemon.contract import iso_time
from daemon.files import write_atomically
from daemon.history.store import EVENT_COLUMNS

TIMELINE_EVENTS = 50
FOLDER_NAME = "timeline"


class TimelineFiles:
    """Keeps ``{snapshot folder}/timeline/`` in step with the newest events of a store."""

    def __init__(self, snapshot_dir: Path, keep: int = TIMELINE_EVENTS):
        self.folder = Path(snapshot_dir) / FOLDER_NAME
        self.keep = keep
        self._written: dict[str, str] | None = None  # file name -> what it holds (the explanation's methods)

    def update(self, con: sqlite3.Connection) -> None:
        """Write the index, the new thumbnails and explanations, and remove what fell off the list; OSError
        and sqlite3.Error propagate (the writer logs them once)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._written is None:  # files of an earlier run: rewritten if still listed, else removed
            self._written = {p.name: "" for p in self.folder.iterdir() if p.name != "index.json" and p.is_file()}
        rows = con.execute(f"SELECT {EVENT_COLUMNS}, events.thumbnail AS thumbnail FROM events "
                           "ORDER BY events.id DESC LIMIT ?", (self.keep,)).fetchall()
        entries, wanted = [], set()
        for row in rows:
            event_id = row["id"]
            entry = {"event_id": event_id, "start": row["start"], "end": row["end"],
                     "start_iso": iso_time(row["start"]), "caption": row["caption"],
                     "familiarity": row["familiarity"], "out_of_distribution": bool(row["ood"]),
                     "frames": row["frames"], "thumbnail": None, "explanation": None,
                     "explained": row["explained"].split(",") if row["explained"] else []}
            if row["thumbnail"] is not None:
                entry["thumbnail"] = self._write_once(f"{event_id}.jpg", "jpg", bytes(row["thumbnail"]))
            if row["explained"]:
                explanation = con.execute("SELECT response FROM explanations WHERE event_id = ?",
                                          (event_id,)).fetchone()
                if explanation is not None:
                    entry["explanation"] = self._write_once(f"{event_id}.json", row["explained"],
                                                            explanation[0].encode())
            wanted.update(name for name in (entry["thumbnail"], entry["explanation"]) if name)
            entries.append(entry)
        write_atomically(self.folder / "index.json",
                         json.dumps({"updated": iso_time(time.time()), "events": entries}) + "\n")
        for name in list(self._written):
            if name not in wanted:
                (self.folder / name).unlink(missing_ok=True)
                del self._written[name]

    def _write_once(self, name: str, version: str, data: bytes) -> str:
        """Write ``name`` unless this version of it is there already; its name."""
        if self._written.get(name) != version or not (self.folder / name).exists():
            write_atomically(self.folder / name, data)
            self._written[name] = version
        return name
