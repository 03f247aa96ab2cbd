"""File faults: a snapshot folder that refuses writes, and an image folder with bad and huge files.

- The snapshot folder becomes unwritable while the daemon captions five frames a second:
  one log line says so (not one per frame), captioning goes on, and one line says when the
  files are written again.
- An ``images`` folder holds an unreadable file, a PNG and a JPEG larger than
  ``max_pixels``: each problem file is logged once however many passes are made, the JPEG
  is read at a reduced size, and the good images keep being captioned.
"""

from __future__ import annotations

import json
import time

import cv2
import numpy as np

from daemon.scenes import scene_at
from tests.conftest import CAPTION, START_TIMEOUT, daemon_config, wait_until
from tests.faults.probes import figures, live_captions

UNWRITABLE = "/sys/kernel"  # a folder even root cannot create files in (sysfs): writes fail with EACCES


def test_unwritable_snapshot_folder_is_logged_once_and_its_recovery_too(tmp_path, mosquitto, collect, daemon_process):
    daemon = daemon_process(daemon_config(tmp_path, mosquitto.port, caption={"rate": 5}))
    watcher = collect(mosquitto.port, CAPTION)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    folder = tmp_path / "snapshot"
    wait_until((folder / "latest.json").exists, 10, message="the first snapshot")

    # the folder turns unwritable (a read-only remount, wrong owner): here it is swapped for sysfs
    kept = tmp_path / "snapshot-kept"
    folder.rename(kept)
    folder.symlink_to(UNWRITABLE, target_is_directory=True)
    broken_at = time.monotonic()
    time.sleep(4.0)
    during = len(live_captions(watcher, broken_at))
    folder.unlink()
    kept.rename(folder)
    before = json.loads((folder / "latest.json").read_text())["frame_id"]
    wait_until(lambda: json.loads((folder / "latest.json").read_text())["frame_id"] > before, 10,
               message="snapshots written again")
    time.sleep(1.0)
    log = daemon.log()
    errors = log.count("cannot write the snapshot files")
    recovered = log.count("can write the snapshot files")
    assert during >= 10, f"only {during} captions while the folder was unwritable"
    assert errors == 1 and recovered == 1, log
    assert "Permission denied" in log and daemon.process.poll() is None
    figures("unwritable_snapshot_folder", captions_while_unwritable=during, error_lines=errors,
            recovery_lines=recovered)


def test_bad_and_huge_images_are_logged_once(tmp_path, mosquitto, collect, daemon_process):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for n in range(2):
        cv2.imwrite(str(folder / f"good{n}.jpg"), cv2.cvtColor(scene_at(7, n).image, cv2.COLOR_RGB2BGR))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG after all")
    big = cv2.resize(cv2.cvtColor(scene_at(7, 2).image, cv2.COLOR_RGB2BGR), (1200, 1000))
    cv2.imwrite(str(folder / "huge.png"), big)  # 1.2 Mpx > max_pixels: skipped (PNG cannot be read reduced)
    cv2.imwrite(str(folder / "huge.jpg"), big)  # read at 1/4 size: 300x250
    source = {"type": "images", "path": str(folder), "fps": 20, "max_pixels": 200_000}
    config = daemon_config(tmp_path, mosquitto.port, caption={"rate": 0},
                           camera={"name": "testcam", "source": source})
    daemon = daemon_process(config)
    watcher = collect(mosquitto.port, CAPTION)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    time.sleep(4.0)  # about 16 passes over the folder
    log = daemon.log()
    broken = log.count("broken.jpg")
    png = log.count("huge.png")
    assert broken == 1 and "not a readable image" in log, log
    assert png == 1 and "1200x1000 is larger than camera.source.max_pixels" in log, log
    assert "huge.jpg" not in log, log
    captions = len(live_captions(watcher))
    assert captions >= 20, f"only {captions} captions"
    assert daemon.process.poll() is None
    figures("image_folder_faults", log_lines_broken=broken, log_lines_huge_png=png, captions_in_4s=captions)


def test_max_pixels_reads_a_huge_jpeg_at_a_reduced_size(tmp_path):
    """The reduced read itself, on the real decoder: the shape says what was decoded."""
    from daemon.imaging import read_image

    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), np.full((2000, 3000, 3), 127, np.uint8))
    image, _ = read_image(path, 500_000)  # 6 Mpx: 1/4 gives 750x500 = 375 kpx
    assert image.shape == (500, 750, 3)
    image, _ = read_image(path, 6_000_000)
    assert image.shape == (2000, 3000, 3)
    image, why = read_image(path, 50_000)  # 1/8 still gives 94 kpx
    assert image is None and "larger than camera.source.max_pixels" in why
