"""The snapshot page is package data: a built wheel carries it, and the daemon lays down those files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from daemon.snapshot import SnapshotFolder
from tests.conftest import REPO


def test_the_wheel_ships_the_page_the_daemon_writes(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for package in ("daemon", "convert"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("explaincam-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in ("daemon/page/index.html", "daemon/page/page.js")}

    folder = SnapshotFolder(tmp_path / "snapshot", "cam", min_interval_s=0)
    folder.write(b"jpeg", {"frame_id": 1, "caption": "x"})
    assert (tmp_path / "snapshot" / "page.js").read_bytes() == shipped["daemon/page/page.js"]
    page = (tmp_path / "snapshot" / "index.html").read_text()
    assert page == shipped["daemon/page/index.html"].decode().replace("__CAMERA__", "cam").replace(
        "__REFRESH_MS__", "1000")
    assert '<script src="page.js" data-refresh-ms="1000"></script>' in page
