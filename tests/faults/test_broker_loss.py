"""The broker dies (SIGKILL) three times while the daemon captions, and comes back each time
(Mosquitto over MQTT 5, amqtt over MQTT 3.1.1).

The daemon must not crash, must keep captioning while the broker is away (the snapshot
folder shows it), and within 5 s of each restart its captions flow again, the fresh
broker holds ``online`` as the retained availability, and the stats count the reconnect.
"""

from __future__ import annotations

import json
import time

from tests.conftest import AVAILABILITY, CAPTION, START_TIMEOUT, STATS, daemon_config, wait_until
from tests.faults.probes import figures, live_captions

CYCLES = 3
DOWN_S = 2.0  # how long the broker stays dead each time
RESUME_LIMIT_S = 5.0


def test_broker_killed_three_times_while_captioning(tmp_path, broker, collect, daemon_process):
    daemon = daemon_process(daemon_config(tmp_path, broker.port, mqtt={"protocol": broker.protocol}))
    latest = tmp_path / "snapshot" / "latest.json"
    first = collect(broker.port, CAPTION, protocol=broker.paho_protocol)
    first.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    wait_until(latest.exists, 5, message="the first snapshot")
    resumed, captioned_offline, availability = [], [], []
    for cycle in range(1, CYCLES + 1):
        before = json.loads(latest.read_text())["frame_id"]
        broker.kill()
        # while the broker is dead the daemon goes on captioning into the snapshot folder
        time.sleep(DOWN_S)
        offline = json.loads(latest.read_text())["frame_id"] - before
        captioned_offline.append(offline)
        assert offline >= 3, f"cycle {cycle}: only {offline} frames captioned without a broker"
        assert daemon.process.poll() is None, daemon.log()
        broker.start()
        back = time.monotonic()
        watcher = collect(broker.port, CAPTION, AVAILABILITY, STATS, protocol=broker.paho_protocol)
        caption = watcher.wait_for(CAPTION, lambda m: not m.retain and m.json()["frame_id"] > before,
                                   timeout=RESUME_LIMIT_S + 5)
        resumed.append(round(caption.at - back, 2))
        assert caption.at - back < RESUME_LIMIT_S, f"cycle {cycle}: captions resumed after {caption.at - back:.1f} s"
        watcher.wait_for(AVAILABILITY, timeout=2)
        stats = watcher.wait_for(STATS, lambda m: m.json()["reconnects"] == cycle, timeout=5).json()
        assert stats["mqtt"]["state"] == "connected" and stats["mqtt"]["last_error"] is None
        states = [m.payload.decode() for m in watcher.on(AVAILABILITY)]
        availability.append(states)
        assert set(states) == {"online"}, f"cycle {cycle}: availability {states}"
    # a client that joins now sees the daemon online, its latest caption retained, and no crash happened
    late = collect(broker.port, AVAILABILITY, CAPTION, protocol=broker.paho_protocol)
    assert late.wait_for(AVAILABILITY, timeout=5).payload == b"online"
    assert late.wait_for(CAPTION, lambda m: m.retain, timeout=5).json()["frame_id"] > 0
    assert daemon.process.poll() is None and "Traceback" not in daemon.log()
    assert len(live_captions(first)) > 0
    figures("broker_loss", cycles=CYCLES, resume_s=resumed, captioned_while_down=captioned_offline,
            availability_after=availability, reconnects=stats["reconnects"])
