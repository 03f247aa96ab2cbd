"""A request flood: 100 explain requests per second for 10 s against the real daemon.

Every request must be answered, ``ok`` (explained by the explainer process) or ``busy``
(the bounded queue was full), the capture process's memory must stay bounded, and the
caption rate during the flood must be at least 80% of the rate before it.
"""

from __future__ import annotations

import time

from tests.conftest import CAPTION, START_TIMEOUT, child_pids, daemon_config, wait_until
from tests.faults.probes import Requester, figures, live_captions, rss_mb

RATE = 100  # requests per second
SECONDS = 10
CAPTION_RATE = 5.0
BASELINE_S = 4.0
EXPLAIN_TIMEOUT = 180  # TensorFlow import + model load + the queued explanations, niced, on a busy box
RSS_GROWTH_LIMIT_MB = 40.0
REQUEST = {"frame": "latest", "methods": ["gradcam"], "words": [0]}


def test_request_flood_is_answered_while_captions_keep_their_rate(tmp_path, mosquitto, collect, daemon_process):
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": CAPTION_RATE},
                           camera={"name": "testcam", "source": {"type": "scenes", "fps": 2 * CAPTION_RATE}},
                           explain={"idle_exit_s": 60, "threads": 1, "queue_size": 4})
    daemon = daemon_process(config)
    watcher = collect(mosquitto.port, CAPTION)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port)
    try:
        time.sleep(1.0)  # past the start-up
        baseline_from = time.monotonic()
        rss_before = rss_mb(daemon.process.pid)
        time.sleep(BASELINE_S)
        baseline = len(live_captions(watcher, baseline_from)) / BASELINE_S

        total = RATE * SECONDS
        rss_peak = rss_before
        started = time.monotonic()
        for n in range(total):
            delay = started + n / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            requester.send({"id": f"flood-{n}", **REQUEST}, f"flood-{n}".encode())
            if n % RATE == 0:
                rss_peak = max(rss_peak, rss_mb(daemon.process.pid))
        sent_in = time.monotonic() - started
        time.sleep(max(0.0, SECONDS - sent_in))
        flood_rate = len([m for m in live_captions(watcher, started) if m.at <= started + SECONDS]) / SECONDS
        rss_peak = max(rss_peak, rss_mb(daemon.process.pid))

        def answered():
            return sum(1 for n in range(total) if f"flood-{n}".encode() in requester.replies)
        wait_until(lambda: answered() == total, EXPLAIN_TIMEOUT, interval=0.5,
                   message=f"answers to all {total} requests")
        answers = {n: requester.wait_reply(f"flood-{n}".encode(), 0) for n in range(total)}
        rss_after = rss_mb(daemon.process.pid)
    finally:
        requester.close()
    statuses = {n: a["status"] for n, a in answers.items()}
    assert all(a["id"] == f"flood-{n}" for n, a in answers.items())
    assert set(statuses.values()) <= {"ok", "busy"}, {s for s in statuses.values()}
    ok = [n for n, s in statuses.items() if s == "ok"]
    busy_latency = sorted(requester.replies[f"flood-{n}".encode()][0] - (started + n / RATE)
                          for n, s in statuses.items() if s == "busy")
    assert ok, "no request was explained"
    for n in ok:
        assert answers[n]["words"][0]["index"] == 0 and "gradcam" in answers[n]["words"][0]
    growth = max(rss_peak, rss_after) - rss_before
    figures("request_flood", sent=total, send_rate=round(total / sent_in, 1), answered=len(answers), ok=len(ok),
            busy=len(busy_latency), busy_answer_p50_ms=round(busy_latency[len(busy_latency) // 2] * 1e3, 1),
            busy_answer_max_ms=round(busy_latency[-1] * 1e3, 1), captions_per_s_before=baseline,
            captions_per_s_during=flood_rate, rss_mb_before=round(rss_before, 1), rss_mb_peak=round(rss_peak, 1),
            rss_mb_after=round(rss_after, 1))
    assert total / sent_in >= RATE * 0.95, f"the test only sent {total / sent_in:.0f} requests/s"
    assert flood_rate >= 0.8 * baseline, f"captions fell from {baseline:.1f}/s to {flood_rate:.1f}/s"
    assert growth < RSS_GROWTH_LIMIT_MB, f"the capture process grew {growth:.1f} MB during the flood"
    # the explainer process ends with the daemon
    children = child_pids(daemon.process.pid)
    assert daemon.stop() < 5 and daemon.process.returncode == 0
    wait_until(lambda: not any(_alive(pid) for pid in children), 10, message="the explainer process to end")
    assert "Traceback" not in daemon.log()


def _alive(pid: int) -> bool:
    """Whether a process still runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
