"""The systemd unit: it verifies, its exposure stays low, and hardening never takes away
what the daemon needs.

``systemd-analyze verify`` also checks that ExecStart's program exists, and
/opt/explaincam is not installed on a test machine. So the test verifies the unit as the
installer writes it for another prefix (``render_unit``), a temporary folder whose
venv/bin/explaincam is a link to this checkout's ``explaincam`` (or Python): the real
file, only the prefix differs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from daemon.service import render_unit
from tests.service.sandbox import unit_directives

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "explaincam.service"
TEMPLATE = REPO / "systemd" / "explaincam@.service"  # explaincam@NAME: one daemon per camera
MAX_EXPOSURE = 2.0


def test_unit_passes_systemd_analyze_verify(tmp_path):
    prefix = tmp_path / "explaincam"
    program = prefix / "venv" / "bin" / "explaincam"
    program.parent.mkdir(parents=True)
    program.symlink_to(shutil.which("explaincam", path=str(Path(sys.executable).parent)) or sys.executable)
    unit = tmp_path / "explaincam.service"
    unit.write_text(render_unit(UNIT.read_text(), str(prefix)))

    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    print(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "explaincam.service:" not in result.stdout + result.stderr  # no warning about a line of ours


def test_security_exposure_is_at_most_2():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for explaincam\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_keeps_what_the_daemon_needs():
    d = unit_directives(UNIT)
    one = {key: values[-1] for key, values in d.items()}
    # Start-up, watchdog and restarts match daemon/app.py and daemon/notify.py.
    assert (one["Type"], one["NotifyAccess"]) == ("notify", "main")
    assert one["ExecStart"] == "/opt/explaincam/venv/bin/explaincam run -c /etc/explaincam/config.yaml"
    assert one["WatchdogSec"] and one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "2"  # EXIT_CONFIG: a restart would not help
    # Camera access: the video group and the device ACL, instead of PrivateDevices.
    assert "video" in one["SupplementaryGroups"].split()
    assert one["DevicePolicy"] == "closed" and "PrivateDevices" not in d
    assert "char-video4linux rw" in d["DeviceAllow"]
    # Files: the snapshot folder, the password credential.
    assert one["StateDirectory"] == "explaincam"
    assert "mqtt-password:/etc/explaincam/mqtt-password" in d["LoadCredential"]
    # MQTT over IPv4/IPv6, sd_notify over AF_UNIX.
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # W^X memory breaks TensorFlow's oneDNN JIT, so it must be off whenever W^X is enforced.
    if one.get("MemoryDenyWriteExecute") == "yes":
        assert "TF_ENABLE_ONEDNN_OPTS=0" in " ".join(d["Environment"]).split()
    # The explainer lowers its own priority (explain.nice): setpriority must stay allowed.
    assert d["SystemCallFilter"][-1] == "setpriority" and one["SystemCallErrorNumber"] == "EPERM"
    # LiteRT's XNNPACK reads /proc/cpuinfo on ARM.
    assert one.get("ProcSubset", "all") == "all"


def test_template_unit_passes_systemd_analyze_verify_as_an_instance(tmp_path):
    prefix = tmp_path / "explaincam"
    program = prefix / "venv" / "bin" / "explaincam"
    program.parent.mkdir(parents=True)
    program.symlink_to(shutil.which("explaincam", path=str(Path(sys.executable).parent)) or sys.executable)
    (tmp_path / TEMPLATE.name).write_text(render_unit(TEMPLATE.read_text(), str(prefix)))

    # an instance path loads the template beside it
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "explaincam@cam2.service")],
                            capture_output=True, text=True)
    print(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "explaincam@" not in result.stdout + result.stderr


def test_template_unit_security_exposure_is_at_most_2(tmp_path):
    instance = tmp_path / "explaincam@cam2.service"
    instance.write_text(TEMPLATE.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(instance)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for explaincam@cam2\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security exposure of the template: {match.group(1)}")
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_template_unit_is_the_single_unit_but_for_the_instance_lines():
    """Both units stay hardened alike: the template differs only where it names the camera."""
    single, template = unit_directives(UNIT), unit_directives(TEMPLATE)
    differing = {key for key in single.keys() | template.keys() if single.get(key) != template.get(key)}
    assert differing == {"Description", "ExecStart", "StateDirectory"}
    assert template["ExecStart"] == ["/opt/explaincam/venv/bin/explaincam run -c /etc/explaincam/%i.yaml"]
    assert template["StateDirectory"] == ["explaincam/%i"]  # a snapshot folder per camera
    assert "%i" in template["Description"][0]
