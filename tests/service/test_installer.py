"""``explaincam install-service`` in a scratch root: what it writes, that it keeps an edited
config, that it is idempotent, and what ``--uninstall`` leaves.

The source is a copy of this checkout's config.yaml and systemd/ files with a small
hash-checked bundle, so the test needs neither the trained model nor pip (``--skip-venv``).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon.bundle import write_manifest
from daemon.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/srv/explaincam"  # not the default, to see the unit rewritten
EXPECTED_FILES = {
    "srv/explaincam/README.md",
    "srv/explaincam/install-state.json",
    "etc/explaincam/config.yaml",
    "etc/explaincam/mqtt-password",
    "etc/sysusers.d/explaincam.conf",
    "etc/systemd/system/explaincam.service",
    "etc/systemd/system/explaincam@.service",
    "etc/systemd/system/explaincam.service.d/tensorflow.conf",  # the test bundle has no explainer graph
    "etc/systemd/system/explaincam@.service.d/tensorflow.conf",
}


@pytest.fixture
def source(tmp_path) -> Path:
    """An explaincam checkout: the real config and unit files, a small valid model bundle."""
    src = tmp_path / "source"
    (src / "systemd").mkdir(parents=True)
    shutil.copy(REPO / "config.yaml", src / "config.yaml")
    for name in ("explaincam.service", "explaincam@.service", "explaincam.sysusers"):
        shutil.copy(REPO / "systemd" / name, src / "systemd" / name)
    shutil.copy(REPO / "README.md", src / "README.md")
    bundle = src / "models" / Path(yaml.safe_load((src / "config.yaml").read_text())["model"]["bundle"]).name
    bundle.mkdir(parents=True)
    files = {"encoder_int8": "encoder_int8.tflite", "decoder": "decoder.npz", "vocab": "vocab.txt"}
    for name in files.values():
        (bundle / name).write_bytes(name.encode() * 100)
    write_manifest(bundle, {"model_name": bundle.name, "input": {"size": 96}, "files": files,
                            "special_tokens": {"start": "startseq", "end": "endseq", "pad_id": 0},
                            "max_length": 12})
    return src


def install(root: Path, source: Path, *extra: str) -> int:
    return cli(["install-service", "--root", str(root), "--prefix", PREFIX, "--source", str(source),
                "--skip-venv", *extra])


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def bundle_files(source: Path) -> set[str]:
    bundle = next((source / "models").iterdir())
    return {f"srv/explaincam/models/{bundle.name}/{p.name}" for p in bundle.iterdir()}


def test_install_writes_the_service_files(tmp_path, source, capsys):
    root = tmp_path / "root"
    assert install(root, source) == 0
    out = capsys.readouterr().out
    print(out)

    assert files_under(root) == EXPECTED_FILES | bundle_files(source)
    for path in EXPECTED_FILES - {"srv/explaincam/install-state.json"}:
        assert f"wrote      {root / path}" in out
    assert "skipped    systemctl" in out and "skipped    " + str(root / "srv/explaincam/venv") in out

    unit = (root / "etc/systemd/system/explaincam.service").read_text()
    assert f"ExecStart={PREFIX}/venv/bin/explaincam run -c /etc/explaincam/config.yaml" in unit
    assert "/opt/explaincam" not in unit

    config = (root / "etc/explaincam/config.yaml").read_text()
    bundle = next((source / "models").iterdir()).name
    assert yaml.safe_load(config)["model"]["bundle"] == f"{PREFIX}/models/{bundle}"
    source_lines = (source / "config.yaml").read_text().splitlines()
    changed = [line for line in config.splitlines() if line not in source_lines]
    assert len(changed) == 1 and "bundle:" in changed[0]  # comments and every other key kept

    password = root / "etc/explaincam/mqtt-password"
    assert password.read_bytes() == b"" and stat.S_IMODE(password.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc/explaincam/config.yaml").stat().st_mode) == 0o644

    # The sysusers file is what systemd-sysusers understands (dry run inside the scratch root).
    users = subprocess.run(["systemd-sysusers", f"--root={root}", "--dry-run", "explaincam.conf"],
                           capture_output=True, text=True)
    assert "Creating user 'explaincam'" in users.stdout + users.stderr, users.stdout + users.stderr


def test_second_run_changes_nothing(tmp_path, source, capsys):
    root = tmp_path / "root"
    install(root, source)
    before = {p: (root / p).stat().st_mtime_ns for p in files_under(root)}
    capsys.readouterr()
    assert install(root, source) == 0
    out = capsys.readouterr().out
    assert {p: (root / p).stat().st_mtime_ns for p in files_under(root)} == before
    assert "wrote" not in out and "updated" not in out
    assert out.count("unchanged") == 9  # bundle, README, config, state, sysusers, unit, template unit, 2 TensorFlow drop-ins


def test_edited_config_is_kept_and_the_default_goes_to_config_yaml_new(tmp_path, source, capsys):
    root = tmp_path / "root"
    install(root, source)
    config = root / "etc/explaincam/config.yaml"
    default = config.read_text()
    edited = default.replace("name: cam ", "name: porch")
    assert edited != default
    config.write_text(edited)
    capsys.readouterr()

    assert install(root, source) == 0
    out = capsys.readouterr().out
    print(out)
    assert config.read_text() == edited
    assert (root / "etc/explaincam/config.yaml.new").read_text() == default
    assert f"kept       {config}" in out and "config.yaml.new" in out

    assert install(root, source) == 0  # and again: still kept, .new unchanged
    assert config.read_text() == edited
    assert "unchanged  " + str(root / "etc/explaincam/config.yaml.new") in capsys.readouterr().out


def test_untouched_config_follows_a_new_default(tmp_path, source, capsys):
    root = tmp_path / "root"
    install(root, source)
    src_config = source / "config.yaml"
    src_config.write_text(src_config.read_text().replace("log_level: info", "log_level: warning"))
    capsys.readouterr()
    assert install(root, source) == 0
    assert "updated    " + str(root / "etc/explaincam/config.yaml") in capsys.readouterr().out
    assert yaml.safe_load((root / "etc/explaincam/config.yaml").read_text())["log_level"] == "warning"
    assert not (root / "etc/explaincam/config.yaml.new").exists()


def test_existing_password_file_is_left_alone(tmp_path, source):
    root = tmp_path / "root"
    password = root / "etc/explaincam/mqtt-password"
    password.parent.mkdir(parents=True)
    password.write_text("s3cret")
    install(root, source)
    assert password.read_text() == "s3cret"


def test_uninstall_removes_the_unit_and_keeps_the_config(tmp_path, source, capsys):
    root = tmp_path / "root"
    install(root, source)
    (root / "srv/explaincam/venv/bin").mkdir(parents=True)  # as if pip had run
    state = root / "var/lib/explaincam/latest.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    capsys.readouterr()

    assert install(root, source, "--uninstall") == 0
    out = capsys.readouterr().out
    print(out)
    assert files_under(root) == {"etc/explaincam/config.yaml", "etc/explaincam/mqtt-password",
                                 "etc/sysusers.d/explaincam.conf", "var/lib/explaincam/latest.json"}
    assert not (root / "srv/explaincam").exists()
    assert "removed    " + str(root / "etc/systemd/system/explaincam.service") in out
    assert "kept       " + str(root / "etc/explaincam") in out

    assert install(root, source, "--uninstall") == 0  # idempotent
    assert "absent" in capsys.readouterr().out

    assert install(root, source, "--uninstall", "--purge") == 0
    assert files_under(root) == set()


def test_corrupt_bundle_is_refused_before_anything_is_written(tmp_path, source, capsys):
    root = tmp_path / "root"
    bundle = next((source / "models").iterdir())
    (bundle / "vocab.txt").write_text("edited")
    assert install(root, source) == 1
    assert "does not match its sha256" in capsys.readouterr().err
    assert not root.exists() or files_under(root) == set()


def test_a_bundle_with_an_explainer_graph_gets_no_tensorflow_drop_in(tmp_path, source, capsys):
    """The unit's own memory limits fit the LiteRT explainer; the TensorFlow drop-in goes once the graph is there."""
    root = tmp_path / "root"
    drop_in = root / "etc/systemd/system/explaincam.service.d/tensorflow.conf"
    assert install(root, source) == 0 and "MemoryMax=1G" in drop_in.read_text()
    bundle = next((source / "models").iterdir())
    (bundle / "explainer_float.tflite").write_bytes(b"graph")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["explainer"] = "explainer_float.tflite"
    manifest["explainer"] = {"file": "explainer_float.tflite", "gradcam_layer": "moment_map"}
    write_manifest(bundle, manifest)
    assert install(root, source) == 0
    assert not drop_in.exists() and not drop_in.parent.exists()
    assert "MemoryMax=" in (root / "etc/systemd/system/explaincam.service").read_text()


def test_purge_needs_uninstall(tmp_path, source, capsys):
    assert install(tmp_path / "root", source, "--purge") == 1
    assert "--purge only goes with --uninstall" in capsys.readouterr().err


def test_a_camera_of_several_gets_its_own_config_and_the_template_unit(tmp_path, source, capsys):
    root = tmp_path / "root"
    assert install(root, source, "--camera", "cam2") == 0
    out = capsys.readouterr().out
    print(out)
    shared = EXPECTED_FILES - {"etc/explaincam/config.yaml"}
    assert files_under(root) == shared | {"etc/explaincam/cam2.yaml"} | bundle_files(source)
    template = (root / "etc/systemd/system/explaincam@.service").read_text()
    assert f"ExecStart={PREFIX}/venv/bin/explaincam run -c /etc/explaincam/%i.yaml" in template
    assert "StateDirectory=explaincam/%i" in template.splitlines()
    config = yaml.safe_load((root / "etc/explaincam/cam2.yaml").read_text())
    assert (config["camera"]["name"], config["snapshot"]["dir"]) == ("cam2", "/var/lib/explaincam/cam2")
    assert config["model"]["bundle"].startswith(f"{PREFIX}/models/")
    source_lines = (source / "config.yaml").read_text().splitlines()
    changed = [line for line in (root / "etc/explaincam/cam2.yaml").read_text().splitlines()
               if line not in source_lines]
    assert len(changed) == 3  # bundle, camera name, snapshot dir; comments kept

    # a second camera beside it; each one's edits are kept apart
    assert install(root, source, "--camera", "garden") == 0
    garden = root / "etc/explaincam/garden.yaml"
    garden.write_text(garden.read_text().replace("fps: 2.0", "fps: 1.0"))
    capsys.readouterr()
    assert install(root, source, "--camera", "cam2") == 0 and install(root, source, "--camera", "garden") == 0
    out = capsys.readouterr().out
    assert f"kept       {garden}" in out and "unchanged  " + str(root / "etc/explaincam/cam2.yaml") in out

    # uninstalling one camera leaves the other and the shared install
    (root / "var/lib/explaincam/cam2").mkdir(parents=True)
    assert install(root, source, "--uninstall", "--camera", "cam2", "--purge") == 0
    assert not (root / "etc/explaincam/cam2.yaml").exists() and not (root / "var/lib/explaincam/cam2").exists()
    assert garden.exists() and (root / "etc/systemd/system/explaincam@.service").exists()


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "config", "two words", ""])
def test_bad_camera_names_are_refused(tmp_path, source, capsys, name):
    assert install(tmp_path / "root", source, "--camera", name) == 1
    assert "--camera" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()
