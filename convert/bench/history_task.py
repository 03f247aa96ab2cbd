"""The bench's timeline child: what keeping the history costs, side by side in one process.

- the caption loop (``build_daemon``, as ``explaincam run`` assembles it) with history off,
  at its defaults and with every event kept, in alternating windows; the RSS before and after;
- two hours of the demo's scene stream (2 captions/s, every frame a new caption) through the
  history at its defaults on a simulated clock: events kept and bytes the writer thread wrote;
- a store filled with synthetic events (100,000 unless ``--events`` / ``--history-events`` say
  otherwise): inserts/s, bytes per event on disk, and the p50/p95 of text and similar-to
  queries as the query thread runs them;
- a user's explain requests while a new event every 2 s is explained in the background,
  alternating with requests while background explanations are off.

Run as ``python -m convert.bench.history_task`` by ``explaincam bench`` and ``explaincam history-bench``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from convert.bench.capture_task import OfflinePublisher
from convert.bench.child import EXPLAINER_START_TIMEOUT_S, serve_task
from convert.bench.measure import BENCH_SCENES_SEED, read_proc_status
from daemon.app import build_daemon
from daemon.captioner import Captioner
from daemon.config import AppConfig, HistoryConfig
from daemon.contract import CameraTopics
from daemon.framecache import CachedFrame
from daemon.history import store
from daemon.history.events import Event, encode_thumbnail
from daemon.history.query import SimilarityIndex, parse_request, search
from daemon.history.service import HistoryService, open_history
from daemon.scenes import scene_at
from daemon.sources import Frame

DEMO_RATE = 2.0  # captions/s of `explaincam run --demo` (scenes at 2 fps)
EVENT_EVERY_S = 2.0  # a new event this often while a user's explain requests are timed
SIZES, COLOURS = ("small", "large"), ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "cross")
INSERT_BATCH = 100
WINDOW_S = 0.25  # captioning windows alternate between the variants this often


def _percentiles(values_ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(values_ms, 50)), 2), "p95": round(float(np.percentile(values_ms, 95)), 2),
            "n": len(values_ms)}


def caption_rates(params: dict, tmp: Path) -> dict:
    """Captions/s of one daemon's caption loop (``build_daemon``, as ``explaincam run`` assembles it) with
    its history detached, at its defaults, and keeping every event, in alternating windows of
    ``WINDOW_S`` (``seconds`` each in all, so drift in the box's load falls on all three alike); the
    process RSS before and after."""
    cfg = AppConfig.model_validate({
        "model": {"bundle": params["bundle"], "threads": 1}, "caption": {"rate": 0, "change_threshold": 0},
        "snapshot": {"enabled": False}, "history": {"dir": str(tmp / "defaults"), "explain": []}})
    daemon = build_daemon(cfg, publisher=OfflinePublisher(cfg))
    every = open_history(HistoryConfig(dir=tmp / "every", explain=[], max_events_per_hour=10**9,
                                       max_frame_mb_per_day=10**6), tmp, "every", CameraTopics("bench", "every"),
                         daemon.publisher.publish, daemon.captioner.bundle.name)
    observers = {"off": [], "defaults": [daemon.history.observe], "every_event": [every.observe]}
    scenes = [scene_at(BENCH_SCENES_SEED, i) for i in range(params["frames"])]
    frames = [Frame(i + 1, s.image, 0.0, 0.0, 0.0, s.caption) for i, s in enumerate(scenes)]
    done_total = [0]

    def window(name: str, seconds: float) -> tuple[int, float]:
        daemon.loop.frame_observers[:] = observers[name]
        done, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            frame = frames[done_total[0] % len(frames)]
            frame = dataclasses.replace(frame, ts=time.time(), grab_started=time.monotonic())
            if daemon.loop.process(frame) is not None:
                done += 1
                done_total[0] += 1
        return done, time.monotonic() - started

    for name in observers:
        window(name, 1.0)  # warm-up
    rss_before = read_proc_status()
    counts = {name: [0, 0.0] for name in observers}
    for _ in range(max(1, round(params["seconds"] / WINDOW_S))):
        for name in observers:
            done, took = window(name, WINDOW_S)
            counts[name][0] += done
            counts[name][1] += took
    stats = {"defaults": daemon.history.stats(), "every_event": every.stats()}
    every.stop()
    daemon.close()
    rss_after = read_proc_status()
    rates = {name: round(n / t, 2) for name, (n, t) in counts.items()}
    return {"captions_per_s": rates,
            "ratio_defaults": round(rates["defaults"] / rates["off"], 3),
            "ratio_every_event": round(rates["every_event"] / rates["off"], 3),
            "rss_mb_before": rss_before, "rss_mb_after": rss_after,
            "rss_growth_mb": round(rss_after["rss"] - rss_before["rss"], 1) if rss_before and rss_after else None,
            "history_stats": stats}


def demo_hour(params: dict, tmp: Path) -> dict:
    """Two simulated hours of the demo's stream through the history at its defaults: events kept, bytes
    written by the writer thread (write() calls: WAL and checkpoints) in the first hour (which spends the
    budgets' bursts) and the second (steady), the store's size."""
    captioner = Captioner.from_path(params["bundle"], 1)
    scenes = [scene_at(BENCH_SCENES_SEED + 1, i) for i in range(params["frames"] * 4)]
    captioned = []
    for scene in scenes:
        image = captioner.resize(scene.image)
        captioned.append((image, captioner.caption(image)))
    now = [0.0]
    service = HistoryService(HistoryConfig(explain=[]), tmp / "demo" / store.FILE_NAME, "bench",
                             CameraTopics("bench", "bench"), lambda *a, **k: True, captioner.bundle.name,
                             clock=lambda: now[0])
    service.start()
    start = time.time() - 2 * 3600
    frames = int(3600 * DEMO_RATE)
    written = []
    for i in range(2 * frames):
        now[0] = i / DEMO_RATE
        image, result = captioned[i % len(captioned)]
        service.observe(CachedFrame(i + 1, start + now[0], image, result))
        while service.writer.status()["queue_depth"]:  # as in real time, the writer keeps pace
            time.sleep(0.002)
        if i + 1 == frames:
            time.sleep(1.0)  # the hour's last commit
            written.append(service.stats()["bytes_written"])
    service.stop(timeout=30)
    stats = service.stats()
    written.append(stats["bytes_written"] - written[0])
    path = tmp / "demo" / store.FILE_NAME
    size = sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
    con = sqlite3.connect(path)
    frame_sizes = [row[0] for row in con.execute("SELECT length(png) FROM frames")]
    thumb_sizes = [row[0] for row in con.execute("SELECT length(thumbnail) FROM events")]
    con.close()
    return {"frames": 2 * frames, "events_seen": stats["events_seen"], "events_stored": stats["events_stored"],
            "frames_kept": stats["frames_kept"], "bytes_written_first_hour": written[0],
            "bytes_written_second_hour": written[1], "mb_written_per_day": round(written[1] * 24 / 1e6, 1),
            "store_bytes": size,
            "lossless_frame_bytes_mean": int(np.mean(frame_sizes)) if frame_sizes else None,
            "thumbnail_bytes_mean": int(np.mean(thumb_sizes)) if thumb_sizes else None}


def synthetic_caption(rng: np.random.Generator) -> str:
    """A caption in the shipped model's words."""
    def thing():
        return f"{rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    kind = rng.integers(3)
    if kind == 0:
        return f"a {thing()}"
    if kind == 1:
        return f"a {thing()} {rng.choice(['left of', 'above'])} a {thing()}"
    return f"{rng.choice(['two', 'three'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}s"


def full_store(params: dict, tmp: Path) -> dict:
    """``params["events"]`` synthetic events (100,000 by default; real thumbnails, 288-wide features, no
    lossless frames): inserts/s, bytes per event, text and similar-to query times."""
    count = params["events"]
    rng = np.random.default_rng(7)
    thumbs = [encode_thumbnail(scene_at(BENCH_SCENES_SEED, i).image, 128) for i in range(32)]
    path = tmp / "full" / store.FILE_NAME
    con = store.connect(path)
    start = time.time() - 6 * 86400
    insert_s = 0.0
    for first in range(0, count, INSERT_BATCH):
        events = []
        for i in range(first, min(count, first + INSERT_BATCH)):
            ts = start + i * 5.0
            events.append((Event(int(ts * 1000), ts, ts + 5.0, synthetic_caption(rng), [1, 2, 3], [], -0.5, 10, i,
                                 float(rng.random()), bool(rng.random() < 0.02),
                                 features=rng.normal(size=288).astype(np.float32)), thumbs[i % len(thumbs)]))
        began = time.perf_counter()
        con.execute("BEGIN")
        for event, thumb in events:
            store.insert_event(con, event, "bench", thumb, None)
        con.execute("COMMIT")
        insert_s += time.perf_counter() - began
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(path)
    con.close()

    reader = store.connect(path, create=False)
    index = SimilarityIndex()
    words = list(COLOURS + SHAPES + SIZES)
    text_ms, text_cpu_ms = [], []
    for n in range(params["queries"]):
        text = str(rng.choice(words)) if n % 2 else f'"{rng.choice(COLOURS)} {rng.choice(SHAPES)}"'
        began, began_cpu = time.perf_counter(), time.process_time()
        search(reader, index, parse_request(json.dumps({"text": text, "limit": 20}).encode(), 100))
        text_ms.append((time.perf_counter() - began) * 1e3)
        text_cpu_ms.append((time.process_time() - began_cpu) * 1e3)
    ids = [row[0] for row in reader.execute("SELECT id FROM events ORDER BY random() LIMIT ?", (params["queries"],))]
    began = time.perf_counter()
    index.refresh(reader)
    load_ms = (time.perf_counter() - began) * 1e3
    similar_ms, similar_cpu_ms = [], []
    for event_id in ids:
        began, began_cpu = time.perf_counter(), time.process_time()
        search(reader, index, parse_request(json.dumps({"similar": event_id, "limit": 20}).encode(), 100))
        similar_ms.append((time.perf_counter() - began) * 1e3)
        similar_cpu_ms.append((time.process_time() - began_cpu) * 1e3)
    reader.close()
    return {"events": count, "inserts_per_s": round(count / insert_s), "store_bytes": size,
            "bytes_per_event": round(size / count), "text_query_ms": _percentiles(text_ms),
            "similar_query_ms": _percentiles(similar_ms), "similar_index_load_ms": round(load_ms, 1),
            "text_query_cpu_ms": _percentiles(text_cpu_ms), "similar_query_cpu_ms": _percentiles(similar_cpu_ms),
            "load_average": os.getloadavg(),
            "similar_index_mb": round(index.vectors.nbytes / 2**20, 1)}


def explain_priority(params: dict, tmp: Path) -> dict:
    """A user's explain requests (gradcam + saliency, all words, the latest frame) answered while a new
    event comes every ``EVENT_EVERY_S`` and is explained in the background (history.explain gradcam),
    alternating with requests while background explanations are off; the answers' total_ms."""
    cfg = AppConfig.model_validate({
        "model": {"bundle": params["bundle"], "threads": 1}, "snapshot": {"enabled": False},
        "history": {"dir": str(tmp / "priority"), "explain": ["gradcam"], "max_events_per_hour": 10**9}})
    daemon = build_daemon(cfg, publisher=OfflinePublisher(cfg))
    service = daemon.explain_service
    answers: dict[str, dict] = {}
    daemon.publisher.observer = lambda topic, payload: (
        answers.__setitem__(json.loads(payload)["id"], json.loads(payload)) if topic.endswith("/response") else None)
    scenes = [scene_at(BENCH_SCENES_SEED + 2, i) for i in range(params["frames"])]
    stop = threading.Event()

    def caption_stream() -> None:  # the demo's rate; the scene (and so the caption) changes every EVENT_EVERY_S
        started, seq = time.monotonic(), 0
        while not stop.wait(1.0 / DEMO_RATE):
            seq += 1
            scene = scenes[int((time.monotonic() - started) / EVENT_EVERY_S) % len(scenes)]
            daemon.loop.process(Frame(seq, scene.image, time.time(), time.monotonic(), 0.0, scene.caption))
    streamer = threading.Thread(target=caption_stream, daemon=True)
    streamer.start()

    def ask(request_id: str) -> float | None:
        service.handle_request(json.dumps({"id": request_id, "frame": "latest", "methods": ["gradcam", "saliency"],
                                           "words": "all"}).encode())
        deadline = time.monotonic() + EXPLAINER_START_TIMEOUT_S
        while request_id not in answers and time.monotonic() < deadline:
            time.sleep(0.005)
        answer = answers.get(request_id)
        return answer["timings_ms"]["total_ms"] if answer and answer["status"] == "ok" else None

    try:
        time.sleep(1.0)
        if ask("warm-up") is None:
            return {"error": f"no explanation: {answers.get('warm-up')}"}
        times: dict[str, list[float]] = {"background_off": [], "background_on": []}
        for n in range(2 * params["explain_requests"]):
            condition = "background_on" if n % 2 else "background_off"
            service.background_methods = ["gradcam"] if condition == "background_on" else []
            time.sleep(EVENT_EVERY_S * 0.6)  # requests land at any point of the background work
            took = ask(f"user-{n}")
            if took is not None:
                times[condition].append(took)
        kept = daemon.history.stats()["explanations_kept"]
    finally:
        stop.set()
        streamer.join(5)
        daemon.close()
    medians = {k: round(float(np.median(v)), 1) for k, v in times.items() if v}
    return {"answer_ms": {k: _percentiles(v) for k, v in times.items() if v},
            "ratio_median": round(medians["background_on"] / medians["background_off"], 3)
            if len(medians) == 2 else None,
            "events_explained_in_background": kept, "event_every_s": EVENT_EVERY_S}


def history_task(params: dict) -> dict:
    """Every figure of the timeline's bench (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="explaincam-history-bench-") as tmp:
        folder = Path(tmp)
        return {"capture": caption_rates(params, folder), "demo_hour": demo_hour(params, folder),
                "store": full_store(params, folder), "explain_priority": explain_priority(params, folder)}


if __name__ == "__main__":
    serve_task(history_task)
