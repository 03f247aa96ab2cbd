"""``run``, ``run --demo`` and ``bench`` assemble the daemon with one function (``daemon.app.build_daemon``).

Shown the way a user would see it: each of the three publishes the same topics. ``run`` and the
demo run against a real Mosquitto; the bench's capture child (a real ``python -m
bench.capture_task`` process, no broker) reports the topics its daemon published. The bench
feeds frames to the caption loop itself, so what only a running, connected daemon publishes
(availability on connect, the stats timer, the camera's state) is the one difference allowed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import yaml

from convert.bench.child import run_child
from daemon.contract import CameraTopics, PrefixTopics
from daemon.config import AppConfig
from daemon.discovery import discovery_node
from tests.conftest import CAMERA, PREFIX, REPO, SHIPPED_BUNDLE, daemon_config, wait_until

TOPICS = CameraTopics.for_camera(PREFIX, CAMERA)
STATS = PrefixTopics(PREFIX).stats
RUNNING_ONLY = {TOPICS.availability, STATS, TOPICS.source, TOPICS.claim}  # connection, stats timer, camera state, twin watch


def live_topics(collector) -> set[str]:
    """Topics published while the collector listened (retained copies from before are left out)."""
    return {m.topic for m in collector.messages if not m.retain}


def wait_for_captions_and_stats(collector, daemon_log) -> None:
    """Until the daemon has published captions and a stats message, and a second more of everything."""
    wait_until(lambda: len([m for m in collector.messages if m.topic == TOPICS.caption]) >= 3
               and any(m.topic == STATS for m in collector.messages), 90, interval=0.2,
               message=f"captions and stats; log:\n{daemon_log()[-2000:]}")
    count = len(collector.messages)
    wait_until(lambda: len(collector.messages) > count + 3, 10, interval=0.2, message="more messages")


def test_run_demo_and_bench_publish_the_same_topics(tmp_path, mosquitto, collect, daemon_process):
    config = daemon_config(tmp_path, mosquitto.port, camera={"name": CAMERA})
    run_watch = collect(mosquitto.port, "#")
    daemon = daemon_process(config)
    wait_for_captions_and_stats(run_watch, daemon.log)
    assert daemon.stop() < 5 and daemon.process.returncode == 0
    run_topics = live_topics(run_watch)
    run_watch.close()

    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / "config.yaml").write_text(yaml.safe_dump(
        {"camera": {"name": CAMERA}, "model": {"threads": 1},
         "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "stats_interval_s": 1}}))
    demo_watch = collect(mosquitto.port, "#")
    output = demo_dir / "demo.out"
    with open(output, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--demo", "-c", "config.yaml"],
                                cwd=demo_dir, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_captions_and_stats(demo_watch, lambda: output.read_text(errors="replace"))
        demo.send_signal(signal.SIGINT)
        assert demo.wait(10) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "private Mosquitto" not in output.read_text()  # a broker answered: the demo used it
    demo_topics = live_topics(demo_watch)

    bench = run_child("capture", {"bundle": str(SHIPPED_BUNDLE), "frames": 2, "seconds": 0.3, "backends": []}, 300)
    assert "error" not in bench, bench
    bench_camera = AppConfig().camera.name  # the bench runs the default config
    renames = {CameraTopics.for_camera(PREFIX, bench_camera).base + "/": TOPICS.base + "/",
               discovery_node(PREFIX, bench_camera) + "/": discovery_node(PREFIX, CAMERA) + "/"}
    bench_topics = {next((topic.replace(old, new) for old, new in renames.items() if old in topic), topic)
                    for topic in bench["published_topics"]}

    assert TOPICS.caption in run_topics and any(t.startswith("homeassistant/") for t in run_topics)
    assert demo_topics == run_topics
    assert run_topics - bench_topics == RUNNING_ONLY
    assert bench_topics <= run_topics, bench_topics - run_topics


def test_an_explainer_backend_that_cannot_run_here_is_said_at_start(tmp_path, mosquitto, collect, daemon_process):
    layer = "not_the_exported_layer"  # the shipped explainer graph computes Grad-CAM at another layer
    watch = collect(mosquitto.port, TOPICS.caption)
    daemon = daemon_process(daemon_config(tmp_path, mosquitto.port, explain={"backend": "litert", "gradcam_layer": layer}))
    watch.wait_for(TOPICS.caption, timeout=60)
    log = daemon.log()
    assert "explanations on this box will fail: explain backend litert:" in log and repr(layer) in log
    assert daemon.stop() < 5 and daemon.process.returncode == 0
