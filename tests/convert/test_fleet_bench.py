"""``explaincam fleet-bench`` on this box: one camera daemon, one worker, a few requests, all answered."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

REQUESTS = 3
FPS = 2.0  # fleet-bench's default scenes per second of each camera
EXPLAIN_LIMIT_MS = 120_000
ROW = re.compile(r"^ +(\d+) +([\d.]+) +(\d+) +(\d+) +(\d+) +([\d.]+)$", re.M)  # workers, /s, p50, p95, errors, captions


def test_fleet_bench_answers_every_request_of_one_camera_through_one_worker(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "fleet-bench", "--cameras", "1", "--workers", "1",
                           "--requests", str(REQUESTS)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "capture rate before any request:" in proc.stdout
    rows = ROW.findall(proc.stdout)
    assert len(rows) == 1, proc.stdout
    workers, answered_per_s, p50, p95, errors, captions = rows[0]
    assert workers == "1" and float(answered_per_s) > 0 and 0 < int(p50) <= int(p95) and errors == "0"
    # the figures agree with each other and with the settings (2 scenes/s per camera, 2 requests in flight)
    idle = float(re.search(r"capture rate before any request: ([\d.]+) captions/s per camera", proc.stdout)[1])
    assert 0 < idle <= FPS * 1.1  # no more captions than scenes (10 s counted)
    window_s = REQUESTS / float(answered_per_s)  # every request was answered
    # the camera keeps captioning while it explains: as many captions in the window as scenes, one more or less
    # (a window of 0.4 s may hold none at 2 scenes/s)
    assert FPS * window_s - 1.1 <= float(captions) * window_s <= FPS * window_s + 1.1, (captions, window_s)
    assert f"(captions/s/cam before any request: {idle:.2f}; {os.cpu_count()} CPUs on this box)" in proc.stdout
    # Little's law: answers/s x latency (s) is the mean number in flight, at most 2 (x1.5: p50 of 3 answers)
    assert float(answered_per_s) * int(p50) / 1000 <= 2 * 1.5, (answered_per_s, p50)
    assert int(p95) < EXPLAIN_LIMIT_MS  # milliseconds: an answer of LiteRT Grad-CAM takes well under a minute
