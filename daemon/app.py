"""``explaincam run``: the capture daemon, assembled by :func:`build_daemon` and run.

config → model bundle → frame cache → MQTT → explainer → camera grab thread → caption loop
on the main thread. ``run``, ``run --demo`` (daemon/demo.py sets up its surroundings, then
``run`` goes on as usual) and ``explaincam bench`` all assemble the daemon with
:func:`build_daemon`. SIGTERM/SIGINT end it within about 2 s: the loop stops, systemd hears
STOPPING=1, the camera is released, pending explain requests are answered
``shutting_down``, the explainer is terminated and ``offline`` is published. A second
SIGTERM/SIGINT kills the explainer and exits at once; SIGHUP is logged and ignored.

This process never imports TensorFlow (the explainer runs it in a process of its own);
the stats message's ``tensorflow_loaded`` shows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from daemon import contract, discovery
from daemon.bundle import BundleError
from daemon.capture import CaptionLoop
from daemon.captioner import Captioner
from daemon.config import CONFIG_FILE, LOG_LEVELS, AppConfig
from daemon.config_file import ConfigError, load_config
from daemon.demo import DemoError, demo_config, demo_surroundings
from daemon.encoder import EncoderError
from daemon.familiarity import REJUDGE_S
from daemon.explain.backends import BackendError, choose_backend
from daemon.explain.local import LocalDispatcher
from daemon.explain_settings import INT8_METHODS
from daemon.explain.service import ExplainService, picture_jpeg
from daemon.fleet.dispatcher import RemoteDispatcher
from daemon.framecache import FrameCache
from daemon.history.service import HistoryService, open_history
from daemon.mqtt import MqttPublisher, MqttSetupError
from daemon.notify import SystemdNotifier
from daemon.process import EXIT_CONFIG, install_signal_handlers, package_version, setup_logging
from daemon.snapshot import SnapshotFolder, last_explanation
from daemon.sources import FrameGrabber, make_source
from daemon.twins import TwinWatch

log = logging.getLogger("explaincam")

SOURCE_START_TIMEOUT_S = 10.0  # READY=1 waits this long at most for the camera's first answer


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam run``."""
    parser.add_argument("-c", "--config", default=CONFIG_FILE, help=f"config file (default: {CONFIG_FILE})")
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        help="override the config's log_level")
    parser.add_argument("--demo", action="store_true", help=(
        "demo: generated scenes with the shipped model, a private Mosquitto on loopback if no broker "
        "answers, snapshots in ./build/snapshot, captions printed as they arrive over MQTT"))


def main(args: argparse.Namespace) -> int:
    """Run the daemon (with ``--demo``, inside the demo's surroundings) until SIGTERM/SIGINT;
    the exit code says why it ended."""
    try:
        cfg = demo_config(args.config) if args.demo else load_config(args.config)
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or ("warning" if args.demo else cfg.log_level))
    if not args.demo:
        return run_daemon(cfg)
    try:
        with demo_surroundings(cfg) as demo_cfg:
            return run_daemon(demo_cfg)
    except DemoError as exc:
        print(exc, flush=True)
        return 1


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
        messages = discovery.discovery_messages(prefix, camera, ha, model_name=model_name, version=package_version(),
                                                configuration_url=cfg.mqtt.discovery.configuration_url,
                                                timeline=cfg.history.enabled)
        for topic, payload in messages:
            publisher.publish(topic, json.dumps(payload), qos=1, retain=True)
        announced = {topic for topic, _ in messages}
        for topic, payload in discovery.removal_messages(prefix, camera, ha):  # the timeline's, with history off
            if topic not in announced:
                publisher.publish(topic, payload, qos=1, retain=True)

    status_topic = contract.home_assistant_status_topic(ha)

    def on_birth(payload: bytes, properties) -> None:
        if discovery.handles_birth(status_topic, payload, ha):
            log.info("Home Assistant came online: discovery sent again")
            announce()

    announce()
    publisher.subscribe(status_topic, on_birth,
                        purpose="Home Assistant's restarts go unheard: its entities of this camera stay unavailable "
                                "after Home Assistant restarts until the daemon does")


def publish_last_explanation(publisher: MqttPublisher, topics: contract.CameraTopics, snapshot_dir) -> None:
    """Publish (retained) the explain image this daemon knows at start: the last explanation in
    its snapshot folder (``explanation.png`` and ``.json``), or else the "no explanation yet"
    placeholder, as a JPEG. Either way the topic holds a picture from the start, and its info says
    truthfully when (or that never) it was made."""
    picture, info = picture_jpeg(contract.placeholder_png()), contract.placeholder_info()
    if snapshot_dir is not None:
        try:
            saved = last_explanation(snapshot_dir)
            if saved is not None:
                picture, info = picture_jpeg(saved[0]), saved[1]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("the last explanation in %s cannot be read (%s); publishing the placeholder",
                        Path(snapshot_dir), exc)
    picture, fit = picture
    publisher.publish(topics.explain_image_info, json.dumps(info), qos=1, retain=True)
    publisher.publish(topics.explain_image, picture, qos=1, retain=True, fit=fit)


class DaemonSetupError(Exception):
    """The daemon cannot be assembled (model bundle or MQTT settings): restarting will not help."""


@dataclass
class Daemon:
    """The parts of one camera's daemon, assembled by :func:`build_daemon`; :meth:`run` runs them."""

    cfg: AppConfig
    topics: contract.CameraTopics
    captioner: Captioner
    cache: FrameCache
    publisher: MqttPublisher
    grabber: FrameGrabber
    loop: CaptionLoop
    notifier: SystemdNotifier
    explain_service: ExplainService | None = None
    snapshot: SnapshotFolder | None = None
    twins: TwinWatch | None = None
    history: HistoryService | None = None

    def run(self, stop: threading.Event) -> None:
        """Connect, start the camera, tell systemd READY=1 and caption until ``stop`` is set; then :meth:`close`."""
        try:
            self.grabber.start()
            self.publisher.start()
            if self.twins is not None:
                self.twins.start()
            deadline = time.monotonic() + SOURCE_START_TIMEOUT_S
            while not (stop.is_set() or self.grabber.wait_started(0.25) or time.monotonic() > deadline):
                pass
            self.notifier.ready(self.loop.status_line())
            log.info("captioning %s as camera %r; topics under %s", self.grabber.source.describe(),
                     self.cfg.camera.name, self.topics.base)
            self.loop.run(stop)
        finally:
            self.close()

    def kill_explainer(self) -> None:
        """End the explainer process at once (a second SIGTERM/SIGINT while stopping)."""
        if self.explain_service is not None:
            self.explain_service.local.kill_explainer()

    def close(self) -> None:
        """Stop everything: the camera, the explainer (pending requests are answered ``shutting_down``), the
        timeline (the open event closed, queued writes committed), MQTT."""
        self.notifier.stopping()
        self.notifier.status("stopping")
        self.grabber.stop(timeout=0.5)
        if self.twins is not None:
            self.twins.stop()
        if self.explain_service is not None:
            try:  # the `shutting_down` answers are sent by publisher.stop's flush
                self.explain_service.stop(timeout=0.5)
            except Exception:
                log.exception("stopping the explainer failed")
        if self.history is not None:
            self.history.stop(timeout=1.0)
        self.publisher.stop(timeout=0.5)
        self.notifier.close()
        log.info("stopped after %d captions", self.loop.stats.captions)


def build_daemon(cfg: AppConfig, notifier: SystemdNotifier | None = None,
                 publisher: MqttPublisher | None = None) -> Daemon:
    """Assemble the daemon for ``cfg``: the model, MQTT (``publisher`` stands in for the broker
    connection where there is none, as in the bench), the explainer, Home Assistant discovery,
    the snapshot folder, the camera and the caption loop. Nothing runs until :meth:`Daemon.run`.
    DaemonSetupError if the model bundle or the MQTT settings are unusable."""
    notifier = notifier or SystemdNotifier(None)
    camera = cfg.camera.name
    topics = contract.CameraTopics.for_camera(cfg.mqtt.topic_prefix, camera)

    notifier.status("loading the model")
    bundle_path = cfg.model.bundle_path()
    try:
        captioner = Captioner.from_path(bundle_path, cfg.model.threads, cfg.model.beam_width, cfg.model.beam_style,
                                        familiarity_rejudge_s=REJUDGE_S)
    except (BundleError, EncoderError) as exc:
        raise DaemonSetupError(f"cannot load the model: {exc}") from exc
    log.info("model %s from %s (input %d px, %d encoder threads, beam %d)", captioner.bundle.name,
             bundle_path, captioner.input_size, cfg.model.threads, cfg.model.beam_width)

    cache = FrameCache(cfg.caption.cache_size)
    if publisher is None:
        try:
            publisher = MqttPublisher(cfg.mqtt, cfg.mqtt.resolved_client_id(camera, str(cfg.snapshot.dir.resolve())),
                                      topics.availability)
        except MqttSetupError as exc:
            raise DaemonSetupError(str(exc)) from exc
    snapshot = None
    if cfg.snapshot.enabled:
        try:
            snapshot = SnapshotFolder(cfg.snapshot.dir, camera, cfg.snapshot.min_interval_s)
        except OSError as exc:
            log.error("snapshot folder %s is not usable (%s); no snapshot files will be written",
                      cfg.snapshot.dir, exc.strerror or exc)
    twins = TwinWatch(publisher.publish, publisher.subscribe, topics, publisher.client_id)
    explain_service = start_explain_service(cfg, topics, captioner, cache, publisher, snapshot,
                                            answers_requests=twins.answers_requests)
    announce_to_home_assistant(cfg, publisher, camera, captioner.bundle.name)
    publish_last_explanation(publisher, topics, cfg.snapshot.dir if cfg.snapshot.enabled else None)

    source_cfg = cfg.camera.source
    grabber = FrameGrabber(make_source(source_cfg), source_cfg.retry_initial_s, source_cfg.retry_max_s)
    loop = CaptionLoop(cfg, captioner, grabber, cache, publisher, topics, notifier, snapshot)
    history = start_history(cfg, topics, publisher, captioner.bundle.name, loop, snapshot,
                            answers_requests=twins.answers_requests)
    if explain_service is not None and history is not None:
        explain_service.history = history  # explain requests may name a stored event
        if cfg.history.explain and cfg.explain.mode == "local":  # each new event explained at low priority
            explain_service.background_methods = list(cfg.history.explain)
            history.on_new_event.append(explain_service.explain_in_background)
    return Daemon(cfg, topics, captioner, cache, publisher, grabber, loop, notifier, explain_service, snapshot,
                  twins, history)


def start_history(cfg: AppConfig, topics: contract.CameraTopics, publisher: MqttPublisher, model_name: str,
                  loop: CaptionLoop, snapshot: SnapshotFolder | None,
                  answers_requests: Callable[[], bool] = lambda: True) -> HistoryService | None:
    """The timeline (None when off or unusable, said in one line): fed by the caption loop, its figures in
    the stats message, answering queries on this camera's history topics, its newest events on the page.
    While ``answers_requests()`` is False (a twin that started first answers them, ``daemon.twins``)
    queries are left to it."""
    history = open_history(cfg.history, cfg.snapshot.dir, cfg.camera.name, topics, publisher.publish, model_name,
                           snapshot)
    if history is None:
        return None
    loop.frame_observers.append(history.observe)
    loop.extra_stats["history"] = history.stats

    def on_history_request(payload: bytes, properties) -> None:  # on the MQTT network thread: returns at once
        if not answers_requests():
            log.debug("history query left to the twin daemon that answers this camera's requests")
            return
        history.handle_query(payload, response_topic=getattr(properties, "ResponseTopic", None),
                             correlation_data=getattr(properties, "CorrelationData", None))
    publisher.subscribe(topics.history_request, on_history_request, retained=False,
                        purpose="no history query reaches this daemon (`explaincam history` gets no answer)")
    return history


def start_explain_service(cfg: AppConfig, topics: contract.CameraTopics, captioner: Captioner, cache: FrameCache,
                          publisher: MqttPublisher, snapshot: SnapshotFolder | None,
                          answers_requests: Callable[[], bool] = lambda: True) -> ExplainService | None:
    """The explainer (a process of its own, started on the first request, or a fleet's workers with
    ``explain.mode`` remote/auto), subscribed to this camera's explain requests; None, with the
    reason logged, if it cannot be set up: captioning goes on without it. What can be missing
    on a box (TensorFlow, or the bundle's explainer graph, for the configured backend) is said
    at start; requests then get the int8 methods and that reason for the gradient ones. While
    ``answers_requests()`` is False (a twin that started first answers them, ``daemon.twins``)
    requests are left to it."""
    if cfg.explain.mode != "remote":
        try:
            choose_backend(captioner.bundle, cfg.explain.backend, cfg.explain.gradcam_layer)
        except BackendError as exc:
            log.warning("gradient explanations on this box will fail: %s; the int8 methods (%s) still answer",
                        exc, ", ".join(INT8_METHODS))
    try:
        remote = None
        if cfg.explain.mode != "local":
            remote = RemoteDispatcher(cfg.explain, topics, captioner.bundle.path, publisher.publish,
                                      publisher.subscribe)
        service = ExplainService(config=cfg.explain, publish=publisher.publish, topics=topics, frame_cache=cache,
                                 local=LocalDispatcher(cfg.explain, captioner.bundle.path,
                                                       captioner.bundle.manifest_sha256),
                                 remote=remote, snapshot=snapshot, model_name=captioner.bundle.name)
    except Exception:
        log.exception("the explainer could not be set up; captioning goes on without it")
        return None

    def on_explain_request(payload: bytes, properties) -> None:  # on the MQTT network thread: returns at once
        if not answers_requests():
            log.debug("explain request left to the twin daemon that answers this camera's requests")
            return
        service.handle_request(payload, response_topic=getattr(properties, "ResponseTopic", None),
                               correlation_data=getattr(properties, "CorrelationData", None))
    publisher.subscribe(topics.explain_request, on_explain_request, retained=False,
                        purpose="no explain request reaches this daemon (Home Assistant's Explain button and "
                                "`explaincam request` get no answer)")
    return service


def run_daemon(cfg: AppConfig, stop: threading.Event | None = None) -> int:
    """Assemble and run the daemon with a validated config until ``stop`` is set (or a signal sets it)."""
    stop = stop or threading.Event()
    on_second_stop: list[Callable[[], None]] = []
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(stop, on_second_stop)
    notifier = SystemdNotifier.from_environment()
    try:
        daemon = build_daemon(cfg, notifier)
    except DaemonSetupError as exc:
        log.error("%s", exc)
        notifier.status(str(exc))
        return EXIT_CONFIG
    on_second_stop.append(daemon.kill_explainer)
    daemon.run(stop)
    return 0
