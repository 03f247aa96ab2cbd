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


def test_a_concurrent_reader_never_sees_a_torn_file(tmp_path):
    target = tmp_path / "latest.json"
    write_atomically(target, json.dumps({"n": 0, "pad": "x" * 50_000}).encode())
    done = threading.Event()
    torn = []

    def read_constantly():
        while not done.is_set():
            try:
                json.loads(target.read_bytes())
            except ValueError as exc:
                torn.append(exc)

    reader = threading.Thread(target=read_constantly)
    reader.start()
    for n in range(150):
        write_atomically(target, json.dumps({"n": n, "pad": "x" * (50_000 + n)}).encode())
    done.set()
    reader.join()
    assert torn == []
