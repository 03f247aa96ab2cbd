"""What every systemd unit of ours must pass: ``systemd-analyze verify`` and a low exposure.

``systemd-analyze verify`` also checks that ExecStart's program exists, and /opt/explaincam
is not installed on a test machine. So a unit is verified as the installer writes it for
another prefix (``render_unit``), a temporary folder whose venv/bin/explaincam is a link to
this checkout's ``explaincam`` (or Python): the real file, only the prefix differs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from daemon.install import render_unit

MAX_EXPOSURE = 2.0


def verify_output(unit_source: Path, tmp_path: Path, instance: str | None = None) -> str:
    """What ``systemd-analyze verify`` says of the unit rendered for a scratch prefix (asserts it passed);
    ``instance`` (e.g. ``explaincam@cam2.service``) verifies that instance of a template unit."""
    prefix = tmp_path / "explaincam"
    program = prefix / "venv" / "bin" / "explaincam"
    program.parent.mkdir(parents=True)
    program.symlink_to(shutil.which("explaincam", path=str(Path(sys.executable).parent)) or sys.executable)
    unit = tmp_path / unit_source.name
    unit.write_text(render_unit(unit_source.read_text(), str(prefix)))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / (instance or unit.name))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def exposure(unit_file: Path) -> float:
    """The overall exposure ``systemd-analyze security --offline=yes`` gives the unit file."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_file)],
                            capture_output=True, text=True)
    match = re.search(rf"Overall exposure level for {re.escape(unit_file.name)}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security exposure of {unit_file.name}: {match.group(1)}")
    return float(match.group(1))
