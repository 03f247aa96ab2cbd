"""Stats: box readings from /proc and /sys, percentiles, rates, and the frame cache ring."""

from __future__ import annotations

import sys
import threading

import numpy as np

from daemon.captioner import CaptionResult
from daemon.framecache import CachedFrame, FrameCache
from daemon.stats import CaptionStats, percentiles, read_cpu_temperature, read_rss_bytes


def test_rss_is_read_from_proc():
    rss = read_rss_bytes()
    assert rss is not None and rss > 10 * 2**20
    assert read_rss_bytes("/nonexistent/status") is None


def test_cpu_temperature_prefers_a_cpu_zone(tmp_path):
    assert read_cpu_temperature(tmp_path) is None
    for name, kind, milli in (("thermal_zone0", "acpitz", "30000"), ("thermal_zone1", "cpu-thermal", "51234")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "temp").write_text(milli + "\n")
    assert read_cpu_temperature(tmp_path) == 51.2


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p95": None}
    assert percentiles(list(range(1, 101))) == {"p50": 50.5, "p95": 95.05}


def test_caption_stats_snapshot():
    now = [0.0]
    stats = CaptionStats(clock=lambda: now[0])
    for _ in range(10):
        now[0] += 0.5
        stats.record_caption(40.0)
    stats.record_skip()
    snap = stats.snapshot(window_s=30, camera="cam")
    assert snap["fps"] == 2.0 and snap["captions"] == 10 and snap["skipped_unchanged"] == 1
    assert snap["latency_ms"] == {"p50": 40.0, "p95": 40.0} and snap["camera"] == "cam"
    assert snap["rss_mb"] > 0 and "cpu_temp_c" in snap and "tensorflow_loaded" in snap


def cached(frame_id: int) -> CachedFrame:
    return CachedFrame(frame_id, float(frame_id), np.zeros((4, 4, 3), np.uint8),
                       CaptionResult("a red circle", [1, 2, 3], ["a", "red", "circle"], -0.1))


def test_frame_cache_keeps_the_last_n_frames():
    cache = FrameCache(3)
    assert cache.latest() is None and cache.get(1) is None
    for i in range(1, 6):
        cache.put(cached(i))
    assert cache.frame_ids() == [3, 4, 5] and len(cache) == 3
    assert cache.get(2) is None and cache.get(4).frame_id == 4 and cache.latest().frame_id == 5


def test_frame_cache_readers_never_fail_or_see_a_broken_ring_while_the_capture_loop_writes():
    """The capture loop puts frames while the MQTT thread and the explain service read the ring.

    Threads switch every microsecond here, so a reader that runs between two steps of a
    put (or iterates the ring while it changes) shows: without the lock readers get
    ``RuntimeError: OrderedDict mutated during iteration`` and rings of 9 frames.
    """
    cache = FrameCache(8)
    failures, reads = [], []
    writing = threading.Event()

    def read_constantly():
        done = 0
        while writing.is_set():
            try:
                ids = cache.frame_ids()
                latest = cache.latest()
                oldest = cache.get(ids[0]) if ids else None
            except Exception as exc:  # noqa: BLE001 - any failure of a reader is what this test looks for
                failures.append(repr(exc))
                continue
            if ids and (len(ids) > 8 or ids != list(range(ids[0], ids[0] + len(ids)))):
                failures.append(f"ring {ids}")
            if latest is not None and ids and latest.frame_id < ids[-1]:
                failures.append(f"latest {latest.frame_id} older than the ring's newest {ids[-1]}")
            if oldest is not None and oldest.frame_id != ids[0]:
                failures.append(f"get({ids[0]}) gave frame {oldest.frame_id}")
            done += 1
        reads.append(done)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    writing.set()
    readers = [threading.Thread(target=read_constantly) for _ in range(3)]
    try:
        for reader in readers:
            reader.start()
        for frame_id in range(1, 20_001):
            cache.put(cached(frame_id))
    finally:
        writing.clear()
        for reader in readers:
            reader.join()
        sys.setswitchinterval(previous)
    assert failures == [], failures[:5]
    assert len(reads) == 3 and min(reads) > 100, reads  # the readers really ran beside the writer
    assert cache.frame_ids() == list(range(19_993, 20_001))
