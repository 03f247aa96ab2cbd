"""Timing loops, /proc readings and the bench's frames: what every bench part measures with (no TensorFlow)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from daemon.captioner import resize_for_encoder
from daemon.encoder import load_interpreter
from daemon.scenes import scene_at

BENCH_SCENES_SEED = 5150  # frames the bench runs on (training uses 1, calibration 4242, report 4343)
BENCH_FRAMES = 8
BEAM_WIDTH = 3  # of the numpy and the seed-style beam search
WARMUP_RUNS = 2
MIN_RUNS = 3
PEAK_CONV = (28, 28, 256, 256, 3)  # the int8 peak model: an H x W x Cin input, Cout filters of k x k
SIMD_FLAGS = ("neon", "asimd", "asimddp", "i8mm", "sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
              "amx_int8")


def summarize(times_ms: list[float]) -> dict:
    """Median, 95th percentile (ms) and run count of a list of timings."""
    values = np.asarray(times_ms, np.float64)
    return {"median": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "runs": int(values.size)}


def timed_loop(fn: Callable[[int], object], seconds: float, warmup: int = WARMUP_RUNS,
               min_runs: int = MIN_RUNS) -> dict:
    """Call ``fn(i)`` ``warmup`` times, then for ``seconds`` (at least ``min_runs`` calls); summary in ms."""
    for i in range(warmup):
        fn(i)
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        fn(len(times))
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def timed_side_by_side(fns: dict[str, Callable[[int], object]], seconds: float, warmup: int = WARMUP_RUNS,
                       min_runs: int = MIN_RUNS) -> dict[str, dict]:
    """Call each of ``fns`` in turn, round after round, for ``seconds`` in all; a summary in ms for each.

    Load on the box that comes and goes then falls on every function alike, so ratios of
    their medians hold where separate loops, minutes apart, would not.
    """
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in fns}
    started, rounds = time.perf_counter(), 0
    while rounds < min_runs or time.perf_counter() - started < seconds:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(rounds)
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: summarize(values) for name, values in times.items()}


def speed_ratio(slow: dict | None, fast: dict | None) -> float | None:
    """How many times faster ``fast`` is than ``slow`` (ratio of medians), None if either is missing."""
    if not slow or not fast:
        return None
    return round(slow["median"] / fast["median"], 3)


def read_proc_status(pid: int | str = "self") -> dict | None:
    """VmRSS and VmHWM (peak RSS) of a process in MB from /proc/PID/status; None where unreadable."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    if "VmRSS" not in fields:
        return None
    return {"rss": fields["VmRSS"], "hwm": fields.get("VmHWM")}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (from /proc/PID/stat); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict:
    """Core count, CPU model, clock (MHz, if reported) and the SIMD features that matter for int8."""
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip().lower(), value.strip())
    flags = set((info.get("flags") or info.get("features") or "").split())
    mhz = info.get("cpu mhz")
    return {"cores": os.cpu_count(),
            "model": info.get("model name") or info.get("hardware") or info.get("cpu part") or "unknown",
            "mhz": round(float(mhz)) if mhz else None,
            "simd": [f for f in SIMD_FLAGS if f in flags]}


def bench_frames(count: int, size: int | None = None) -> list[np.ndarray]:
    """The bench's RGB uint8 scene frames (resized to ``size`` when given)."""
    frames = [scene_at(BENCH_SCENES_SEED, i).image for i in range(count)]
    return [resize_for_encoder(f, size) for f in frames] if size else frames


def tflite_graph(path: str | Path) -> dict:
    """Multiply-accumulates of a TFLite graph's conv, depthwise and dense ops, and its delegate partitions.

    ``delegate_partitions`` is how many pieces LiteRT's default (XNNPACK) delegate runs; 1
    means the whole graph is delegated, more means ops it cannot take run in between.
    """
    interpreter = load_interpreter(path, 1)
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    counts = {"conv": 0, "depthwise": 0, "dense": 0}
    ops = interpreter._get_ops_details()  # the only way LiteRT's Python API lists ops
    for op in ops:
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out = shapes[op["outputs"][0]]
        weights = shapes[op["inputs"][1]]
        if op["op_name"] == "CONV_2D":  # filter (Cout, kh, kw, Cin / groups)
            counts["conv"] += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, Cout)
            counts["depthwise"] += int(np.prod(out)) * weights[1] * weights[2]
        else:  # weights (units, inputs)
            counts["dense"] += int(np.prod(out)) * weights[1]
    return {"macs": {"total": sum(counts.values()), **counts},
            "delegate_partitions": sum(op["op_name"] == "DELEGATE" for op in ops)}


def int8_rate(path: str | Path, threads: int, seconds: float) -> dict:
    """LiteRT timing of a TFLite model on a random uint8 input at ``threads`` threads."""
    interpreter = load_interpreter(path, threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).integers(
        0, 255, detail["shape"], dtype=np.uint8).astype(detail["dtype"]))
    return timed_loop(lambda i: interpreter.invoke(), seconds)


def attempt(fn: Callable[[], object]) -> dict:
    """``{"value": fn()}``, or ``{"error": reason}`` if it raised."""
    try:
        return {"value": fn()}
    except Exception as exc:  # a bench part that fails is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
