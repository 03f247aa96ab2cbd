"""The snapshot folder: ``latest.jpg`` (caption drawn on it), ``latest.json`` and ``index.html``.

Every file is written atomically (temporary file in the same folder, fsync, rename, fsync
of the folder), so a reader never sees a torn file, even across a power cut.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files ``atomic_write`` left in ``folder`` when the power was cut
    mid-write (``.NAME.XXXX.tmp``); return their names. Call it before anything writes there."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed


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


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


INDEX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>explaincam: {camera}</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}}
img{{max-width:100%}} .meta{{color:#999;font-size:90%}}</style></head>
<body><h1>{camera}</h1>
<img src="latest.jpg?{frame_id}" alt="{caption}">
<p class="caption">{caption}</p>
<p class="meta">frame {frame_id} · {when} · model {model}{truth} · <a href="latest.json">latest.json</a></p>
</body></html>
"""


class SnapshotWriter:
    """Writes latest.jpg, latest.json and index.html into a folder, at most every ``min_interval_s``."""

    def __init__(self, folder: str | os.PathLike, camera: str, min_interval_s: float = 0.0, clock=time.monotonic):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self.camera = camera
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_write = float("-inf")

    def due(self) -> bool:
        """Whether enough time has passed since the last write."""
        return self._clock() - self._last_write >= self.min_interval_s

    def write(self, jpeg: bytes, caption_message: dict) -> None:
        """Write the three files for one caption message (as published on MQTT)."""
        self._last_write = self._clock()
        atomic_write(self.folder / "latest.jpg", jpeg)
        record = dict(caption_message, image="latest.jpg")
        atomic_write(self.folder / "latest.json", (json.dumps(record, indent=2) + "\n").encode())
        truth = caption_message.get("ground_truth")
        page = INDEX_TEMPLATE.format(
            refresh=max(1, round(self.min_interval_s)) + 1,
            camera=html.escape(self.camera),
            caption=html.escape(caption_message.get("caption", "")),
            frame_id=int(caption_message.get("frame_id", 0)),
            when=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(caption_message.get("ts", time.time()))),
            model=html.escape(str(caption_message.get("model", ""))),
            truth=f" · ground truth: {html.escape(truth)}" if truth else "",
        )
        atomic_write(self.folder / "index.html", page.encode())
