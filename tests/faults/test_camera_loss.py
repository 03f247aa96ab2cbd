"""The camera goes away and comes back: a video file disappears, a live network stream closes.

The stream is what an IP camera serves: MJPEG over HTTP (multipart/x-mixed-replace),
read by OpenCV's FFmpeg backend like an RTSP URL, endless until the server closes it.
The daemon must say ``retrying`` on its source topic, stay alive, and caption again soon
after the camera returns.
"""

from __future__ import annotations

import http.server
import threading
import time

import cv2
import pytest

from daemon.broker import free_port
from daemon.scenes import scene_at
from tests.conftest import CAMERA, CAPTION, SOURCE, START_TIMEOUT, daemon_config
from tests.faults.probes import figures, live_captions

SCENES = [scene_at(11, i) for i in range(6)]
JPEGS = [cv2.imencode(".jpg", cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
         for s in SCENES]
STREAM_FPS = 10
FAIL_LIMIT_S = 10.0  # the daemon reports the loss within this
RESUME_LIMIT_S = 5.0  # and captions again within this once the camera is back


def write_video(path) -> None:
    """An MJPG AVI of the scenes (one second at 6 fps)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 6, (224, 224))
    for scene in SCENES:
        writer.write(cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    writer.release()


class MjpegCamera:
    """An IP camera on loopback: an endless MJPEG stream over HTTP that can be closed and reopened."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/stream.mjpg"
        self._server = None
        self._closed = threading.Event()

    def open(self) -> None:
        """Start serving on the port."""
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                n = 0
                try:
                    while not camera._closed.wait(1 / STREAM_FPS):
                        jpeg = JPEGS[n % len(JPEGS)]
                        n += 1
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                except OSError:
                    pass

        self._closed.clear()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving and cut the streams being served."""
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def ip_camera():
    """An MjpegCamera on a free port, opened; closed at teardown."""
    camera = MjpegCamera(free_port())
    camera.open()
    yield camera
    camera.close()


def states(watcher, since: float) -> list[str]:
    """Source states published since ``since``."""
    return [m.json()["state"] for m in watcher.on(SOURCE, since)]


def run_outage(tmp_path, mosquitto, collect, daemon_process, source: dict, lose, restore, what: str):
    """Start the daemon on ``source``, ``lose()`` the camera, ``restore()`` it; check and report."""
    watcher = collect(mosquitto.port, CAPTION, SOURCE)
    config = daemon_config(tmp_path, mosquitto.port,
                           camera={"name": CAMERA, "source": {**source, "retry_initial_s": 0.2, "retry_max_s": 1}})
    daemon = daemon_process(config)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    lost_at = time.monotonic()
    lose()
    failed = watcher.wait_for(SOURCE, lambda m: m.json()["state"] == "retrying", since=lost_at, timeout=FAIL_LIMIT_S)
    # it keeps trying while the camera is away, and stays alive
    time.sleep(2.0)
    assert daemon.process.poll() is None, daemon.log()
    assert set(states(watcher, lost_at)) == {"retrying"}, states(watcher, lost_at)
    failures = watcher.on(SOURCE)[-1].json()["failures"]
    assert failures >= 2, f"only {failures} reopen attempts in 2 s"
    back_at = time.monotonic()
    restore()
    recovered = watcher.wait_for(SOURCE, lambda m: m.json()["state"] == "ok", since=back_at, timeout=RESUME_LIMIT_S)
    caption = watcher.wait_for(CAPTION, lambda m: not m.retain, since=recovered.at, timeout=RESUME_LIMIT_S)
    time.sleep(1.0)
    after = [m.json() for m in live_captions(watcher, recovered.at)]
    truths = {s.caption for s in SCENES}
    assert any(record["caption"] in truths for record in after), [r["caption"] for r in after]
    assert daemon.process.poll() is None and "Traceback" not in daemon.log()
    figures(f"camera_loss[{what}]", reported_lost_after_s=round(failed.at - lost_at, 2),
            reopen_attempts_while_away=failures, captions_again_after_s=round(caption.at - back_at, 2),
            captions_in_1s_after=len(after))


def test_video_file_disappears_and_returns(tmp_path, mosquitto, collect, daemon_process):
    video = tmp_path / "camera.avi"
    write_video(video)
    run_outage(tmp_path, mosquitto, collect, daemon_process, {"type": "opencv", "path": str(video), "fps": 10},
               video.unlink, lambda: write_video(video), "video file")


def test_live_stream_closes_and_returns(tmp_path, mosquitto, collect, daemon_process, ip_camera):
    run_outage(tmp_path, mosquitto, collect, daemon_process,
               {"type": "opencv", "url": ip_camera.url, "open_timeout_s": 2},
               ip_camera.close, ip_camera.open, "live MJPEG stream")
