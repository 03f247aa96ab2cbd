"""The fleet worker's systemd unit: it verifies, its exposure stays low, and it keeps what the
worker needs (tests/service/test_unit.py explains how the unit is verified off /opt)."""

from __future__ import annotations

from pathlib import Path

from tests.service.sandbox import unit_directives
from tests.service.unit_checks import MAX_EXPOSURE, exposure, verify_output

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "explaincam-worker.service"


def test_worker_unit_passes_systemd_analyze_verify(tmp_path):
    assert "explaincam-worker.service:" not in verify_output(UNIT, tmp_path)


def test_worker_unit_security_exposure_is_at_most_2():
    assert exposure(UNIT) <= MAX_EXPOSURE


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
