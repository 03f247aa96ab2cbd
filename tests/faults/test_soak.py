"""Soak: 20,000 frames through the real daemon's caption loop, watching its memory, threads and descriptors.

Frames are generated scenes (``explaincam scenes`` images, read by the images source at
a high rate); every frame is captioned by the int8 encoder and the numpy decoder, cached
and published (change gate off, no rate limit). The JPEG per caption is left out of MQTT
(it would double the time per frame; the snapshot folder still gets it every second) so
that 20,000 frames fit in the suite's time. Figures are read from /proc of the daemon
process itself: RSS must grow less than 20 MB from the warm-up to the end, and the number
of threads and open file descriptors must not grow at all.
"""

from __future__ import annotations

import time

import cv2

from daemon.scenes import scene_at
from tests.conftest import CAMERA, START_TIMEOUT, STATS, daemon_config, wait_until
from tests.faults.probes import fd_targets, figures, rss_mb, steady, thread_count

FRAMES = 20_000
WARM_UP = 2_000  # frames before the baseline readings: caches and allocator pools fill first
SCENES = 24
SOURCE_FPS = 400  # a little above what the loop manages on 2 cores, so it never waits long for a frame
RSS_GROWTH_LIMIT_MB = 20.0
SOAK_TIMEOUT = 400  # 20,000 frames at 4-15 ms each, on a busy 2-core box


def test_soak_20000_frames_without_leaks(tmp_path, mosquitto, collect, daemon_process):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(SCENES):
        cv2.imwrite(str(folder / f"scene{i:03d}.png"), cv2.cvtColor(scene_at(23, i).image, cv2.COLOR_RGB2BGR))
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": 0, "change_threshold": 0},
                           camera={"name": CAMERA, "source": {"type": "images", "path": str(folder),
                                                              "fps": SOURCE_FPS}},
                           mqtt={"publish_jpeg": False, "stats_interval_s": 1}, snapshot={"min_interval_s": 1})
    daemon = daemon_process(config)
    pid = daemon.process.pid
    watcher = collect(mosquitto.port, STATS)

    def captions() -> int:
        """Frames captioned so far, as the newest stats message says."""
        stats = watcher.on(STATS)
        return stats[-1].json()["captions"] if stats else 0

    wait_until(lambda: captions() >= WARM_UP, START_TIMEOUT + 60, interval=0.2, message=f"{WARM_UP} frames")
    warm = {"frames": captions(), "rss_mb": rss_mb(pid), "threads": steady(thread_count, pid),
            "fds": steady(fd_targets, pid), "at": time.monotonic()}
    rss_readings = [warm["rss_mb"]]

    def done() -> bool:
        rss_readings.append(rss_mb(pid))
        assert daemon.process.poll() is None, daemon.log()[-3000:]
        return captions() >= FRAMES
    wait_until(done, SOAK_TIMEOUT, interval=1.0, message=f"{FRAMES} frames")
    end = {"frames": captions(), "rss_mb": rss_mb(pid), "threads": steady(thread_count, pid),
           "fds": steady(fd_targets, pid), "at": time.monotonic()}
    stats = watcher.on(STATS)[-1].json()
    rate = (end["frames"] - warm["frames"]) / (end["at"] - warm["at"])
    growth = end["rss_mb"] - warm["rss_mb"]
    figures("soak", frames=end["frames"], frames_per_s=round(rate, 1), errors=stats["errors"],
            skipped=stats["skipped_unchanged"], rss_mb_warm=round(warm["rss_mb"], 1),
            rss_mb_end=round(end["rss_mb"], 1), rss_mb_peak=round(max(rss_readings), 1),
            rss_growth_mb=round(growth, 1), threads_warm=warm["threads"], threads_end=end["threads"],
            fds_warm=len(warm["fds"]), fds_end=len(end["fds"]), mqtt_dropped=stats["mqtt"]["dropped"])
    assert stats["errors"] == 0 and stats["skipped_unchanged"] == 0
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.1f} MB over {end['frames'] - warm['frames']} frames"
    assert end["threads"] <= warm["threads"], f"threads: {warm['threads']} -> {end['threads']}"
    assert len(end["fds"]) <= len(warm["fds"]), f"file descriptors: {warm['fds']} -> {end['fds']}"
    assert daemon.stop() < 5 and daemon.process.returncode == 0
    assert "Traceback" not in daemon.log()
