"""Bench parts that need a fresh process: ``run_child`` starts ``python -m convert.bench.<task>`` and reads
its JSON result; ``serve_task`` is that process's side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

EXPLAINER_START_TIMEOUT_S = 180.0  # backend load (TensorFlow: import + model) of the explainer worker
REPO_ROOT = Path(__file__).resolve().parents[2]


def serve_task(task: Callable[[dict], dict]) -> None:
    """The child's side (``python -m convert.bench.<task> PARAMS_JSON OUT_PATH``): run ``task``,
    write its result (or error) as JSON."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # lets ``finally`` stop the explainer
    params_json, out_path = sys.argv[1:3]
    try:
        result = task(json.loads(params_json))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out_path).write_text(json.dumps(result))


def run_child(task: str, params: dict, timeout: float) -> dict:
    """Run ``convert/bench/<task>_task.py`` in a fresh Python process; its result, or ``{"error": reason}``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with tempfile.TemporaryDirectory(prefix="explaincam-bench-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", f"convert.bench.{task}_task", json.dumps(params),
                                     str(out)], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return {"error": f"the {task} measurement took longer than {timeout:.0f} s"}
        if out.is_file():
            return json.loads(out.read_text())
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"the {task} process ended with code {proc.returncode}: {' | '.join(tail)}"}
