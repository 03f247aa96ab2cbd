"""Snapshot files under a concurrent reader: never torn, never half-written, never missing.

The daemon rewrites latest.jpg, latest.json and index.html for every caption (as fast as
it captions); a reader reads them over and over, thousands of times, and checks each
read is a whole file: JSON that parses to a full record, a JPEG from its start marker to
its end marker (decodable), a page that ends with its closing tag.
"""

from __future__ import annotations

import json
import time

import cv2
import numpy as np

from tests.conftest import CAMERA, START_TIMEOUT, daemon_config, wait_until
from tests.faults.probes import figures

MIN_READS = 2000  # of each file
MIN_VERSIONS = 100  # distinct frames seen: the writes really interleaved with the reads
READ_LIMIT_S = 120  # the daemon writes 10-100 versions a second, slower on a busy box
DECODE_EVERY = 20  # a full JPEG decode every this many reads of latest.jpg


def check_json(data: bytes) -> int:
    """The frame_id of a whole latest.json; AssertionError otherwise."""
    record = json.loads(data)
    assert {"frame_id", "caption", "tokens", "timings", "image"} <= set(record), record
    return record["frame_id"]


def check_jpeg(data: bytes, decode: bool) -> None:
    """AssertionError unless ``data`` is a whole JPEG file."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", f"torn JPEG ({len(data)} bytes)"
    if decode:
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


def check_html(data: bytes) -> None:
    """AssertionError unless ``data`` is a whole index.html."""
    assert data.startswith(b"<!doctype html>") and data.endswith(b"</html>\n"), f"torn page ({len(data)} bytes)"


def test_a_reader_never_sees_a_torn_snapshot(tmp_path, mosquitto, daemon_process):
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": 0},
                           camera={"name": CAMERA, "source": {"type": "scenes", "fps": 100}},
                           mqtt={"publish_jpeg": False})
    daemon = daemon_process(config)
    folder = tmp_path / "snapshot"
    files = {name: folder / name for name in ("latest.json", "latest.jpg", "index.html")}
    wait_until(lambda: all(p.exists() for p in files.values()), START_TIMEOUT, message="the snapshot files")
    reads = dict.fromkeys(files, 0)
    versions, last = set(), 0
    started = time.monotonic()
    while min(reads.values()) < MIN_READS or len(versions) < MIN_VERSIONS:
        for name, path in files.items():
            data = path.read_bytes()  # FileNotFoundError would be a failure too
            if name == "latest.json":
                frame_id = check_json(data)
                assert frame_id >= last, "latest.json went back in time"
                versions.add(frame_id)
                last = frame_id
            elif name == "latest.jpg":
                check_jpeg(data, reads[name] % DECODE_EVERY == 0)
            else:
                check_html(data)
            reads[name] += 1
        assert time.monotonic() - started < READ_LIMIT_S, f"only {len(versions)} versions seen, {reads} reads"
    seconds = time.monotonic() - started
    assert daemon.stop() < 5 and daemon.process.returncode == 0
    # page.js: the page's script; history and timeline: the timeline's store and page files
    leftovers = sorted(p.name for p in folder.iterdir() if p.name not in (*files, "page.js", "history", "timeline"))
    figures("snapshot_atomicity", reads=sum(reads.values()), reads_per_file=min(reads.values()),
            seconds=round(seconds, 1), versions_seen=len(versions), frames_written=last,
            leftover_files=leftovers)
    assert leftovers == [], "temporary files were left behind"
