"""MQTT faults an operator's box meets: a retained request, twin boxes, a hanging broker.

- An explain request someone published with the retain flag must be answered at most
  once, never again at every (re)connect or restart (MQTT 5 and 3.1.1 daemons).
- Two daemons started from copies of one config on one box (same host name, same camera,
  different snapshot folders) must not take each other's MQTT session over; two that are
  *configured* with one client id get the cause named in the log.
- While the broker hangs (alive, silent) the stats must not count the captions handed to
  the MQTT library as delivered: they are pending, then dropped when the keep-alive gives up
  (Mosquitto over MQTT 5 and amqtt over MQTT 3.1.1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import CAPTION, REQUEST, RESPONSE, START_TIMEOUT, STATS, daemon_config, wait_until
from tests.faults.probes import figures, live_captions

REPLIES = "faults/retained-replies"
EXPLAIN_TIMEOUT = 120  # the explainer process starts for the live request, on a busy box


def publish_retained_request(port: int, request_id: str) -> None:
    """Publish one explain request with the retain flag (and a Response Topic), as a careless client would."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"careless-{request_id}", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = REPLIES
    properties.CorrelationData = request_id.encode()
    request = {"id": request_id, "frame": "latest", "methods": ["saliency"], "words": [0]}
    client.publish(REQUEST, json.dumps(request), qos=1, retain=True, properties=properties).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def client_id_of(daemon) -> str:
    """The client id the daemon says it connects with."""
    found = re.search(r"as client id (\S+)", daemon.log())
    assert found, daemon.log()
    return found.group(1)


def take_session_over(port: int, client_id: str) -> None:
    """Connect once with the daemon's client id and leave: the broker drops the daemon, which reconnects."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


def test_a_retained_request_is_never_executed_again(tmp_path, mosquitto, collect, daemon_process):
    answers = {}
    for protocol in ("5", "3.1.1"):
        watcher = collect(mosquitto.port, REPLIES, RESPONSE)
        run = tmp_path / f"mqtt{protocol}"
        config = daemon_config(run, mosquitto.port, explain={"idle_exit_s": 600, "threads": 1})
        config["mqtt"]["protocol"] = protocol
        # the retained request is on the broker before the daemon starts
        publish_retained_request(mosquitto.port, f"stale-{protocol}")
        daemon = daemon_process(config)
        collect(mosquitto.port, CAPTION).wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
        # a second retained request arrives while the daemon is connected: answered once, live
        publish_retained_request(mosquitto.port, f"live-{protocol}")
        # (MQTT 3.1.1 has no Response Topic: the answer goes to the camera's response topic)
        live = f"live-{protocol}"
        wait_until(lambda: [m for m in watcher.on(REPLIES) + watcher.on(RESPONSE) if m.json()["id"] == live],
                   EXPLAIN_TIMEOUT, message=f"the answer to {live}")
        # ...then the daemon reconnects twice (its session is taken over) and is restarted
        for _ in range(2):
            time.sleep(2.0)
            take_session_over(mosquitto.port, client_id_of(daemon))
        wait_until(lambda: daemon.log().count("MQTT: connected") >= 3, 10, message="two reconnects")
        daemon.stop()
        daemon = daemon_process(config)
        collect(mosquitto.port, CAPTION).wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
        time.sleep(5.0)
        replies = [m for m in watcher.on(REPLIES) + watcher.on(RESPONSE) if not m.retain]
        ids = [m.json()["id"] for m in replies]
        answers[protocol] = ids
        assert f"stale-{protocol}" not in ids, (protocol, ids)
        assert ids.count(f"live-{protocol}") == 1, (protocol, ids)
        if protocol == "3.1.1":  # the broker sends it retained; the daemon drops it, logging it once
            assert daemon.log().count("ignored a retained message") == 1, daemon.log()
        daemon.stop()
        # clear it, as the log line says
        publish_cleared = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"clear-{protocol}")
        publish_cleared.connect("127.0.0.1", mosquitto.port)
        publish_cleared.publish(REQUEST, b"", retain=True)
        publish_cleared.disconnect()
    figures("retained_request", answers_per_protocol=answers)


def count_lost(daemon) -> int:
    """How often the daemon lost its MQTT connection."""
    return daemon.log().count("MQTT: connection lost")


def test_two_daemons_from_copies_of_one_config_keep_their_sessions(tmp_path, mosquitto, collect, daemon_process):
    watch_s = 8.0
    # default client ids: one host name, one camera, different snapshot folders
    first = daemon_process(daemon_config(tmp_path / "a", mosquitto.port))
    second = daemon_process(daemon_config(tmp_path / "b", mosquitto.port))
    captions = collect(mosquitto.port, CAPTION)
    captions.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    wait_until(lambda: "MQTT: connected" in first.log() and "MQTT: connected" in second.log(), START_TIMEOUT,
               message="both daemons connected")
    assert client_id_of(first) != client_id_of(second)
    time.sleep(watch_s)
    default_lost = (count_lost(first), count_lost(second))
    assert default_lost == (0, 0), (first.log(), second.log())
    first.stop()
    second.stop()

    # one client id configured for both: they flap, and the log names the cause
    shared = {"client_id": "explaincam-raspberrypi-testcam"}
    third = daemon_process(daemon_config(tmp_path / "c", mosquitto.port, mqtt=shared))
    fourth = daemon_process(daemon_config(tmp_path / "d", mosquitto.port, mqtt=shared))
    hint = "same client id 'explaincam-raspberrypi-testcam'"
    wait_until(lambda: hint in third.log() + fourth.log(), START_TIMEOUT + 30, interval=0.5,
               message="the duplicate client id named in the log")
    shared_lost = (count_lost(third), count_lost(fourth))
    figures("twin_daemons", lost_connections_default_ids=default_lost, watch_s=watch_s,
            lost_connections_shared_id_until_hint=shared_lost)


def test_stats_do_not_count_captions_swallowed_by_a_hanging_broker(tmp_path, broker, collect, daemon_process):
    config = daemon_config(tmp_path, broker.port, caption={"rate": 5}, mqtt={"protocol": broker.protocol})
    daemon = daemon_process(config)
    stats = collect(broker.port, STATS, CAPTION, protocol=broker.paho_protocol)
    stats.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    before = stats.wait_for(STATS, lambda m: m.json()["mqtt"]["delivered"] > 0, timeout=10).json()["mqtt"]
    assert before["dropped"] == 0
    latest = tmp_path / "snapshot" / "latest.json"

    broker_pid = broker._process.pid
    first_frame = json.loads(latest.read_text())["frame_id"]
    hang_started = time.monotonic()
    os.kill(broker_pid, signal.SIGSTOP)  # alive but silent: TCP still accepts what fits in its buffers
    try:
        wait_until(lambda: "MQTT: connection lost" in daemon.log(), 30, interval=0.2,
                   message="the keep-alive to notice the hanging broker")
        noticed_s = round(time.monotonic() - hang_started, 1)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    last_frame = json.loads(latest.read_text())["frame_id"]
    made = last_frame - first_frame  # captions made while the broker hung
    resumed = time.monotonic()
    after = stats.wait_for(STATS, lambda m: m.at > resumed and m.json()["mqtt"]["reconnects"] == 1,
                           timeout=20).json()["mqtt"]
    arrived = len({m.json()["frame_id"] for m in live_captions(stats)
                   if first_frame < m.json()["frame_id"] <= last_frame})
    lost = made - arrived
    # every caption of the hang that did not arrive is counted as dropped (so are its JPEG snapshots)
    dropped = after["dropped"] - before["dropped"]
    assert lost > 0 and dropped >= lost, (made, arrived, before, after)
    figures("broker_hang", noticed_after_s=noticed_s, captions_made=made, arrived=arrived,
            dropped=dropped, pending=after["pending"], delivered_before=before["delivered"],
            delivered_after=after["delivered"])
