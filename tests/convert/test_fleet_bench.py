"""``explaincam fleet-bench`` on this box: one camera daemon, one worker, a few requests, all answered."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

ROW = re.compile(r"^ +(\d+) +([\d.]+) +(\d+) +(\d+) +(\d+) +([\d.]+)$", re.M)  # workers, /s, p50, p95, errors, captions


def test_fleet_bench_answers_every_request_of_one_camera_through_one_worker(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "fleet-bench", "--cameras", "1", "--workers", "1",
                           "--requests", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "capture rate before any request:" in proc.stdout
    rows = ROW.findall(proc.stdout)
    assert len(rows) == 1, proc.stdout
    workers, answered_per_s, p50, p95, errors, _ = rows[0]
    assert workers == "1" and float(answered_per_s) > 0 and 0 < int(p50) <= int(p95) and errors == "0"
