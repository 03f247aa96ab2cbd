"""``explaincam run``: the capture daemon, wired together.

config → model bundle → frame cache → MQTT → (explainer, when installed) → camera grab
thread → caption loop on the main thread. SIGTERM/SIGINT end it within about 2 s: the
loop stops, systemd hears STOPPING=1, the camera is released, pending explain requests are
answered ``shutting_down``, the explainer is terminated and ``offline`` is published. A
second SIGTERM/SIGINT kills the explainer and exits at once; SIGHUP is logged and ignored.

This process never imports TensorFlow (the explainer runs it in a process of its own);
the stats message's ``tensorflow_loaded`` shows it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from daemon import contract, discovery
from daemon.bundle import BundleError
from daemon.capture import CaptionLoop
from daemon.captioner import Captioner
from daemon.config import AppConfig, ConfigError, load_config
from daemon.encoder import EncoderError
from daemon.framecache import FrameCache
from daemon.mqtt import MqttPublisher, MqttSetupError
from daemon.notify import SystemdNotifier
from daemon.snapshot import SnapshotWriter
from daemon.sources import FrameGrabber, make_source

log = logging.getLogger("explaincam")

SOURCE_START_TIMEOUT_S = 10.0  # READY=1 waits this long at most for the camera's first answer
EXIT_CONFIG = 2  # bad config, model or MQTT settings: restarting will not help


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam run``."""
    parser.add_argument("-c", "--config", default="config.yaml", help="config file (default: config.yaml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="override the config's log_level")
    parser.add_argument("--demo", action="store_true", help=(
        "demo: generated scenes with the shipped model, a private Mosquitto on loopback if no broker "
        "answers, snapshots in ./build/snapshot, captions printed as they arrive over MQTT"))


def setup_logging(level: str) -> None:
    """Log to stderr; without timestamps under systemd (the journal adds its own)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=fmt, force=True)


def main(args: argparse.Namespace) -> int:
    """Run the daemon (or the demo) until SIGTERM/SIGINT; the exit code says why it ended."""
    if args.demo:
        from daemon.demo import run_demo

        return run_demo(args)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or cfg.log_level)
    return run_daemon(cfg)


def install_signal_handlers(stop: threading.Event, on_second_stop: list[Callable[[], None]]) -> None:
    """SIGTERM and SIGINT set ``stop``; a second one runs ``on_second_stop`` (kill the explainer)
    and ends the process at once. SIGHUP (a closed terminal, ``systemctl kill -s HUP``) is
    logged and ignored: nothing is re-read at run time (restart to apply a changed config or
    password file), and dying of it would leave systemd's ``Restart=on-failure`` idle."""
    def handle_stop(signum, frame):
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.info("%s: stopping", name)
            stop.set()
            return
        log.warning("%s again while stopping: exiting at once", name)
        for action in on_second_stop:
            action()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def handle_hangup(signum, frame):
        log.warning("SIGHUP ignored: explaincam re-reads nothing while running; "
                    "restart it to apply a changed config or password file")

    signal.signal(signal.SIGTERM, handle_stop)
    signal.signal(signal.SIGINT, handle_stop)
    signal.signal(signal.SIGHUP, handle_hangup)


def _explain_service_available() -> bool:
    """Whether the explainer package (daemon.explain.service) is installed."""
    try:
        return importlib.util.find_spec("daemon.explain.service") is not None
    except ModuleNotFoundError:  # no daemon.explain package at all
        return False


def announce_to_home_assistant(cfg: AppConfig, publisher: MqttPublisher, camera: str, model_name: str) -> None:
    """Publish the Home Assistant discovery messages (retained, so every reconnect re-sends
    them) and send them again whenever Home Assistant's birth message says ``online``;
    with discovery off, remove any entities announced before."""
    ha = cfg.mqtt.discovery.prefix
    prefix = cfg.mqtt.topic_prefix
    if not cfg.mqtt.discovery.enabled:
        for topic, payload in discovery.removal_messages(prefix, camera, ha):
            publisher.publish(topic, payload, qos=1, retain=True)
        return

    def announce() -> None:
        for topic, payload in discovery.discovery_messages(prefix, camera, ha, model_name=model_name,
                                                           version=_version(),
                                                           configuration_url=cfg.mqtt.discovery.configuration_url):
            publisher.publish(topic, json.dumps(payload), qos=1, retain=True)

    status_topic = contract.home_assistant_status_topic(ha)

    def on_birth(payload: bytes, properties) -> None:
        if discovery.handles_birth(status_topic, payload, ha):
            log.info("Home Assistant came online: discovery sent again")
            announce()

    announce()
    publisher.subscribe(status_topic, on_birth)


def publish_last_explanation(publisher: MqttPublisher, topics: contract.CameraTopics, snapshot_dir) -> None:
    """Publish (retained) the explain image this daemon knows at start: the last explanation in
    its snapshot folder (``explanation.png`` and ``.json``), or else the "no explanation yet"
    placeholder. Either way the topic holds a picture from the start, and its info says
    truthfully when (or that never) it was made."""
    png, info = contract.placeholder_png(), contract.placeholder_info()
    if snapshot_dir is not None:
        folder = Path(snapshot_dir)
        try:
            saved_png = (folder / "explanation.png").read_bytes()
            saved = json.loads((folder / "explanation.json").read_text())
            made_at = (contract.parse_iso_time(saved["made_at"]) if saved.get("made_at")
                       else (folder / "explanation.png").stat().st_mtime)  # written before made_at was kept
            png, info = saved_png, contract.explanation_info(saved, made_at)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("the last explanation in %s cannot be read (%s); publishing the placeholder", folder, exc)
    publisher.publish(topics.explain_image_info, json.dumps(info), qos=1, retain=True)
    publisher.publish(topics.explain_image, png, qos=1, retain=True)


def _version() -> str:
    """explaincam's installed version."""
    try:
        return importlib.metadata.version("explaincam")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def run_daemon(cfg: AppConfig, stop: threading.Event | None = None) -> int:
    """Run the daemon with a validated config until ``stop`` is set (or a signal sets it)."""
    stop = stop or threading.Event()
    on_second_stop: list[Callable[[], None]] = []
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(stop, on_second_stop)
    notifier = SystemdNotifier.from_environment()
    camera = cfg.camera.name
    topics = contract.CameraTopics.for_camera(cfg.mqtt.topic_prefix, camera)

    notifier.status("loading the model")
    bundle_path = cfg.model.bundle_path()
    try:
        captioner = Captioner.from_path(bundle_path, cfg.model.threads, cfg.model.beam_width, cfg.model.beam_style)
    except (BundleError, EncoderError) as exc:
        log.error("cannot load the model: %s", exc)
        notifier.status(f"cannot load the model: {exc}")
        return EXIT_CONFIG
    log.info("model %s from %s (input %d px, %d encoder threads, beam %d)", captioner.bundle.name,
             bundle_path, captioner.input_size, cfg.model.threads, cfg.model.beam_width)

    cache = FrameCache(cfg.caption.cache_size)
    try:
        publisher = MqttPublisher(cfg.mqtt, cfg.mqtt.resolved_client_id(camera, str(cfg.snapshot.dir.resolve())),
                                   topics.availability)
    except MqttSetupError as exc:
        log.error("%s", exc)
        notifier.status(str(exc))
        return EXIT_CONFIG

    # --- Explainer seam. daemon/explain/ is built separately; when it is installed, its
    # ExplainService answers {prefix}/{camera}/explain/request from the frame cache. It must
    # not import TensorFlow here (it starts its own process) and handle_request() must
    # return at once (it runs on the MQTT network thread).
    explain_service = None
    if _explain_service_available():
        try:
            service_module = importlib.import_module("daemon.explain.service")
            remote = None
            if cfg.explain.mode != "local":  # a fleet's workers explain (daemon/fleet/)
                from daemon.fleet.dispatcher import RemoteDispatcher

                remote = RemoteDispatcher(cfg.explain, topics, bundle_path, publisher.publish, publisher.subscribe)
            explain_service = service_module.ExplainService(
                config=cfg.explain, bundle_path=bundle_path,
                snapshot_dir=cfg.snapshot.dir if cfg.snapshot.enabled else None,
                publish=publisher.publish,
                topics=topics,
                frame_cache=cache, model_name=captioner.bundle.name, remote=remote)
            on_second_stop.append(explain_service.kill_worker)
        except Exception:
            log.exception("the explainer could not be set up; captioning goes on without it")
        else:
            def on_explain_request(payload: bytes, properties) -> None:
                explain_service.handle_request(payload, response_topic=getattr(properties, "ResponseTopic", None),
                                               correlation_data=getattr(properties, "CorrelationData", None))
            publisher.subscribe(topics.explain_request, on_explain_request, retained=False)
    # --- end of the explainer seam.

    announce_to_home_assistant(cfg, publisher, camera, captioner.bundle.name)
    publish_last_explanation(publisher, topics, cfg.snapshot.dir if cfg.snapshot.enabled else None)

    snapshot = None
    if cfg.snapshot.enabled:
        try:
            snapshot = SnapshotWriter(cfg.snapshot.dir, camera, cfg.snapshot.min_interval_s)
        except OSError as exc:
            log.error("snapshot folder %s is not usable (%s); no snapshot files will be written",
                      cfg.snapshot.dir, exc.strerror or exc)

    source_cfg = cfg.camera.source
    grabber = FrameGrabber(make_source(source_cfg), source_cfg.retry_initial_s, source_cfg.retry_max_s)
    loop = CaptionLoop(cfg, captioner, grabber, cache, publisher, topics, notifier, snapshot)
    try:
        grabber.start()
        publisher.start()
        deadline = time.monotonic() + SOURCE_START_TIMEOUT_S
        while not (stop.is_set() or grabber.wait_started(0.25) or time.monotonic() > deadline):
            pass
        notifier.ready(loop.status_line())
        log.info("captioning %s as camera %r; topics under %s/%s", grabber.source.describe(), camera,
                 cfg.mqtt.topic_prefix, camera)
        loop.run(stop)
    finally:
        notifier.stopping()
        notifier.status("stopping")
        grabber.stop(timeout=0.5)
        if explain_service is not None:
            try:  # pending requests are answered `shutting_down` (sent by publisher.stop's flush)
                explain_service.stop(timeout=0.5)
            except Exception:
                log.exception("stopping the explainer failed")
        publisher.stop(timeout=0.5)
        notifier.close()
        log.info("stopped after %d captions", loop.stats.captions)
    return 0
