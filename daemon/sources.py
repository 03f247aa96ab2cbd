"""Camera sources behind one interface, and the grab thread that keeps only the newest frame.

A ``FrameSource`` opens, reads RGB uint8 frames and closes: OpenCV (V4L2 device, RTSP/HTTP
URL, video file), a folder of images, Picamera2, and generated ``scenes`` (which attach
their ground-truth caption). ``FrameGrabber`` runs one source in a thread, keeps only the
newest frame (a slow model never lags behind a live camera), reopens a failing source with
exponential backoff and exposes its state (``starting``, ``ok``, ``retrying``, ``error``,
``ended``) for publishing. Nothing here ever stops the daemon because a camera went away.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.config import (ImagesSourceConfig, OpenCVSourceConfig, Picamera2SourceConfig, ScenesSourceConfig,
                           SourceConfigBase)
from daemon.imaging import read_image, to_rgb
from daemon.scenes import scene_at

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class SourceError(Exception):
    """A source cannot give a frame now; ``permanent`` when retrying cannot help soon."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class EndOfStream(Exception):
    """A finite source (video file or folder without ``loop``) has no more frames."""


class FrameSource(ABC):
    """One camera or file: ``open()``, then ``read()`` frames, then ``close()``."""

    #: seconds between reads for sources that do not pace themselves (files); 0 = read blocks
    interval_s: float = 0.0

    @abstractmethod
    def describe(self) -> str:
        """What the source reads, for logs and the state message."""

    @abstractmethod
    def open(self) -> None:
        """Open the source; raise SourceError with the reason if it cannot be."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray, str | None]:
        """The next RGB uint8 frame and its ground-truth caption (None if unknown).

        Raises SourceError when the source failed (it will be closed and reopened) and
        EndOfStream when a finite source is done.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the camera or file; safe to call twice."""


class OpenCVSource(FrameSource):
    """A V4L2 device, an RTSP/HTTP stream or a video file, read with OpenCV."""

    def __init__(self, config: OpenCVSourceConfig):
        self.config = config
        self._capture: cv2.VideoCapture | None = None

    def describe(self) -> str:
        c = self.config
        if c.path is not None:
            return f"video file {c.path}"
        if c.url is not None:
            return f"stream {c.url}"
        return f"camera {c.device}"

    def _open_capture(self) -> cv2.VideoCapture:
        c = self.config
        if c.path is not None:
            if not Path(c.path).is_file():
                raise SourceError(f"{c.path}: no such file")
            return cv2.VideoCapture(str(c.path))
        if c.url is not None:
            timeout_ms = int(c.open_timeout_s * 1000)
            return cv2.VideoCapture(c.url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                             cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        device = int(c.device) if isinstance(c.device, str) and c.device.isdigit() else c.device
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        return cv2.VideoCapture(device, backend)

    def open(self) -> None:
        self.close()
        capture = self._open_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.describe()}")
        c = self.config
        if c.path is not None:
            native_fps = capture.get(cv2.CAP_PROP_FPS)
            fps = c.fps or (native_fps if 0 < native_fps < 1000 else 25.0)
            self.interval_s = 1.0 / fps
        else:
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            if c.width:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
            if c.height:
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
            if c.fps and c.device is not None:
                capture.set(cv2.CAP_PROP_FPS, c.fps)
        self._capture = capture

    def read(self) -> tuple[np.ndarray, str | None]:
        if self._capture is None:
            raise SourceError(f"{self.describe()} is not open")
        ok, image = self._capture.read()
        if ok and image is not None:
            return to_rgb(image), None
        if self.config.path is None:
            raise SourceError(f"no frame from {self.describe()}")
        if not self.config.loop:
            raise EndOfStream(f"end of {self.describe()}")
        # End of the file: reopen it (not seek), so a file that was replaced or removed is noticed.
        self.open()
        ok, image = self._capture.read()
        if not ok or image is None:
            raise SourceError(f"no frames in {self.describe()}")
        return to_rgb(image), None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class ImageFolderSource(FrameSource):
    """Image files of a folder in name order; the folder is rescanned at every pass.

    An image's size is read from its header before it is decoded: one over ``max_pixels``
    is decoded at a reduced size (JPEG) or skipped, so a huge file cannot stall the daemon
    or eat its memory. A file that cannot be read is logged once (again only after it has
    been read fine in between).
    """

    def __init__(self, config: ImagesSourceConfig):
        self.config = config
        self.interval_s = 1.0 / config.fps
        self._files: list[Path] = []
        self._next = 0
        self._passes = 0
        self._skipped: dict[Path, str] = {}  # files logged as unusable, and why

    def describe(self) -> str:
        return f"image folder {self.config.path}"

    def _scan(self) -> list[Path]:
        folder = Path(self.config.path)
        if not folder.is_dir():
            raise SourceError(f"{folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise SourceError(f"no images in {folder}")
        return files

    def open(self) -> None:
        self._files, self._next, self._passes = self._scan(), 0, 0

    def read(self) -> tuple[np.ndarray, str | None]:
        for _ in range(len(self._files) + 1):
            if self._next >= len(self._files):
                self._passes += 1
                if not self.config.loop:
                    raise EndOfStream(f"end of {self.describe()}")
                self._files, self._next = self._scan(), 0
            path = self._files[self._next]
            self._next += 1
            image, problem = read_image(path, self.config.max_pixels)
            if image is not None:
                self._skipped.pop(path, None)
                return to_rgb(image), None
            if self._skipped.get(path) != problem:
                self._skipped[path] = problem
                log.warning("skipping %s: %s (logged once)", path, problem)
        raise SourceError(f"no readable images in {self.config.path}")

    def close(self) -> None:
        self._files = []


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera through Picamera2 (python3-picamera2, Raspberry Pi OS only)."""

    def __init__(self, config: Picamera2SourceConfig):
        self.config = config
        self._camera = None

    def describe(self) -> str:
        return f"Pi camera {self.config.camera_num}"

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2  # optional: only Raspberry Pi OS has python3-picamera2
        except ImportError:
            raise SourceError("picamera2 is not installed (sudo apt install python3-picamera2; "
                              "create the venv with --system-site-packages)", permanent=True) from None
        c = self.config
        try:
            camera = Picamera2(c.camera_num)
            # Picamera2 names formats by little-endian word order: "BGR888" arrays are R, G, B.
            camera.configure(camera.create_video_configuration(
                main={"size": (c.width, c.height), "format": "BGR888"}, controls={"FrameRate": c.fps}))
            camera.start()
        except Exception as exc:  # the library raises many kinds (RuntimeError, IndexError, OSError)
            raise SourceError(f"cannot open {self.describe()}: {exc}") from None
        self._camera = camera

    def read(self) -> tuple[np.ndarray, str | None]:
        if self._camera is None:
            raise SourceError(f"{self.describe()} is not open")
        try:
            return np.ascontiguousarray(self._camera.capture_array("main")[..., :3]), None
        except Exception as exc:
            raise SourceError(f"{self.describe()} failed: {exc}") from None

    def close(self) -> None:
        if self._camera is not None:
            camera, self._camera = self._camera, None
            try:
                camera.stop()
                camera.close()
            except Exception as exc:
                log.warning("closing %s: %s", self.describe(), exc)


class ScenesSource(FrameSource):
    """Generated scenes (daemon.scenes) with their ground-truth caption."""

    def __init__(self, config: ScenesSourceConfig):
        self.config = config
        self.interval_s = 1.0 / config.fps
        self.index = config.start

    def describe(self) -> str:
        return f"generated scenes (seed {self.config.seed})"

    def open(self) -> None:
        pass

    def read(self) -> tuple[np.ndarray, str | None]:
        scene = scene_at(self.config.seed, self.index)
        self.index += 1
        return scene.image, scene.caption

    def close(self) -> None:
        pass


SOURCE_CLASSES: dict[type, type[FrameSource]] = {
    OpenCVSourceConfig: OpenCVSource,
    ImagesSourceConfig: ImageFolderSource,
    Picamera2SourceConfig: Picamera2Source,
    ScenesSourceConfig: ScenesSource,
}


def make_source(config: SourceConfigBase) -> FrameSource:
    """The source for a ``camera.source`` config section."""
    return SOURCE_CLASSES[type(config)](config)


@dataclass(frozen=True)
class Frame:
    """A grabbed frame: sequence number, RGB image, wall-clock time and how long the grab took."""

    seq: int
    image: np.ndarray
    ts: float
    grab_started: float  # time.monotonic() when the read began
    grab_ms: float
    ground_truth: str | None = None


@dataclass(frozen=True)
class SourceState:
    """A source's condition: state, human-readable message, since when (Unix s), failures so far."""

    state: str  # starting | ok | retrying | error | ended
    message: str
    since: float
    failures: int = 0

    def to_json(self) -> dict:
        """The state as JSON (``since`` in Unix s); ``daemon.contract.source_message`` publishes it."""
        return {**asdict(self), "since": round(self.since, 3)}


class FrameGrabber:
    """Reads a source in a thread, keeping only its newest frame; reopens it with backoff on failure."""

    def __init__(self, source: FrameSource, retry_initial_s: float = 1.0, retry_max_s: float = 30.0):
        self.source = source
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = max(retry_max_s, retry_initial_s)
        self.grabbed = 0
        self.dropped = 0  # frames replaced by a newer one before anyone took them
        self._frame: Frame | None = None
        self._taken_seq = 0
        self._state = SourceState("starting", f"opening {source.describe()}", time.time())
        self._state_version = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SourceState:
        """The current source state."""
        with self._cond:
            return self._state

    @property
    def state_version(self) -> int:
        """A number that changes whenever the state does."""
        with self._cond:
            return self._state_version

    def start(self) -> None:
        """Start the grab thread."""
        self._thread = threading.Thread(target=self._run, name="grab", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the grab thread and release the source (waiting at most ``timeout`` s)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.1f s (a read is blocking)", self.source.describe(), timeout)

    def wait_started(self, timeout: float) -> bool:
        """Wait until the first frame came or the first open failed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state.state == "starting" and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def wait_frame(self, after_seq: int, timeout: float) -> Frame | None:
        """The newest frame newer than ``after_seq``, waiting up to ``timeout`` s for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.seq <= after_seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)
            self._taken_seq = self._frame.seq
            return self._frame

    def _set_state(self, state: str, message: str, failures: int) -> None:
        with self._cond:
            previous = self._state
            if (state, message, failures) == (previous.state, previous.message, previous.failures):
                return
            since = previous.since if state == previous.state else time.time()
            self._state = SourceState(state, message, since, failures)
            self._state_version += 1
            self._cond.notify_all()
        if (state, message) != (previous.state, previous.message):
            log.log(logging.INFO if state in ("ok", "ended") else logging.WARNING, "source %s: %s", state, message)

    def _offer(self, image: np.ndarray, ground_truth: str | None, started: float) -> None:
        now = time.monotonic()
        with self._cond:
            if self._frame is not None and self._frame.seq > self._taken_seq:
                self.dropped += 1
            self.grabbed += 1
            self._frame = Frame(self.grabbed, image, time.time(), started, round((now - started) * 1e3, 2), ground_truth)
            self._cond.notify_all()

    def _run(self) -> None:
        delay, failures = self.retry_initial_s, 0
        while not self._stop.is_set():
            grabbed_before, wait = self.grabbed, 0.0
            try:
                self.source.open()
                self._read_until_failure()
            except EndOfStream as exc:
                self._set_state("ended", str(exc), failures)
                break
            except Exception as exc:  # SourceError, or a driver bug: neither may end the grab thread
                if self.grabbed > grabbed_before:  # it worked for a while: back off afresh
                    delay, failures = self.retry_initial_s, 0
                failures += 1
                if isinstance(exc, SourceError):
                    message, permanent = str(exc), exc.permanent
                else:
                    log.exception("source %s raised", self.source.describe())
                    message, permanent = f"{type(exc).__name__}: {exc}", False
                wait = self.retry_max_s if permanent else delay
                self._set_state("error" if permanent else "retrying", f"{message}; retrying in {wait:g} s", failures)
                delay = min(delay * 2, self.retry_max_s)
            finally:
                self.source.close()
            self._stop.wait(wait)

    def _read_until_failure(self) -> None:
        """Read frames at the source's pace until stopped; SourceError/EndOfStream propagate."""
        next_due = time.monotonic()
        while not self._stop.is_set():
            if self.source.interval_s:
                if self._stop.wait(max(0.0, next_due - time.monotonic())):
                    return
                next_due = max(next_due + self.source.interval_s, time.monotonic())  # no catch-up bursts
            started = time.monotonic()
            image, ground_truth = self.source.read()
            self._offer(image, ground_truth, started)
            self._set_state("ok", f"reading {self.source.describe()}", 0)
