"""Snapshot files: latest.jpg with the caption, latest.json, a self-refreshing index.html."""

from __future__ import annotations

import json

import cv2
import numpy as np

from daemon.imaging import encode_jpeg
from daemon.snapshot import SnapshotFolder, draw_caption


def test_draw_caption_scales_the_frame_and_adds_a_band():
    frame = np.zeros((224, 224, 3), np.uint8)
    drawn = draw_caption(frame, "a large red circle left of a small blue square " * 3, width=640)
    assert drawn.shape[1] == 640 and drawn.shape[0] > 640 and drawn.dtype == np.uint8
    assert drawn[640:].max() == 255  # white text in the band


def test_writer_writes_decodable_image_json_and_html(tmp_path):
    writer = SnapshotFolder(tmp_path / "snap", "front", min_interval_s=0)
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[..., 0] = 200  # red
    message = {"frame_id": 7, "ts": 1700000000.0, "caption": "a red <square>", "model": "m",
               "ground_truth": "a red square"}
    writer.write(encode_jpeg(draw_caption(rgb, message["caption"], 320)), message)
    image = cv2.imread(str(tmp_path / "snap" / "latest.jpg"))
    assert image is not None and image.shape[1] == 320 and image[10, 10, 2] > 150  # BGR on disk: red
    record = json.loads((tmp_path / "snap" / "latest.json").read_text())
    assert record["frame_id"] == 7 and record["image"] == "latest.jpg"
    page = (tmp_path / "snap" / "index.html").read_text()
    # a static page that fetches the JSON files itself (tests/daemon/test_snapshot_page.py runs it in Chromium)
    assert 'http-equiv="refresh"' not in page and "latest.jpg" in page and "explanation.json" in page
    assert "<title>explaincam: front</title>" in page and "a red" not in page


def test_the_page_is_written_once_and_escapes_the_camera_name(tmp_path):
    writer = SnapshotFolder(tmp_path, "<cam>", min_interval_s=0)
    writer.write(b"jpeg", {"frame_id": 1, "caption": "x"})
    assert "<h1>&lt;cam&gt;</h1>" in (tmp_path / "index.html").read_text()
    (tmp_path / "index.html").write_text("edited")
    writer.write(b"jpeg", {"frame_id": 2, "caption": "y"})
    assert (tmp_path / "index.html").read_text() == "edited"  # not rewritten for every caption


def test_writer_respects_the_minimum_interval(tmp_path):
    now = [100.0]
    writer = SnapshotFolder(tmp_path, "cam", min_interval_s=2.0, clock=lambda: now[0])
    assert writer.due()
    writer.write(b"jpeg", {"frame_id": 1, "caption": "x"})
    now[0] += 1.0
    assert not writer.due()
    now[0] += 1.0
    assert writer.due()


def test_temporaries_of_a_write_cut_short_are_removed_when_the_writer_starts(tmp_path):
    (tmp_path / "latest.json").write_text('{"caption": "kept"}')
    (tmp_path / ".latest.json.k3j2x.tmp").write_text('{"capt')  # what a power cut mid-write leaves
    (tmp_path / ".explanation.png.a1b2.tmp").write_bytes(b"\x89PN")
    (tmp_path / "notes.tmp").write_text("a user's file, not one of ours")
    SnapshotFolder(tmp_path, "cam")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "notes.tmp"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"caption": "kept"}
