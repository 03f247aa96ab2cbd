"""The explainer process meets the OOM killer and the daemon meets signals.

- The idle explainer (what the OOM killer picks: it holds the model) is SIGKILLed: the
  next request must still be answered (a process killed while it waited for a job used to
  leave the job queue locked for good: every later request went unanswered).
- SIGHUP (a closed terminal, ``systemctl kill -s HUP``: every process of the daemon gets
  it) is logged and ignored: the daemon and its explainer go on.
- SIGTERM with a request being explained: the request is answered ``shutting_down`` and
  no explainer process is left. A second SIGTERM during shutdown, or a SIGKILL of the
  daemon, leaves no explainer behind either (it used to live on as an orphan, ~1 GB).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import CAPTION, START_TIMEOUT, child_pids, daemon_config, wait_until
from tests.faults.probes import Requester, figures

EXPLAIN_TIMEOUT = 180  # TensorFlow import + model load, niced, on a busy 2-core box
QUICK = {"frame": "latest", "methods": ["gradcam"], "words": [0]}
SLOW = {"frame": "latest", "methods": ["integrated_gradients", "smoothgrad"]}  # every word, many passes
EXPLAIN = {"idle_exit_s": 600, "threads": 1, "ig_steps": 512, "smoothgrad_samples": 64}


def explainer_pids(daemon_pid: int) -> list[int]:
    """The daemon's explainer processes (spawned children; not multiprocessing's resource tracker)."""
    pids = []
    for pid in child_pids(daemon_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            pids.append(pid)
    return pids


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def start_daemon(tmp_path, mosquitto, collect, daemon_process):
    """A daemon with the explainer configured, captioning; and an MQTT 5 requester."""
    daemon = daemon_process(daemon_config(tmp_path, mosquitto.port, explain=EXPLAIN))
    collect(mosquitto.port, CAPTION).wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    return daemon, Requester(mosquitto.port)


def test_idle_explainer_killed_then_sighup_then_stop_with_a_request_pending(
        tmp_path, mosquitto, collect, daemon_process):
    daemon, requester = start_daemon(tmp_path, mosquitto, collect, daemon_process)
    try:
        requester.send({"id": "warm", **QUICK}, b"warm")
        warm = requester.wait_reply(b"warm", EXPLAIN_TIMEOUT)
        assert warm is not None and warm["status"] == "ok", daemon.log()
        [first] = explainer_pids(daemon.process.pid)

        # the OOM killer takes the idle explainer while it waits for a job
        time.sleep(1.0)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not alive(first), 5, message="the killed explainer to go")
        killed = time.monotonic()
        requester.send({"id": "after-kill", **QUICK}, b"after-kill")
        answer = requester.wait_reply(b"after-kill", EXPLAIN_TIMEOUT)
        answered_after_s = round(time.monotonic() - killed, 1)
        assert answer is not None and answer["status"] == "ok", daemon.log()
        assert "was killed by SIGKILL" in daemon.log()
        [second] = explainer_pids(daemon.process.pid)
        assert second != first

        # SIGHUP to every process of the daemon (as `systemctl kill -s HUP` and a closed terminal send it):
        # logged, ignored; the daemon and its explainer go on
        for pid in [daemon.process.pid, *child_pids(daemon.process.pid)]:
            os.kill(pid, signal.SIGHUP)
        time.sleep(2.0)
        assert daemon.process.poll() is None, daemon.log()
        assert alive(second) and daemon.log().count("SIGHUP ignored") == 1
        requester.send({"id": "after-hup", **QUICK}, b"after-hup")
        assert requester.wait_reply(b"after-hup", 60)["status"] == "ok"

        # SIGTERM while a request is being explained: it is answered, and no explainer is left
        requester.send({"id": "pending", **SLOW}, b"pending")
        wait_until(lambda: "explain request 'pending' queued" in daemon.log(), 10, message="the request queued")
        time.sleep(1.0)
        stop_s = daemon.stop(signal.SIGTERM, timeout=15)
        pending = requester.wait_reply(b"pending", 5)
        assert pending is not None, "the pending request got no answer"
        assert (pending["status"], pending["error"]["code"]) == ("error", "shutting_down"), pending
        wait_until(lambda: not alive(second), 3, message="the explainer to end with the daemon")
        assert daemon.process.returncode == 0 and "Traceback" not in daemon.log()
    finally:
        requester.close()
    figures("explainer_killed_idle", first_answer_with_load_s=round(warm["timings_ms"]["total_ms"] / 1e3, 1),
            answered_after_kill_s=answered_after_s, sighup="ignored",
            stop_with_pending_s=round(stop_s, 2), pending_answer=pending["error"]["code"])


def test_double_sigterm_or_sigkill_of_the_daemon_leaves_no_explainer(tmp_path, mosquitto, collect, daemon_process):
    gone_after = {}
    for how in ("double SIGTERM", "SIGKILL"):
        daemon, requester = start_daemon(tmp_path / how.replace(" ", "-"), mosquitto, collect, daemon_process)
        try:
            requester.send({"id": "busy", **SLOW}, b"busy")
            # the explainer is answering (importing TensorFlow, loading, explaining) when the daemon ends
            [explainer] = wait_until(lambda: explainer_pids(daemon.process.pid), 30, message="an explainer")
            time.sleep(3.0)
            started = time.monotonic()
            if how == "SIGKILL":
                daemon.process.kill()
            else:
                daemon.process.send_signal(signal.SIGTERM)
                time.sleep(0.1)
                daemon.process.send_signal(signal.SIGTERM)
            daemon.process.wait(10)
            wait_until(lambda: not alive(explainer), 5, interval=0.05, message=f"no explainer after {how}")
            gone_after[how] = round(time.monotonic() - started, 2)
        finally:
            requester.close()
    figures("daemon_ended_mid_explanation", explainer_gone_after_s=gone_after)
