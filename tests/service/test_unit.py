"""The systemd unit: it verifies, its exposure stays low (tests/service/unit_checks.py), and
hardening never takes away what the daemon needs."""

from __future__ import annotations

from pathlib import Path

from tests.service.sandbox import unit_directives
from tests.service.unit_checks import MAX_EXPOSURE, exposure, verify_output

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "explaincam.service"
TEMPLATE = REPO / "systemd" / "explaincam@.service"  # explaincam@NAME: one daemon per camera


def test_unit_passes_systemd_analyze_verify(tmp_path):
    output = verify_output(UNIT, tmp_path)
    print(output)
    assert "explaincam.service:" not in output  # no warning about a line of ours


def test_security_exposure_is_at_most_2():
    assert exposure(UNIT) <= MAX_EXPOSURE


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
    output = verify_output(TEMPLATE, tmp_path, "explaincam@cam2.service")  # an instance loads the template beside it
    print(output)
    assert "explaincam@" not in output


def test_template_unit_security_exposure_is_at_most_2(tmp_path):
    instance = tmp_path / "explaincam@cam2.service"
    instance.write_text(TEMPLATE.read_text())
    assert exposure(instance) <= MAX_EXPOSURE


def test_template_unit_is_the_single_unit_but_for_the_instance_lines():
    """Both units stay hardened alike: the template differs only where it names the camera."""
    single, template = unit_directives(UNIT), unit_directives(TEMPLATE)
    differing = {key for key in single.keys() | template.keys() if single.get(key) != template.get(key)}
    assert differing == {"Description", "ExecStart", "StateDirectory"}
    assert template["ExecStart"] == ["/opt/explaincam/venv/bin/explaincam run -c /etc/explaincam/%i.yaml"]
    assert template["StateDirectory"] == ["explaincam/%i"]  # a snapshot folder per camera
    assert "%i" in template["Description"][0]
