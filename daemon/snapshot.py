"""The snapshot folder, owned here: what the daemon writes into it and reads back from it.

- ``latest.jpg`` (the frame with its caption drawn on it) and ``latest.json`` (the caption
  message as published on MQTT), from the caption loop, at most every ``min_interval_s``;
- ``explanation.png`` (the explanation picture), ``explanation.jpg`` (the explained frame)
  and ``explanation.json`` (the response, the model name and when it was made), from the
  explain service; at start the daemon reads the last explanation back
  (``last_explanation``) to publish it again;
- ``timeline/``: ``index.json`` (the newest events), each one's thumbnail ``<id>.jpg`` and
  kept explanation ``<id>.json``, from the timeline (``daemon.history.page_files``) after the
  event store changed; a file whose event left the list is removed;
- ``index.html`` and ``page.js``, the static page (package data in ``daemon/page/``), laid
  down once: any web server, or Home Assistant's ``www`` folder, can serve the folder. The
  page fetches ``latest.json`` and ``explanation.json`` every few seconds and swaps images
  only once they have loaded, so it refreshes without flicker. It shows the latest caption
  (with a warning when the frame is out of distribution) and the latest explanation: the
  explained frame, the words of its caption and, for the chosen word and method, the
  heatmap coloured and laid over the frame in the browser; and the timeline: the newest
  events with thumbnail, time, caption and familiarity, and for an explained event its
  kept explanation laid over the thumbnail.

Every file is written atomically (``daemon.files``), so a reader never sees a torn file,
even across a power cut. A folder that refuses writes is logged once per kind of problem
(and its recovery once), never raised: the caption loop and the explain service go on.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from daemon.contract import explanation_info, parse_iso_time
from daemon.files import remove_stale_temporaries, write_atomically
from daemon.imaging import encode_jpeg
from daemon.problems import RecurringProblem

log = logging.getLogger(__name__)

EXPLAINED_FRAME_QUALITY = 92  # JPEG quality of explanation.jpg
TIMELINE_FOLDER = "timeline"
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _wrap(text: str, width_px: int, scale: float, thickness: int) -> list[str]:
    """Split text into lines no wider than ``width_px`` in the Hershey font."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and cv2.getTextSize(candidate, FONT, scale, thickness)[0][0] > width_px:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def draw_caption(rgb: np.ndarray, caption: str, width: int = 640) -> np.ndarray:
    """The frame scaled to ``width`` with the caption in a dark band below it (RGB uint8)."""
    h, w = rgb.shape[:2]
    height = max(1, round(h * width / w))
    interpolation = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    image = cv2.resize(rgb, (width, height), interpolation=interpolation)
    scale = max(0.45, width / 1000)
    thickness = 1 if width < 900 else 2
    margin = max(6, width // 80)
    lines = _wrap(caption or "(no caption)", width - 2 * margin, scale, thickness)
    line_h = cv2.getTextSize("Ag", FONT, scale, thickness)[0][1] + margin
    band = np.full((line_h * len(lines) + margin, width, 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (margin, (i + 1) * line_h), FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.vstack([image, band])


def page_files(camera: str, refresh_ms: int) -> dict[str, bytes]:
    """The snapshot page's files (``index.html`` with the camera's name and refresh period, ``page.js``),
    script first: a reader of the page finds its script."""
    page = resources.files("daemon") / "page"
    index = (page / "index.html").read_text(encoding="utf-8")
    index = index.replace("__CAMERA__", html.escape(camera)).replace("__REFRESH_MS__", str(refresh_ms))
    return {"page.js": (page / "page.js").read_bytes(), "index.html": index.encode("utf-8")}


def last_explanation(folder: str | os.PathLike) -> tuple[bytes, dict] | None:
    """The last explanation in a snapshot folder: its picture and its ``explain/image/info``; None
    when there is none. Raises OSError or ValueError (and the like) when it cannot be read."""
    folder = Path(folder)
    try:
        png = (folder / "explanation.png").read_bytes()
        saved = json.loads((folder / "explanation.json").read_text())
    except FileNotFoundError:
        return None
    made_at = (parse_iso_time(saved["made_at"]) if saved.get("made_at")
               else (folder / "explanation.png").stat().st_mtime)  # written before made_at was kept
    return png, explanation_info(saved, made_at)


class SnapshotFolder:
    """Writes the snapshot files into a folder: the caption files at most every ``min_interval_s``
    (the page once, with the first), the explanation files whenever one is made."""

    def __init__(self, folder: str | os.PathLike, camera: str, min_interval_s: float = 0.0, clock=time.monotonic):
        """Make the folder if missing and remove the temporaries of writes cut short (OSError if it cannot)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self.camera = camera
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_write = float("-inf")
        self._page_written = False
        self._caption_problem = RecurringProblem(log, f"write the snapshot files in {self.folder}")
        self._explanation_problem = RecurringProblem(log, f"write the explanation files in {self.folder}")
        self._timeline_problem = RecurringProblem(log, f"write the timeline files in {self.folder}")

    def due(self) -> bool:
        """Whether enough time has passed since the last caption write."""
        return self._clock() - self._last_write >= self.min_interval_s

    def write(self, jpeg: bytes, caption_message: dict) -> None:
        """Write latest.jpg and latest.json for one caption message (as published on MQTT); the page once."""
        self._last_write = self._clock()
        try:
            write_atomically(self.folder / "latest.jpg", jpeg)
            record = dict(caption_message, image="latest.jpg")
            write_atomically(self.folder / "latest.json", (json.dumps(record, indent=2) + "\n").encode())
            if not self._page_written:
                refresh_ms = round(1000 * min(10.0, max(1.0, self.min_interval_s)))
                for name, data in page_files(self.camera, refresh_ms).items():
                    write_atomically(self.folder / name, data)
                self._page_written = True
        except OSError as exc:  # logged once per kind of problem, not every frame
            self._caption_problem.failed(exc)
        else:
            self._caption_problem.succeeded()

    def write_explanation(self, grid_png: bytes, record: dict, image: np.ndarray | None) -> None:
        """explanation.png, explanation.jpg (the frame, when known) and explanation.json (the response
        plus the model name and when it was made); the page reads the JSON last, so it is written last.
        The folder is made again if it was removed."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(self.folder / "explanation.png", grid_png)
            if image is not None:
                write_atomically(self.folder / "explanation.jpg", encode_jpeg(image, EXPLAINED_FRAME_QUALITY))
            write_atomically(self.folder / "explanation.json", (json.dumps(record) + "\n").encode())
        except OSError as exc:
            self._explanation_problem.failed(exc)
        else:
            self._explanation_problem.succeeded()

    def write_timeline(self, index: dict, files: dict[str, bytes]) -> bool:
        """``timeline/``: ``files`` (new or changed thumbnails and explanations) first, then ``index.json``,
        then remove the files the index no longer names. Whether it all worked (a failure is logged once)."""
        folder = self.folder / TIMELINE_FOLDER
        named = {name for event in index["events"] for name in (event["thumbnail"], event["explanation"]) if name}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                write_atomically(folder / name, data)
            write_atomically(folder / "index.json", (json.dumps(index) + "\n").encode())
            for path in folder.iterdir():
                if path.name != "index.json" and path.name not in named and path.is_file():
                    path.unlink(missing_ok=True)
        except OSError as exc:
            self._timeline_problem.failed(exc)
            return False
        self._timeline_problem.succeeded()
        return True
