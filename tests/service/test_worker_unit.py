"""The fleet worker's systemd unit: it verifies, its exposure stays low, and it keeps what the
worker needs (tests/service/test_unit.py explains how the unit is verified off /opt)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from daemon.service import render_unit
from tests.service.sandbox import unit_directives

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "explaincam-worker.service"
MAX_EXPOSURE = 2.0


def test_worker_unit_passes_systemd_analyze_verify(tmp_path):
    prefix = tmp_path / "explaincam"
    program = prefix / "venv" / "bin" / "explaincam"
    program.parent.mkdir(parents=True)
    program.symlink_to(shutil.which("explaincam", path=str(Path(sys.executable).parent)) or sys.executable)
    unit = tmp_path / "explaincam-worker.service"
    unit.write_text(render_unit(UNIT.read_text(), str(prefix)))

    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "explaincam-worker.service:" not in result.stdout + result.stderr


def test_worker_unit_security_exposure_is_at_most_2():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for explaincam-worker\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_worker_unit_keeps_what_the_worker_needs():
    d = unit_directives(UNIT)
    one = {key: values[-1] for key, values in d.items()}
    assert one["ExecStart"] == "/opt/explaincam/venv/bin/explaincam worker -c /etc/explaincam/worker.yaml"
    # daemon/fleet/worker.py sends READY=1 once subscribed; exit status 2 is a config error
    assert (one["Type"], one["NotifyAccess"], one["RestartPreventExitStatus"]) == ("notify", "main", "2")
    assert one["Restart"] == "on-failure"
    assert "mqtt-password:/etc/explaincam/mqtt-password" in d["LoadCredential"]
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # it writes nothing: no state folder; W^X memory needs TensorFlow's oneDNN off
    assert "StateDirectory" not in d and one["ProtectSystem"] == "strict"
    if one.get("MemoryDenyWriteExecute") == "yes":
        assert "TF_ENABLE_ONEDNN_OPTS=0" in " ".join(d["Environment"]).split()
