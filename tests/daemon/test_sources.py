"""Camera sources and the grab thread: newest frame only, failures retried with backoff, state exposed."""

from __future__ import annotations

import functools
import http.server
import sys
import shutil
import threading

import cv2
import numpy as np
import pytest

from daemon.config import ImagesSourceConfig, OpenCVSourceConfig, Picamera2SourceConfig, ScenesSourceConfig
from daemon.broker import free_port
from daemon.scenes import scene_at
from daemon.sources import FrameGrabber, FrameSource, SourceError, make_source
from tests.conftest import wait_until


@pytest.fixture
def grabbers():
    """Factory for grabbers that are stopped at teardown."""
    started = []

    def make(config, **kwargs) -> FrameGrabber:
        grabber = FrameGrabber(make_source(config), config.retry_initial_s, config.retry_max_s, **kwargs)
        grabber.start()
        started.append(grabber)
        return grabber

    yield make
    for grabber in started:
        grabber.stop()


def write_images(folder, count, size=(48, 64)):
    folder.mkdir(exist_ok=True)
    for i in range(count):
        image = np.full((*size, 3), 40 * i, np.uint8)
        cv2.imwrite(str(folder / f"img{i:02d}.png"), image)


def write_video(path, frames=6, fps=25, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (30 * i) % 256, np.uint8))
    writer.release()


def wait_state(grabber, state, timeout=5.0):
    return wait_until(lambda: grabber.state if grabber.state.state == state else None, timeout,
                      message=f"source state {state} (now {grabber.state})")


def test_scenes_source_attaches_ground_truth(grabbers):
    grabber = grabbers(ScenesSourceConfig(type="scenes", seed=7, start=3, fps=50))
    frame = grabber.wait_frame(0, timeout=5)
    expected = scene_at(7, 3)
    assert frame.ground_truth == expected.caption
    assert np.array_equal(frame.image, expected.image) and frame.image.dtype == np.uint8
    assert frame.grab_ms >= 0 and grabber.state.state == "ok"


def test_grabber_keeps_only_the_newest_frame(grabbers):
    grabber = grabbers(ScenesSourceConfig(type="scenes", fps=100))
    wait_until(lambda: grabber.grabbed >= 8, 5, message="eight frames")
    frame = grabber.wait_frame(0, timeout=1)
    assert frame.seq >= 8 and grabber.dropped >= 6  # nobody took the earlier ones
    assert grabber.wait_frame(frame.seq, timeout=1).seq > frame.seq
    assert grabber.wait_frame(10**9, timeout=0.05) is None


def test_images_folder_emptied_then_refilled(grabbers, tmp_path):
    folder = tmp_path / "pictures"
    write_images(folder, 3)
    grabber = grabbers(ImagesSourceConfig(type="images", path=folder, fps=20, retry_initial_s=0.1, retry_max_s=0.2))
    first = grabber.wait_frame(0, timeout=5)
    assert first.image.shape == (48, 64, 3) and first.ground_truth is None
    shutil.rmtree(folder)
    folder.mkdir()
    state = wait_state(grabber, "retrying")
    assert "no images in" in state.message and state.failures >= 1
    write_images(folder, 2)
    wait_state(grabber, "ok")
    seq = grabber.wait_frame(0, timeout=1).seq
    assert grabber.wait_frame(seq, timeout=2) is not None


def test_video_file_loops_and_comes_back_after_removal(grabbers, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames=6)
    grabber = grabbers(OpenCVSourceConfig(type="opencv", path=video, fps=50, retry_initial_s=0.1, retry_max_s=0.2))
    wait_until(lambda: grabber.grabbed > 12, 5, message="frames beyond the end of the file (loop)")
    assert grabber.state.state == "ok"
    moved = tmp_path / "elsewhere.avi"
    video.rename(moved)
    state = wait_state(grabber, "retrying")
    assert "no such file" in state.message
    moved.rename(video)
    wait_state(grabber, "ok")


def test_video_file_without_loop_ends(grabbers, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames=4)
    grabber = grabbers(OpenCVSourceConfig(type="opencv", path=video, fps=50, loop=False))
    state = wait_state(grabber, "ended")
    assert grabber.grabbed == 4 and "end of video file" in state.message


def test_missing_camera_is_retried_with_exponential_backoff(grabbers, tmp_path):
    grabber = grabbers(ImagesSourceConfig(type="images", path=tmp_path / "nowhere", retry_initial_s=0.05, retry_max_s=0.2))
    first = wait_state(grabber, "retrying")  # a busy box may first look after the second failure
    assert first.message.endswith(f"retrying in {min(0.05 * 2 ** (first.failures - 1), 0.2):g} s"), first
    later = wait_until(lambda: grabber.state if grabber.state.failures >= 4 else None, 5, message="four failures")
    assert later.message.endswith("retrying in 0.2 s") and "no such folder" in later.message


def test_stop_releases_the_source_promptly(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video)
    source = make_source(OpenCVSourceConfig(type="opencv", path=video))
    grabber = FrameGrabber(source)
    grabber.start()
    assert grabber.wait_frame(0, timeout=5) is not None
    grabber.stop(timeout=1)
    assert not grabber._thread.is_alive() and source._capture is None


class ExplodingSource(FrameSource):
    """A driver that crashes on its second read, then works again after reopening."""

    interval_s = 0.01

    def __init__(self):
        self.reads = 0
        self.opened = 0

    def describe(self):
        return "exploding test source"

    def open(self):
        self.opened += 1

    def read(self):
        self.reads += 1
        if self.reads == 2:
            raise ZeroDivisionError("driver bug")
        return np.zeros((8, 8, 3), np.uint8), None

    def close(self):
        pass


def test_a_crashing_driver_does_not_end_the_grab_thread():
    source = ExplodingSource()
    grabber = FrameGrabber(source, retry_initial_s=0.05)
    grabber.start()
    try:
        wait_until(lambda: source.opened >= 2 and grabber.grabbed >= 3, 5, message="reopen after the crash")
        assert grabber.state.state == "ok"
    finally:
        grabber.stop()


def test_picamera2_without_the_library_is_an_error_state(grabbers, monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as on a box without it
    grabber = grabbers(Picamera2SourceConfig(type="picamera2", retry_max_s=5))
    state = wait_state(grabber, "error")
    assert "python3-picamera2" in state.message and "retrying in 5 s" in state.message


def test_missing_v4l2_device_is_retried(grabbers):
    grabber = grabbers(OpenCVSourceConfig(type="opencv", device="/dev/video97", retry_initial_s=0.1))
    assert "cannot open camera /dev/video97" in wait_state(grabber, "retrying").message


def test_source_error_is_permanent_only_when_said():
    assert not SourceError("x").permanent and SourceError("x", permanent=True).permanent


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_folder(folder, port):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_stream_url_that_goes_away_and_comes_back(grabbers, tmp_path):
    write_video(tmp_path / "clip.avi", frames=10)
    port = free_port()
    server = serve_folder(tmp_path, port)
    grabber = grabbers(OpenCVSourceConfig(type="opencv", url=f"http://127.0.0.1:{port}/clip.avi", open_timeout_s=2,
                                          retry_initial_s=0.1, retry_max_s=0.3))
    try:
        assert grabber.wait_frame(0, timeout=10).image.shape == (48, 64, 3)
        server.shutdown()
        server.server_close()
        # A ten-frame file read at full speed ends within milliseconds and is reopened, so the state
        # flips between ok and retrying; "cannot open" is what says the server is gone.
        state = wait_until(lambda: grabber.state if "cannot open" in grabber.state.message else None, 20,
                           message=f"the stream to be refused (now {grabber.state})")
        assert state.state == "retrying" and "stream http://127.0.0.1" in state.message
        refused_at_seq = grabber.grabbed
        server = serve_folder(tmp_path, port)
        frame = grabber.wait_frame(refused_at_seq, timeout=20)
        assert frame is not None and frame.image.shape == (48, 64, 3)
    finally:
        server.shutdown()
        server.server_close()
