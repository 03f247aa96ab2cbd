"""Stats: box readings from /proc and /sys, percentiles, rates, and the frame cache ring."""

from __future__ import annotations

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


def test_frame_cache_is_thread_safe():
    cache = FrameCache(8)
    def writer(start):
        for i in range(start, start + 500):
            cache.put(cached(i))
            cache.latest()
    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8
