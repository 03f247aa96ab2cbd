"""The daemon's and the fleet worker's configuration: pydantic models with every default.

Every model forbids unknown keys and describes every field; ``config.yaml`` at the top of
the repository documents each key with its default. ``daemon.config_file`` reads a YAML
file into these models (``${VAR}`` substitution, errors with their line);
``daemon.check_config`` is the ``explaincam check-config`` command.
"""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.explain_settings import BACKEND_CHOICES, DEFAULT_METHODS, DEFAULT_THREADS, METHODS, ExplainOptions

# A topic level that cannot break the topic tree: no wildcards, no separators.
TOPIC_LEVEL = r"^[A-Za-z0-9_.-]+$"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_BUNDLE = Path("models/scenes-mnv3s")  # the bundle explaincam ships, relative to PACKAGE_ROOT
CONFIG_FILE = "config.yaml"  # the config file the commands read unless given -c
LOG_LEVELS = ("debug", "info", "warning", "error")  # log_level, and the commands' --log-level
ExplainBackend = Literal[BACKEND_CHOICES]  # what runs the explainer's float model: auto, litert or tensorflow
ExplainBatchSize = Annotated[int, Field(ge=1, le=256, description="images per forward/backward pass of the explainer")]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(StrictModel):
    """Which captioning model runs and how."""

    bundle: Path = Field(SHIPPED_BUNDLE, description=(
        "model bundle folder; a relative path is looked up in the current directory, "
        "then in the explaincam install folder"))
    threads: int = Field(2, ge=1, le=16, description="threads of the int8 encoder (LiteRT)")
    beam_width: int = Field(1, ge=1, le=8, description="1 = greedy decoding, more = beam search of that width")
    beam_style: Literal["ours", "seed"] = Field("ours", description=(
        "beam search: ours (log-probabilities, stops at the end token) or seed (the seed project's: "
        "sum of raw probabilities, run to max length, cut at endseq; for comparing with its captions)"))

    def bundle_path(self) -> Path:
        """The bundle folder, resolved against the current directory, then the install folder."""
        if self.bundle.is_absolute() or self.bundle.exists():
            return self.bundle
        installed = PACKAGE_ROOT / self.bundle
        return installed if installed.exists() else self.bundle


class SourceConfigBase(StrictModel):
    """What every camera source shares: how a failing source is retried."""

    retry_initial_s: float = Field(1.0, gt=0, description="first wait before reopening a failed source")
    retry_max_s: float = Field(30.0, gt=0, description="longest wait between reopen attempts (the wait doubles up to it)")


class OpenCVSourceConfig(SourceConfigBase):
    """A camera or stream read with OpenCV: V4L2 device, RTSP/HTTP URL or video file."""

    type: Literal["opencv"] = Field(description="source kind")
    device: int | str | None = Field(None, description="V4L2 device index (0) or path (/dev/video0)")
    url: str | None = Field(None, description="stream URL (rtsp://, http://)")
    path: Path | None = Field(None, description="video file")
    loop: bool = Field(True, description="video file: start again at the end (reopening the file)")
    fps: float | None = Field(None, gt=0, description=(
        "video file: playback rate (null = the file's own); device: rate asked of the camera"))
    width: int | None = Field(None, gt=0, description="device: capture width asked of the camera")
    height: int | None = Field(None, gt=0, description="device: capture height asked of the camera")
    open_timeout_s: float = Field(10.0, gt=0, description="URL: give up opening the stream after this long")

    @model_validator(mode="after")
    def _one_target(self) -> "OpenCVSourceConfig":
        given = [k for k in ("device", "url", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of device, url or path"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class ImagesSourceConfig(SourceConfigBase):
    """A folder of image files, shown in name order (rescanned at every pass)."""

    type: Literal["images"] = Field(description="source kind")
    path: Path = Field(description="folder of .jpg/.jpeg/.png/.bmp/.webp files")
    fps: float = Field(1.0, gt=0, description="images per second")
    loop: bool = Field(True, description="start again after the last image")
    max_pixels: int = Field(16_000_000, ge=1, description=(
        "largest image read, in pixels (width x height, read from the file header before decoding); a larger "
        "JPEG is decoded at 1/2, 1/4 or 1/8 size to fit, other larger files are skipped"))


class Picamera2SourceConfig(SourceConfigBase):
    """A Raspberry Pi camera through Picamera2 (needs python3-picamera2)."""

    type: Literal["picamera2"] = Field(description="source kind")
    camera_num: int = Field(0, ge=0, description="which camera, when the box has several")
    width: int = Field(640, gt=0, description="capture width")
    height: int = Field(480, gt=0, description="capture height")
    fps: float = Field(10.0, gt=0, description="frame rate asked of the camera")


class ScenesSourceConfig(SourceConfigBase):
    """Generated scenes with their ground-truth caption (demos and tests)."""

    type: Literal["scenes"] = Field(description="source kind")
    seed: int = Field(7, description="scene stream (training uses 1, so 7 shows unseen scenes)")
    start: int = Field(0, ge=0, description="index of the first scene")
    fps: float = Field(2.0, gt=0, description="scenes per second")


SourceConfig = Annotated[
    Union[OpenCVSourceConfig, ImagesSourceConfig, Picamera2SourceConfig, ScenesSourceConfig],
    Field(discriminator="type"),
]


class CameraConfig(StrictModel):
    """The camera: its name in topics and where its frames come from."""

    name: str = Field("cam", pattern=TOPIC_LEVEL, description="camera name, the {camera} level of MQTT topics")
    source: SourceConfig = Field(default_factory=lambda: ScenesSourceConfig(type="scenes"),
                                 description="frame source; `type` picks the kind")


class CaptionConfig(StrictModel):
    """The caption loop."""

    rate: float = Field(2.0, ge=0, description="captions per second at most; 0 = as fast as the model goes")
    change_threshold: float = Field(0.0, ge=0, le=255, description=(
        "skip a frame whose 32x32 grey thumbnail differs from the last captioned one by less "
        "than this mean absolute difference (0-255); 0 captions every frame"))
    cache_size: int = Field(16, ge=1, le=1000, description="frames kept in memory for explanation requests")


class TlsConfig(StrictModel):
    """TLS to the broker; on when `enabled` or any file is given."""

    enabled: bool = Field(False, description="use TLS with the system's CA certificates")
    ca_certs: Path | None = Field(None, description="CA certificate file that signed the broker's certificate")
    certfile: Path | None = Field(None, description="client certificate file (for brokers that require one)")
    keyfile: Path | None = Field(None, description="client private key file")
    insecure: bool = Field(False, description="do not check the broker's host name against its certificate")

    @property
    def active(self) -> bool:
        """Whether the connection uses TLS."""
        return self.enabled or any(p is not None for p in (self.ca_certs, self.certfile, self.keyfile))


class DiscoveryConfig(StrictModel):
    """Home Assistant MQTT discovery."""

    enabled: bool = Field(True, description="announce the caption sensor, snapshot image, explain button "
                                            "and explanation image to Home Assistant")
    prefix: str = Field("homeassistant", pattern=r"^[^+#]+$",
                        description="Home Assistant's discovery prefix; its birth message is {prefix}/status")
    configuration_url: str | None = Field(None, pattern=r"^(https?://|homeassistant://)\S+$", description=(
        "a page about this camera (e.g. where a web server serves the snapshot folder), shown as the device's "
        "'Visit' link; null = none"))


class MqttConnectionConfig(StrictModel):
    """The MQTT broker and how to connect to it (the daemon's and the fleet worker's `mqtt:` section)."""

    host: str = Field("localhost", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual with TLS)")
    topic_prefix: str = Field("explaincam", pattern=r"^[^+#]+$", description="first level(s) of every topic")
    client_id: str | None = Field(None, description=(
        "MQTT client id; null = explaincam-<host name>-<camera>-<8 hex digits of this machine's id and the "
        "snapshot folder> (a worker: explaincam-<host name>-worker-<id>-<8 hex digits of this machine's id and "
        "its config file>), so two boxes with one host name, or two daemons on one box, never share it"))
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version: 3.1.1 or 5")
    keepalive: int = Field(30, ge=5, le=3600, description="seconds between keep-alive pings")
    username: str | None = Field(None, description="user name; null = anonymous")
    password_file: Path | None = Field(None, description=(
        "file holding the password (e.g. ${CREDENTIALS_DIRECTORY}/mqtt-password); never put the password here"))
    password_env: str | None = Field(None, description="name of an environment variable holding the password")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings")
    reconnect_min_s: int = Field(1, ge=1, description="first wait before reconnecting to a lost broker")
    reconnect_max_s: int = Field(30, ge=1, description="longest wait between reconnect attempts")
    queue_size: int = Field(100, ge=1, description="outgoing messages held while the broker is slow or away; the oldest are dropped")
    max_packet_size: int | None = Field(None, ge=128, le=268_435_460, description=(
        "largest MQTT packet in bytes the broker accepts (Mosquitto's max_packet_size); null = what the broker "
        "states in CONNACK (MQTT 5) or no limit (MQTT 3.1.1). Larger messages are made smaller or not sent"))
    connack_timeout_s: float = Field(5.0, gt=0, le=120, description=(
        "seconds a connection attempt waits for the broker's CONNACK before it counts as failed"))

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        """Accept `protocol: 5` (a YAML number) as well as "5"."""
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_password_source(self) -> "MqttConnectionConfig":
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self

    def resolved_client_id(self, name: str, instance: str = "") -> str:
        """The configured client id, or ``explaincam-<host>-<name>-<suffix>``.

        ``name`` is the camera (the daemon) or ``worker-<id>`` (a fleet worker). The suffix
        is a hash of this machine (``machine_fingerprint``) and ``instance`` (the daemon's
        snapshot folder, the worker's config file): the same across restarts, different for
        two boxes that share a host name (every fresh Raspberry Pi is ``raspberrypi``) and
        for two daemons or workers on one box. A broker gives a client id to one connection
        only: a shared one makes the clients take each other's session over again and again.
        """
        if self.client_id:
            return self.client_id
        suffix = hashlib.sha256(f"{machine_fingerprint()}\0{instance}".encode()).hexdigest()[:8]
        return f"explaincam-{socket.gethostname()}-{name}-{suffix}"


def machine_fingerprint() -> str:
    """What tells this box from another: its machine id (systemd/D-Bus) and a MAC address."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine_id = Path(path).read_text().strip()
        except OSError:
            continue
        if machine_id:
            return f"{machine_id}-{uuid.getnode():012x}"
    return f"{uuid.getnode():012x}"


class MqttConfig(MqttConnectionConfig):
    """The MQTT broker and what the camera daemon publishes to it."""

    publish_jpeg: bool = Field(True, description="publish captioned frames as JPEGs on {prefix}/{camera}/snapshot")
    jpeg_interval_s: float = Field(10.0, ge=0, description=(
        "seconds between JPEGs on {prefix}/{camera}/snapshot at most (each one is a new state of Home "
        "Assistant's snapshot image); 0 = every caption"))
    stats_interval_s: float = Field(30.0, gt=0, description="seconds between messages on {prefix}/stats")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig, description="Home Assistant MQTT discovery")


class SnapshotConfig(StrictModel):
    """The snapshot folder: latest.jpg, latest.json and index.html."""

    enabled: bool = Field(True, description="write the snapshot files")
    dir: Path = Field(Path("/var/lib/explaincam"), description="folder of the snapshot files (created if missing)")
    min_interval_s: float = Field(1.0, ge=0, description="seconds between snapshot writes at most (spares SD cards); 0 = every caption")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of latest.jpg and the MQTT snapshot")
    width: int = Field(640, ge=64, le=4096, description="width of latest.jpg (the frame is scaled to it)")


class RemoteExplainConfig(StrictModel):
    """Explain jobs handed to the workers of a fleet (explain.mode remote or auto)."""

    retry_s: float = Field(60.0, gt=0, description=(
        "publish a job again when no worker said it holds it within this many seconds, or when its worker "
        "holds it longer than this per job ahead of it and its own (a hung worker); longer than one "
        "explanation takes on the slowest worker. A worker that goes offline has its jobs published "
        "again at once"))
    max_tries: int = Field(3, ge=1, le=20, description=(
        "publishes of one job at most; then the requester gets error `no_worker` (no worker announced "
        "itself) or `timeout`"))
    worker_stale_s: float = Field(30.0, gt=0, description=(
        "auto: a worker counts as present only if its announcement is at most this old "
        "(workers announce every worker.announce_interval_s)"))


class ExplainConfig(StrictModel):
    """The explainer: a local process started on the first request, or a fleet's workers."""

    mode: Literal["local", "remote", "auto"] = Field("local", description=(
        "local = this box's explainer process; remote = jobs for the fleet's workers over MQTT "
        "(`explaincam worker`); auto = the workers while one holding this bundle has announced itself, "
        "else local"))
    remote: RemoteExplainConfig = Field(default_factory=RemoteExplainConfig,
                                        description="fleet jobs (mode remote or auto)")
    idle_exit_s: float = Field(300, gt=0, description="end the explainer process after this many idle seconds")
    queue_size: int = Field(4, ge=1, description="requests waiting at most; more are answered `busy`")
    nice: int = Field(10, ge=0, le=19, description="niceness of the explainer process")
    max_request_bytes: int = Field(16384, ge=64, description="larger requests are refused")
    default_methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS), description=(
        "methods used when a request names none; gradcam, gradcampp, saliency, smoothgrad, integrated_gradients "
        "and ace explain the float32 twin (gradients), occlusion and rise the int8 model that captions"))
    backend: ExplainBackend = Field("auto", description=(
        "what runs the float model: litert (the bundle's explainer_float.tflite, no TensorFlow), tensorflow "
        "(captioner.keras; pip install 'explaincam[explain]'), or auto = litert when the bundle has the graph"))
    threads: int = Field(DEFAULT_THREADS, ge=1, le=16, description="threads of the explainer process's backend")
    batch_size: ExplainBatchSize = ExplainOptions.batch_size
    smoothgrad_samples: int = Field(ExplainOptions.smoothgrad_samples, ge=1, le=256,
                                    description="noisy copies per word for smoothgrad")
    ig_steps: int = Field(ExplainOptions.ig_steps, ge=2, le=512,
                          description="path steps per word for integrated_gradients")
    occlusion_steps: int = Field(ExplainOptions.occlusion_steps, ge=2, le=32, description=(
        "occlusion patch positions per axis: steps^2 frames through the int8 encoder (11: 121 frames)"))
    rise_masks: int = Field(ExplainOptions.rise_masks, ge=8, le=4096,
                            description="random masks (frames through the int8 encoder) for rise")
    gradcam_layer: str | None = Field(None, description=(
        "backbone layer for gradcam/gradcampp; null = the bundle manifest's gradcam_layer"))

    @field_validator("default_methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        known = list(METHODS)
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ValueError(f"unknown explanation method {unknown[0]!r}; known: {', '.join(known)}")
        return methods

    def options(self) -> ExplainOptions:
        """How hard the methods work, as these settings say."""
        return ExplainOptions(batch_size=self.batch_size, smoothgrad_samples=self.smoothgrad_samples,
                              ig_steps=self.ig_steps, occlusion_steps=self.occlusion_steps,
                              rise_masks=self.rise_masks)


class HistoryConfig(StrictModel):
    """The timeline: events (a stretch of frames with one caption) kept in SQLite on the box (daemon.history)."""

    enabled: bool = Field(True, description="keep events in {dir}/history.sqlite")
    dir: Path | None = Field(None, description=(
        "folder of the event store (history.sqlite); null = the history folder in snapshot.dir (the state folder)"))
    hold_frames: int = Field(2, ge=1, le=100, description=(
        "a caption seen in fewer consecutive frames than this, between two stretches of the same caption, "
        "is a flicker and makes no event of its own"))
    max_events_per_hour: int = Field(120, ge=1, description=(
        "events stored per hour at most (bursts of 10); more are dropped and counted"))
    max_frame_mb_per_day: float = Field(100.0, ge=0, description=(
        "MB of lossless key frames (what explains an event later) written per day at most; an event over "
        "it is kept without its lossless frame"))
    retention_days: float = Field(7.0, gt=0, description="events older than this are deleted")
    max_size_mb: float = Field(1024.0, gt=0, description="the store's size at most; the oldest events go first")
    queue_size: int = Field(64, ge=1, description="writes waiting at most; more are dropped and counted")
    thumbnail_px: int = Field(128, ge=32, le=640, description="side of the JPEG thumbnail kept per event")
    max_query_limit: int = Field(100, ge=1, le=1000, description="events one history query may ask for at most")
    explain: list[str] = Field(default_factory=lambda: ["gradcam"], description=(
        "methods that explain every word of each new event in the background (the local explainer, at low "
        "priority: a user's request goes first; not with explain.mode remote/auto); [] = none"))

    @field_validator("explain")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown explanation method {unknown[0]!r}; known: {', '.join(METHODS)}")
        return methods

    def folder(self, snapshot_dir: Path) -> Path:
        """Where the event store lives."""
        return self.dir if self.dir is not None else snapshot_dir / "history"


class AppConfig(StrictModel):
    """The whole daemon configuration (config.yaml)."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="captioning model")
    camera: CameraConfig = Field(default_factory=CameraConfig, description="camera and frame source")
    caption: CaptionConfig = Field(default_factory=CaptionConfig, description="caption loop")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT broker")
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig, description="snapshot folder")
    explain: ExplainConfig = Field(default_factory=ExplainConfig, description="explanations")
    history: HistoryConfig = Field(default_factory=HistoryConfig, description="the timeline of events")
    log_level: Literal[LOG_LEVELS] = Field("info", description="log level (stderr)")


class WorkerConfig(StrictModel):
    """A fleet worker (`explaincam worker -c worker.yaml`): explains the jobs of every camera on a broker."""

    id: str | None = Field(None, pattern=TOPIC_LEVEL, description=(
        "worker id, the {id} of {prefix}/workers/{id}; null = the host name"))
    group: str = Field("explainers", pattern=TOPIC_LEVEL, description=(
        "shared subscription group: each job goes to one worker of the group; give every worker of "
        "a fleet the same group"))
    bundles: list[Path] = Field(default_factory=lambda: [SHIPPED_BUNDLE], min_length=1, description=(
        "model bundle folders this worker explains; a job names its bundle by the sha256 of its manifest.json"))
    queue_size: int = Field(4, ge=1, description="jobs waiting at most; more are answered `busy` (the daemon tries another worker)")
    backend: ExplainBackend = Field("auto", description=(
        "what runs each bundle's float model: litert (the bundle's explainer_float.tflite, no TensorFlow), "
        "tensorflow (captioner.keras; a GPU when TensorFlow sees one), or auto = litert when the bundle has the graph"))
    threads: int = Field(DEFAULT_THREADS, ge=1, le=64, description="threads of the explainer's backend")
    batch_size: ExplainBatchSize = ExplainOptions.batch_size
    session_expiry_s: int = Field(0, ge=0, description=(
        "MQTT 5 session expiry: 0 = the broker forgets this worker's subscription when it disconnects; more "
        "= jobs wait in the broker for it that long (Mosquitto also keeps handing it its share of new jobs "
        "while it is away; the cameras re-publish those after explain.remote.retry_s)"))
    announce_interval_s: float = Field(10.0, gt=0, description=(
        "seconds between announcements (retained {prefix}/workers/{id}, with queue and rates)"))
    mqtt: MqttConnectionConfig = Field(default_factory=MqttConnectionConfig, description="MQTT broker (MQTT 5)")
    log_level: Literal[LOG_LEVELS] = Field("info", description="log level (stderr)")

    @field_validator("mqtt")
    @classmethod
    def _mqtt5(cls, mqtt: MqttConnectionConfig) -> MqttConnectionConfig:
        if mqtt.protocol != "5":
            raise ValueError("a worker needs MQTT 5 (shared subscriptions, response topics): set protocol: 5")
        return mqtt

    def worker_id(self) -> str:
        """The configured id, or one made from the host name."""
        return self.id or re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())

    def bundle_paths(self) -> list[Path]:
        """The bundle folders, each resolved like model.bundle (current directory, then install folder)."""
        return [ModelConfig(bundle=b).bundle_path() for b in self.bundles]
