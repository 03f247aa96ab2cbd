"""Brokers as they are in the wild: a packet size cap, an ACL slip, a broker that speaks only
MQTT 3.1.1 (amqtt, a second implementation) or hangs before CONNACK, a bundle swapped on disk
while the daemon runs, and a twin daemon publishing as the same camera.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import time

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from daemon.broker import LocalBroker, free_port
from daemon.bundle import load_bundle, write_manifest
from tests.conftest import (AVAILABILITY, CAPTION, REQUEST, RESPONSE, SHIPPED_BUNDLE, START_TIMEOUT, STATS, TOPICS,
                            daemon_config, wait_until)
from tests.faults.brokers import AmqttBroker
from tests.faults.probes import NODELAY, Requester, figures, live_captions

CAP = 16384
WATCH_S = 20.0
EXPLAIN = {"id": "wild", "frame": "latest", "methods": ["gradcam", "saliency"], "words": "all"}


def started_broker(tmp_path, extra_config: str = "") -> LocalBroker:
    """A Mosquitto with ``extra_config``, started."""
    broker = LocalBroker(free_port(), tmp_path / "mosquitto", extra_config=extra_config + NODELAY)
    broker.start()
    return broker


def connected_at(daemon) -> float:
    """Monotonic time at which the daemon's log first says it connected (waits for it)."""
    wait_until(lambda: "MQTT: connected" in daemon.log(), START_TIMEOUT, interval=0.1, message="a connection")
    return time.monotonic()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_16_kb_packet_cap_costs_no_connection_and_no_answer(protocol, tmp_path, collect, daemon_process):
    broker = started_broker(tmp_path, f"max_packet_size {CAP}\n")
    try:
        mqtt = {"protocol": protocol, "jpeg_interval_s": 0}  # a snapshot JPEG (~26 KB) with every caption
        if protocol == "3.1.1":  # no CONNACK property to read: the config states the cap
            mqtt["max_packet_size"] = CAP
        daemon = daemon_process(daemon_config(tmp_path, broker.port, mqtt=mqtt,
                                              explain={"idle_exit_s": 600, "threads": 1}))
        watch = collect(broker.port, CAPTION, TOPICS.snapshot, TOPICS.explain_image, STATS, RESPONSE)
        watch.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
        started = time.monotonic()
        requester = Requester(broker.port)
        try:
            requester.send(EXPLAIN, b"w1")
            if protocol == "5":
                answer = requester.wait_reply(b"w1", 60)
            else:  # no Response Topic in MQTT 3.1.1: the answer goes to the camera's response topic
                answer = watch.wait_for(RESPONSE, lambda m: m.json()["id"] == "wild", timeout=60).json()
        finally:
            requester.close()
        answered_s = round(time.monotonic() - started, 1)
        time.sleep(max(0.0, WATCH_S - (time.monotonic() - started)))
        log = daemon.log()
        captions = live_captions(watch, since=started)
        frames = [m.json()["frame_id"] for m in captions]
        snapshots = [m.payload for m in watch.on(TOPICS.snapshot, since=started) if not m.retain]
        stats = watch.on(STATS)[-1].json()["mqtt"]
    finally:
        broker.stop()
    assert log.count("MQTT: connection lost") == 0, log
    assert "same client id" not in log  # no takeover blamed
    # captions at full rate: every frame captioned in the window arrived
    assert len(set(frames)) >= 0.95 * (max(frames) - min(frames) + 1), frames
    assert snapshots and all(len(s) < CAP and cv2.imdecode(np.frombuffer(s, np.uint8), cv2.IMREAD_COLOR).ndim == 3
                             for s in snapshots)
    assert log.count(f"messages on {TOPICS.snapshot} are larger than") == 1, log  # said once, not per JPEG
    assert answer is not None, log
    if answer["status"] == "ok":  # the heatmaps are left out, and the answer says where the picture is
        assert answer["omitted"]["heatmaps"] and TOPICS.explain_image in answer["omitted"]["picture"]
        assert all("heatmap" not in word["gradcam"] for word in answer["words"])
    else:
        assert answer["error"]["code"] == "response_too_large", answer
    assert stats["max_packet_size"] == CAP and stats["reconnects"] == 0
    figures(f"packet_cap_{protocol}", watch_s=WATCH_S, disconnects=log.count("MQTT: connection lost"),
            captions=len(set(frames)), frames=max(frames) - min(frames) + 1, snapshots=len(snapshots),
            largest_snapshot=max(len(s) for s in snapshots), answer=answer["status"], answered_s=answered_s,
            too_large=stats["too_large"])


def test_an_unknown_3_1_1_packet_cap_is_blamed_on_the_packet_size_not_a_twin_client(tmp_path, daemon_process):
    broker = started_broker(tmp_path, f"max_packet_size {CAP}\n")
    try:  # MQTT 3.1.1 and no mqtt.max_packet_size: the broker just closes the connection after a large packet
        daemon = daemon_process(daemon_config(tmp_path, broker.port, mqtt={"protocol": "3.1.1", "jpeg_interval_s": 0}))
        wait_until(lambda: daemon.log().count("MQTT: connection lost") >= 4, START_TIMEOUT, interval=0.2,
                   message="four lost connections")
        log = daemon.log()
    finally:
        broker.stop()
    assert "it probably caps the packet size" in log and "set mqtt.max_packet_size" in log, log
    assert "same client id" not in log, log  # no other client is blamed
    figures("unknown_cap_3.1.1", lost=log.count("MQTT: connection lost"),
            hints=log.count("it probably caps the packet size"))


def dynsec_config(tmp_path) -> str:
    """Mosquitto's dynamic security plugin with an ACL slip: anonymous clients may not subscribe to this
    camera's explain requests nor publish its explanation picture."""
    plugin = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")[0]
    rules = {"defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": True,
                                  "unsubscribe": True},
             "clients": [], "groups": [{"groupname": "anonymous", "roles": [{"rolename": "slip"}]}],
             "anonymousGroup": "anonymous",
             "roles": [{"rolename": "slip", "acls": [
                 {"acltype": "subscribePattern", "topic": REQUEST, "priority": 10, "allow": False},
                 {"acltype": "publishClientSend", "topic": TOPICS.explain_image, "priority": 10, "allow": False}]}]}
    path = tmp_path / "dynsec.json"
    path.write_text(json.dumps(rules))
    keep_root = "user root\n" if os.geteuid() == 0 else ""  # keep reading the test's files after start-up
    return f"{keep_root}plugin {plugin}\nplugin_opt_config_file {path}\n"


def take_over(port: int, client_id: str) -> None:
    """Connect once with the daemon's client id and leave: the daemon reconnects (and re-publishes)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


def test_refused_subscriptions_and_publishes_are_said_once_and_counted(tmp_path, collect, daemon_process):
    broker = started_broker(tmp_path, dynsec_config(tmp_path))
    try:
        refused_sub = f"refused the subscription to {REQUEST}"
        refused_pub = f"refused a message on {TOPICS.explain_image} "
        daemon = daemon_process(daemon_config(tmp_path / "v5", broker.port))
        connected = connected_at(daemon)
        wait_until(lambda: refused_sub in daemon.log() and refused_pub in daemon.log(), 5, interval=0.1,
                   message="both refusals in the log within 5 s of connecting")
        said_s = round(time.monotonic() - connected, 1)
        assert "explain request" in daemon.log().split(refused_sub, 1)[1].splitlines()[0]  # what stops working
        client_id = daemon.log().split("as client id ", 1)[1].split()[0]
        stats = collect(broker.port, STATS)
        take_over(broker.port, client_id)  # the reconnect subscribes and publishes the picture again
        counted = stats.wait_for(STATS, lambda m: m.json()["mqtt"]["refused"] >= 2, timeout=20).json()["mqtt"]
        log = daemon.log()
        assert log.count(refused_sub) == 1 and log.count(refused_pub) == 1, log
        assert counted["refused_subscriptions"] == [REQUEST]
        daemon.stop()

        # MQTT 3.1.1: SUBACK says 0x80 (PUBACK carries no reason code there)
        old = daemon_process(daemon_config(tmp_path / "v311", broker.port, mqtt={"protocol": "3.1.1"}))
        connected = connected_at(old)
        wait_until(lambda: refused_sub in old.log(), 5, interval=0.1, message="the refusal over MQTT 3.1.1")
    finally:
        broker.stop()
    figures("acl_slip", said_within_s=said_s, refused_publishes=counted["refused"],
            refused_subscriptions=counted["refused_subscriptions"])


def test_mqtt_5_against_a_broker_that_answers_only_3_1_1_or_never_names_the_setting(tmp_path, collect,
                                                                                    daemon_process):
    amqtt = AmqttBroker(free_port(), tmp_path / "amqtt")
    amqtt.start()
    try:
        daemon = daemon_process(daemon_config(tmp_path / "v5", amqtt.port))  # the default protocol: 5
        wait_until(lambda: "MQTT: connecting" in daemon.log(), START_TIMEOUT, interval=0.1, message="connecting")
        began = time.monotonic()
        wait_until(lambda: "mqtt.protocol" in daemon.log(), 10, interval=0.1, message="mqtt.protocol named")
        amqtt_s = round(time.monotonic() - began, 1)
        daemon.stop()

        # with protocol 3.1.1 it works on that broker: captions, and an explain request answered
        config = daemon_config(tmp_path / "v311", amqtt.port, explain={"idle_exit_s": 600, "threads": 1},
                               mqtt={"protocol": "3.1.1"})
        daemon = daemon_process(config)
        watch = collect(amqtt.port, CAPTION, RESPONSE, protocol=paho.MQTTv311)
        watch.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="old-requester", protocol=paho.MQTTv311)
        client.connect("127.0.0.1", amqtt.port)
        client.loop_start()
        client.publish(REQUEST, json.dumps({**EXPLAIN, "methods": ["gradcam"], "words": [0]}), qos=1)
        answer = watch.wait_for(RESPONSE, lambda m: m.json()["id"] == "wild", timeout=60).json()
        client.disconnect()
        client.loop_stop()
        assert answer["status"] == "ok", answer
        assert "mqtt.protocol" not in daemon.log()
    finally:
        amqtt.stop()

    # a broker that accepts the connection and never answers CONNECT (hung: SIGSTOP)
    hung = started_broker(tmp_path / "hung")
    os.kill(hung._process.pid, signal.SIGSTOP)
    try:
        daemon = daemon_process(daemon_config(tmp_path / "hung", hung.port))
        wait_until(lambda: "MQTT: connecting" in daemon.log(), START_TIMEOUT, interval=0.1, message="connecting")
        began = time.monotonic()
        wait_until(lambda: "no CONNACK" in daemon.log() and "mqtt.protocol" in daemon.log(), 10, interval=0.1,
                   message="the missing CONNACK said")
        hung_s = round(time.monotonic() - began, 1)
    finally:
        os.kill(hung._process.pid, signal.SIGCONT)
        hung.stop()
    figures("protocol", amqtt_named_setting_after_s=amqtt_s, hung_named_after_s=hung_s)


def test_a_bundle_swapped_on_disk_is_never_explained_for_the_loaded_one(tmp_path, mosquitto, collect,
                                                                        daemon_process):
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    config = daemon_config(tmp_path, mosquitto.port, explain={"idle_exit_s": 1, "threads": 1})
    config["model"]["bundle"] = str(bundle)
    daemon = daemon_process(config)
    collect(mosquitto.port, CAPTION).wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port)
    request = {**EXPLAIN, "methods": ["gradcam"]}
    try:
        requester.send({**request, "id": "before"}, b"before")
        before = requester.wait_reply(b"before", 60)
        assert before["status"] == "ok", before
        wait_until(lambda: "explainer process started" in daemon.log(), 5)
        time.sleep(3)  # the explainer ends after idle_exit_s
        # "a retrained model copied over": the same files, the words of the vocabulary in another order
        manifest = load_bundle(bundle).manifest
        vocab = bundle / manifest["files"]["vocab"]
        words = vocab.read_text().splitlines()
        vocab.write_text("\n".join(reversed(words)) + "\n")
        write_manifest(bundle, {k: v for k, v in manifest.items() if k != "sha256"})
        answers = []
        for k in range(3):
            requester.send({**request, "id": f"after-{k}"}, f"after-{k}".encode())
            answers.append(requester.wait_reply(f"after-{k}".encode(), 60))
    finally:
        requester.close()
    for answer in [before, *answers]:
        assert answer is not None
        if answer["status"] == "ok":  # explains exactly the published caption's words
            assert [w["word"] for w in answer["words"]] == answer["caption"].split(), answer
        else:
            assert answer["error"]["code"] == "bundle_changed" and "restart" in answer["error"]["message"]
    assert all(a["status"] == "error" for a in answers), answers
    assert daemon.log().count("changed on disk since the daemon loaded it") == 1, daemon.log()
    figures("bundle_swap", answers=[a["status"] if a["status"] == "ok" else a["error"]["code"] for a in answers])


def test_a_twin_daemon_is_named_and_requests_get_one_answer(broker, tmp_path, collect, daemon_process):
    protocol = broker.protocol
    # a config copied to a second box: same camera and prefix, each its own client id
    first = daemon_process(daemon_config(tmp_path / "a", broker.port, mqtt={"protocol": protocol},
                                         explain={"idle_exit_s": 600, "threads": 1}))
    watch = collect(broker.port, CAPTION, RESPONSE, AVAILABILITY, TOPICS.history_response,
                    protocol=broker.paho_protocol)
    watch.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    second = daemon_process(daemon_config(tmp_path / "b", broker.port, mqtt={"protocol": protocol},
                                          explain={"idle_exit_s": 600, "threads": 1}))
    named = "another daemon publishes as camera 'testcam'"
    wait_until(lambda: named in first.log() and named in second.log(), START_TIMEOUT, interval=0.2,
               message="each daemon naming its twin")
    assert "host " in first.log().split(named, 1)[1].splitlines()[0]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="twin-requester", protocol=broker.paho_protocol)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    ids = [f"twin-{k}" for k in range(3)]
    for request_id in ids:
        client.publish(REQUEST, json.dumps({**EXPLAIN, "id": request_id, "methods": ["gradcam"], "words": [0]}),
                       qos=1)
        client.publish(TOPICS.history_request, json.dumps({"id": request_id, "limit": 1}), qos=1)
    wait_until(lambda: {m.json()["id"] for m in watch.on(RESPONSE)} >= set(ids), 90, interval=0.2,
               message="every request answered")
    time.sleep(3)  # a second answer would come by now
    client.disconnect()
    client.loop_stop()
    answered = [m.json()["id"] for m in watch.on(RESPONSE)]
    assert sorted(answered) == ids, answered  # one answer each
    searched = [m.json()["id"] for m in watch.on(TOPICS.history_response)]
    assert sorted(searched) == ids, searched  # history queries too
    # the one that stops must not leave the camera offline while the other captions on
    stopped = time.monotonic()
    first.stop()
    wait_until(lambda: [m.payload for m in watch.on(AVAILABILITY, since=stopped)][-1:] == [b"online"], 10,
               interval=0.2, message="the camera online again")
    assert second.log().count(named) == 1
    figures(f"twins_mqtt{protocol}", answers=len(answered), requests=len(ids))
