"""Atomic writes: readers see the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import threading

from daemon.files import write_atomically


def test_write_atomically_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "latest.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["latest.json"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_a_concurrent_reader_never_sees_a_torn_or_missing_file(tmp_path):
    """A reader (a web server, Home Assistant) reads while the file is replaced 150 times: every
    read finds the file (no window where it is gone) and parses (never half written)."""
    target = tmp_path / "latest.json"
    write_atomically(target, json.dumps({"n": 0, "pad": "x" * 50_000}).encode())
    done = threading.Event()
    failures, seen = [], set()

    def read_constantly():
        while not done.is_set():
            try:
                seen.add(json.loads(target.read_bytes())["n"])
            except Exception as exc:  # noqa: BLE001 - a missing file is as wrong as a torn one
                failures.append(repr(exc))

    reader = threading.Thread(target=read_constantly)
    reader.start()
    try:
        for n in range(1, 151):
            write_atomically(target, json.dumps({"n": n, "pad": "x" * (50_000 + n)}).encode())
    finally:
        done.set()
        reader.join()
    assert failures == [], failures[:5]
    assert len(seen) >= 10, f"the reader saw only versions {sorted(seen)}"  # it read while the writes went on
    assert json.loads(target.read_bytes())["n"] == 150
