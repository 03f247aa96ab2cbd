"""The event store's faults under the real daemon: deleted, overwritten, a full disk, a read-only
state folder, SIGKILL in the middle of writes. Each is logged once; captions go on."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import time

from tests.conftest import CAPTION, START_TIMEOUT, STATS, daemon_config, wait_until
from tests.faults.probes import figures, live_captions
from tests.history.helpers import HistoryAsker

EVERY_EVENT = {"max_events_per_hour": 1_000_000, "max_frame_mb_per_day": 100_000, "explain": []}
UNWRITABLE = "/sys/kernel"  # a folder even root cannot create files in (sysfs)


def start(tmp_path, mosquitto, collect, daemon_process, history=EVERY_EVENT):
    config = daemon_config(tmp_path, mosquitto.port, history=history)
    watcher = collect(mosquitto.port, CAPTION, STATS, "explaincam/+/history/event")
    daemon = daemon_process(config)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    return daemon, watcher, tmp_path / "snapshot" / "history" / "history.sqlite"


def stored_ids(asker, since=0.0):
    answer = asker.ask({"since": since, "limit": 100, "thumbnails": False})
    if answer is not None and answer.get("error", {}).get("code") == "store_unavailable":
        return []  # the moment between a store's loss and its successor's creation
    assert answer is not None and answer["status"] == "ok", answer
    return [e["event_id"] for e in answer["events"]]


def test_store_deleted_then_overwritten_is_recreated_each_time_once(tmp_path, mosquitto, collect, daemon_process):
    daemon, watcher, store = start(tmp_path, mosquitto, collect, daemon_process)
    asker = HistoryAsker(mosquitto.port)
    wait_until(lambda: len(stored_ids(asker)) >= 3, 20, message="events stored")
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{store}{suffix}")
    deleted_at = time.time()
    wait_until(lambda: store.exists() and stored_ids(asker, deleted_at + 0.5), 20, message="events after the delete")
    old = stored_ids(asker)
    assert all(i / 1000 >= deleted_at - 1 for i in old), "events from before the delete came back"

    with open(store, "r+b") as fh:  # in place: same inode, garbage where the header was
        fh.write(os.urandom(8192))
    overwritten_at = time.time()
    wait_until(lambda: stored_ids(asker, overwritten_at + 0.5), 20, message="events after the overwrite")
    with sqlite3.connect(store) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    captions = len(live_captions(watcher, time.monotonic() - 2))
    log = daemon.log()
    assert log.count("was deleted under the running daemon") == 1, log
    assert log.count("was replaced or overwritten under the running daemon") == 1, log
    assert captions >= 3 and daemon.process.poll() is None
    asker.close()


def test_full_disk_drops_events_with_one_log_line_and_captions_go_on(tmp_path, mosquitto, collect, daemon_process):
    limit = 3 * 2**20  # files the daemon writes cannot grow past 3 MB: the store fills its "disk"
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        daemon, watcher, store = start(tmp_path, mosquitto, collect, daemon_process)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)

    def dropped():
        stats = [m.json() for m in watcher.on(STATS)]
        return stats and stats[-1].get("history", {}).get("dropped_write_failed", 0) >= 5 and stats[-1]
    stats = wait_until(dropped, 60, interval=0.5, message="events dropped on the full disk")
    full_at = time.monotonic()
    time.sleep(3.0)
    captions = len(live_captions(watcher, full_at))
    log = daemon.log()
    assert log.count("cannot write the event store") == 1, log
    assert captions >= 10, f"only {captions} captions in 3 s after the disk filled"
    assert daemon.process.poll() is None
    figures("history_disk_full", events_stored=stats["history"]["events_stored"],
            dropped=stats["history"]["dropped_write_failed"], captions_after=captions)


def test_read_only_state_folder_turns_history_off_with_one_line(tmp_path, mosquitto, collect, daemon_process):
    daemon, watcher, _ = start(tmp_path, mosquitto, collect, daemon_process,
                               history={"dir": UNWRITABLE, "max_events_per_hour": 1000})
    wait_until(lambda: len(live_captions(watcher)) >= 10, 30, message="captions")
    log = daemon.log()
    assert log.count("history is off") == 1 and UNWRITABLE in log, log
    assert "Traceback" not in log and daemon.process.poll() is None


def test_sigkill_during_writes_leaves_a_sound_store_missing_at_most_the_last_second(
        tmp_path, mosquitto, collect, daemon_process):
    daemon, watcher, store = start(tmp_path, mosquitto, collect, daemon_process)
    wait_until(lambda: len(watcher.on("explaincam/testcam/history/event")) >= 15, 30, message="events announced")
    daemon.process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    daemon.process.wait(10)
    announced = {json.loads(m.payload)["event_id"] for m in watcher.on("explaincam/testcam/history/event")}
    with sqlite3.connect(store) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = {row[0] for row in con.execute("SELECT id FROM events")}
    lost = sorted(announced - kept)
    lost_age = killed_at - lost[0] / 1000 if lost else 0.0
    figures("history_sigkill", announced=len(announced), kept=len(announced & kept), lost=len(lost),
            oldest_lost_s_before_kill=round(lost_age, 2))
    assert len(announced & kept) >= 10
    assert lost_age <= 1.5, f"lost events started up to {lost_age:.2f} s before the kill: {lost}"


def test_state_folder_swapped_away_and_back_keeps_the_store(tmp_path, mosquitto, collect, daemon_process):
    """The snapshot folder (and the store in it) replaced by one nothing can be written to, then put back:
    history pauses with one line, and goes on in the same store, its events kept."""
    daemon, watcher, store = start(tmp_path, mosquitto, collect, daemon_process)
    asker = HistoryAsker(mosquitto.port)
    wait_until(lambda: len(stored_ids(asker)) >= 3, 20, message="events stored")
    before = set(stored_ids(asker))
    folder, kept = tmp_path / "snapshot", tmp_path / "snapshot-kept"
    folder.rename(kept)
    folder.symlink_to(UNWRITABLE, target_is_directory=True)
    time.sleep(3.0)
    folder.unlink()
    kept.rename(folder)
    back_at = time.time()
    wait_until(lambda: stored_ids(asker, back_at + 0.5), 20, message="events after the folder came back")
    log = daemon.log()
    assert before <= set(stored_ids(asker)), "events from before were lost"
    assert log.count("cannot open an event store") == 1 and log.count("writing the event store") == 1, log
    assert daemon.process.poll() is None
    asker.close()
