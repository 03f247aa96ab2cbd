"""``explaincam install-service``: install explaincam as a systemd service, or remove it.

Under ``--root`` (default ``/``; tests give a scratch folder) it writes::

    {prefix}/venv/                          python -m venv, pip install <source> (LiteRT explainer), or
                                            <source>[explain] when the bundle has no explainer graph
    {prefix}/models/<bundle>/               the bundle that <source>/config.yaml names
    {prefix}/README.md                     the project README (the unit's Documentation=)
    /etc/explaincam/config.yaml             <source>/config.yaml, model.bundle -> {prefix}/models/<bundle>
    /etc/explaincam/mqtt-password           empty, mode 0600, only if missing (LoadCredential= needs it)
    /etc/sysusers.d/explaincam.conf         the `explaincam` system user
    /etc/systemd/system/explaincam.service  systemd/explaincam.service, rewritten for {prefix}
    /etc/systemd/system/explaincam@.service systemd/explaincam@.service (one daemon per camera), likewise
    /etc/systemd/system/explaincam{,@}.service.d/tensorflow.conf
                                            only for a bundle without an explainer graph: the memory
                                            limits of the TensorFlow explainer (removed otherwise)

With ``--camera NAME`` (a box with several cameras) the configuration is
``/etc/explaincam/NAME.yaml`` instead (``camera.name: NAME``, ``snapshot.dir:
/var/lib/explaincam/NAME``) and the unit enabled is ``explaincam@NAME``; the shared files
above are installed (or left unchanged) as without it.

and, only when the root is ``/``: ``systemd-sysusers``, ``systemctl daemon-reload`` and
``systemctl enable --now explaincam`` (or ``explaincam@NAME``; a restart instead if it was running).

A config.yaml the user edited is never overwritten: the new default goes beside it as
config.yaml.new. One the installer wrote and nobody touched since (its sha256 is in
{prefix}/install-state.json) is updated. Every file is written to a temporary name and
renamed into place; a second run with the same source changes nothing.

``--uninstall`` stops and disables the units (every ``explaincam@`` instance too) and removes
them, the venv and the models; the configuration (/etc/explaincam) and the snapshot folder
(/var/lib/explaincam) stay unless ``--purge`` is given. ``--uninstall --camera NAME`` stops
and disables ``explaincam@NAME`` only (``--purge``: and removes NAME.yaml and its snapshot
folder). The system user stays (``userdel explaincam`` removes it).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from daemon.bundle import BundleError, load_bundle
from daemon.explain.backends import explainer_graph
from daemon.files import write_atomically

UNIT_NAME = "explaincam.service"
TEMPLATE_NAME = "explaincam@.service"  # explaincam@NAME.service: one daemon per camera
# A camera name that is also a file name and a systemd instance name (no leading dot: no "..")
CAMERA_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DEFAULT_PREFIX = "/opt/explaincam"  # the prefix systemd/explaincam.service is written for
CONFIG_DIR = Path("/etc/explaincam")
STATE_DIR = Path("/var/lib/explaincam")
UNIT_DIR = Path("/etc/systemd/system")
SYSUSERS_FILE = Path("/etc/sysusers.d/explaincam.conf")
# The unit's memory limits fit the LiteRT explainer; the TensorFlow fallback needs more.
TENSORFLOW_DROP_IN = """# Written by `explaincam install-service`: the model bundle has no explainer graph
# (explainer_float.tflite), so explanations run on the TensorFlow fallback, which needs
# about 0.7-1 GB while it runs. `explaincam export-explainer --bundle DIR` and a reinstall remove this file.
[Service]
MemoryHigh=800M
MemoryMax=1G
"""
SOURCE_DEFAULT = Path(__file__).resolve().parent.parent


class InstallError(Exception):
    """The installation cannot go on; the message says why."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam install-service``."""
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="install under this folder instead of / (staging, tests); systemctl runs only for /")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help=f"install folder of the venv and the models (default: {DEFAULT_PREFIX})")
    parser.add_argument("--source", type=Path, default=SOURCE_DEFAULT,
                        help="explaincam checkout to install from (default: the one this command runs from)")
    parser.add_argument("--camera", metavar="NAME", default=None, help=(
        "one of several cameras: write /etc/explaincam/NAME.yaml and enable explaincam@NAME "
        "(with --uninstall: remove only that camera's service)"))
    parser.add_argument("--no-enable", action="store_true", help="install, but do not enable or start the unit")
    parser.add_argument("--skip-venv", action="store_true", help="do not create the venv or run pip (tests)")
    parser.add_argument("--uninstall", action="store_true", help="stop, disable and remove the service")
    parser.add_argument("--purge", action="store_true",
                        help="with --uninstall: also remove /etc/explaincam and /var/lib/explaincam")


def main(args: argparse.Namespace) -> int:
    """Install or uninstall; 0 on success, 1 with a message on stderr otherwise."""
    try:
        if args.purge and not args.uninstall:
            raise InstallError("--purge only goes with --uninstall")
        if not args.prefix.startswith("/"):
            raise InstallError(f"--prefix must be an absolute path, not {args.prefix!r}")
        if args.camera is not None and (not CAMERA_NAME.fullmatch(args.camera) or args.camera == "config"):
            raise InstallError(f"--camera {args.camera!r}: use letters, digits, _ . - "
                               "(not first: . -; and not 'config')")
        installer = Installer(args.root, args.prefix.rstrip("/") or "/", args.camera)
        if installer.live and os.geteuid() != 0:
            raise InstallError("installing into / needs root: run it with sudo (or give --root DIR)")
        if args.uninstall:
            installer.uninstall(purge=args.purge)
        else:
            installer.install(args.source.resolve(), enable=not args.no_enable, make_venv=not args.skip_venv)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def render_unit(text: str, prefix: str) -> str:
    """The unit file text for an install folder other than /opt/explaincam."""
    return text.replace(DEFAULT_PREFIX, prefix)


def _set_value(text: str, section: str, key: str, value: str) -> str:
    """YAML text with ``section.key`` (a key of a top-level section) set to ``value``; comments and
    layout are kept; InstallError if it is not there."""
    literal = value if re.fullmatch(r"[\w./-]+", value) else json.dumps(value)
    lines = text.splitlines(keepends=True)
    in_section = False
    for i, line in enumerate(lines):
        if re.match(r"[^\s#]", line):
            in_section = re.match(rf"{section}:\s*(#.*)?$", line) is not None
        elif in_section and (match := re.match(rf"([ \t]+{key}:[ \t]*)(\"[^\"]*\"|'[^']*'|[^\s#]+)", line)):
            lines[i] = match.group(1) + literal + line[match.end():]
            break
    rendered = "".join(lines)
    if str((yaml.safe_load(rendered) or {}).get(section, {}).get(key)) != value:
        raise InstallError(f"cannot find `{section}: {key}:` in the source config.yaml")
    return rendered


def render_config(text: str, bundle: str, camera: str | None = None) -> str:
    """config.yaml text with ``model.bundle`` set to ``bundle``, and for one of several cameras
    ``camera.name`` and its own ``snapshot.dir``; comments and layout are kept."""
    rendered = _set_value(text, "model", "bundle", bundle)
    if camera is not None:
        rendered = _set_value(rendered, "camera", "name", camera)
        rendered = _set_value(rendered, "snapshot", "dir", str(STATE_DIR / camera))
    return rendered


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _same_tree(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


class Installer:
    """Installs into (or removes from) one root and prefix, printing each step."""

    def __init__(self, root: Path, prefix: str, camera: str | None = None):
        self.root = Path(root).resolve()
        self.live = self.root == Path("/")
        self.prefix = prefix
        self.camera = camera
        self.prefix_dir = self.at(prefix)
        self.venv = self.prefix_dir / "venv"
        self.config = self.at(CONFIG_DIR / (f"{camera}.yaml" if camera else "config.yaml"))
        self.password = self.at(CONFIG_DIR / "mqtt-password")
        self.unit = self.at(UNIT_DIR / UNIT_NAME)
        self.template_unit = self.at(UNIT_DIR / TEMPLATE_NAME)
        self.service_name = f"explaincam@{camera}.service" if camera else UNIT_NAME
        self.tensorflow_drop_ins = [self.at(UNIT_DIR / f"{name}.d" / "tensorflow.conf") for name in (UNIT_NAME, TEMPLATE_NAME)]
        self.sysusers = self.at(SYSUSERS_FILE)
        self.state_file = self.prefix_dir / "install-state.json"

    def at(self, path: str | Path) -> Path:
        """Where an absolute system path lies under the root."""
        return self.root / Path(path).relative_to("/")

    @staticmethod
    def report(verb: str, path: Path, note: str = "") -> None:
        """Print one step: what happened to which path."""
        print(f"  {verb:<10} {path}" + (f"  ({note})" if note else ""), flush=True)

    def _write(self, path: Path, data: bytes, mode: int = 0o644) -> bool:
        """Write a file unless it already holds ``data``; True if written."""
        if path.is_file() and path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            self.report("unchanged", path)
            return False
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, mode)
        self.report("updated" if existed else "wrote", path)
        return True

    def _run(self, *command: str, check: bool = True) -> int:
        """Run a command, echoing it; with ``check``, a non-zero exit status is an InstallError."""
        print(f"  {'run':<10} {' '.join(command)}", flush=True)
        try:
            result = subprocess.run(command)
        except FileNotFoundError:
            raise InstallError(f"`{command[0]}` is not installed") from None
        if check and result.returncode != 0:
            raise InstallError(f"`{' '.join(command)}` failed with exit status {result.returncode}")
        return result.returncode

    # -- install ---------------------------------------------------------------------------
    def install(self, source: Path, enable: bool, make_venv: bool) -> None:
        """Install from the checkout ``source``; see the module docstring for what goes where."""
        src_config, src_unit = source / "config.yaml", source / "systemd" / UNIT_NAME
        src_users, src_readme = source / "systemd" / "explaincam.sysusers", source / "README.md"
        src_template = source / "systemd" / TEMPLATE_NAME
        for path in (src_config, src_unit, src_template, src_users, src_readme):
            if not path.is_file():
                raise InstallError(f"{path} is missing: is {source} an explaincam checkout?")
        bundle_name = Path(str((yaml.safe_load(src_config.read_text()) or {}).get("model", {}).get("bundle", ""))).name
        try:
            bundle = load_bundle(source / "models" / bundle_name)
        except BundleError as exc:
            raise InstallError(f"the model bundle named by {src_config} cannot be installed: {exc}") from None

        print(f"installing explaincam from {source} into {self.prefix}" + ("" if self.live else f" under {self.root}"))
        tensorflow = explainer_graph(bundle) is None  # no LiteRT explainer graph: the TensorFlow fallback
        old_umask = os.umask(0o022)  # the daemon's user must be able to read what root installs
        try:
            changed = False
            if make_venv:
                changed = self._install_venv(source, tensorflow)
            else:
                self.report("skipped", self.venv, "--skip-venv")
            installed_bundle = f"{self.prefix}/models/{bundle.path.name}"
            changed |= self._install_tree(bundle.path, self.at(installed_bundle))
            changed |= self._write(self.prefix_dir / "README.md", src_readme.read_bytes())
            changed |= self._install_config(
                render_config(src_config.read_text(), installed_bundle, self.camera).encode())
            if not self.password.exists():
                self.password.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(self.password, b"", 0o600)
                self.report("wrote", self.password, "empty; put the MQTT password here")
            changed |= self._write(self.sysusers, src_users.read_bytes())
            changed |= self._write(self.unit, render_unit(src_unit.read_text(), self.prefix).encode())
            changed |= self._write(self.template_unit, render_unit(src_template.read_text(), self.prefix).encode())
            for drop_in in self.tensorflow_drop_ins:
                if tensorflow:
                    changed |= self._write(drop_in, TENSORFLOW_DROP_IN.encode())
                elif drop_in.exists():
                    self._remove_tensorflow_drop_in(drop_in)
                    changed = True
        finally:
            os.umask(old_umask)
        if self.live:
            self._activate(enable, changed)
        else:
            self.report("skipped", Path("systemctl"), f"--root {self.root} is not /")
        print("done.")

    def _install_venv(self, source: Path, tensorflow: bool) -> bool:
        """Create the venv if missing and pip-install the project: with the `explain` extra (TensorFlow)
        only when the bundle has no explainer graph for LiteRT."""
        python = self.venv / "bin" / "python"
        if not python.exists():
            self._run(sys.executable, "-m", "venv", str(self.venv))
        target = f"{source}[explain]" if tensorflow else str(source)
        self._run(str(python), "-m", "pip", "install", "--quiet", target)
        self.report("installed", self.venv, "explaincam[explain] (TensorFlow explainer)" if tensorflow
                    else "explaincam (LiteRT explainer, no TensorFlow)")
        return True

    def _install_tree(self, src: Path, dest: Path) -> bool:
        """Copy a folder into place through a temporary sibling and renames; True if it changed."""
        if dest.is_dir() and _same_tree(src, dest):
            self.report("unchanged", dest)
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = dest.with_name(f".{dest.name}.new"), dest.with_name(f".{dest.name}.old")
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=shutil.copyfile)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        existed = dest.exists()
        if existed:
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        self.report("updated" if existed else "wrote", dest)
        return True

    def _install_config(self, rendered: bytes) -> bool:
        """Install the default config, keeping one the user edited (then config.yaml.new)."""
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        key = "config_sha256" if self.camera is None else f"config_sha256:{self.config.name}"
        new_file = self.config.with_name(self.config.name + ".new")
        current = self.config.read_bytes() if self.config.is_file() else None
        if current is not None and current != rendered and _sha256(current) != state.get(key):
            self._write(new_file, rendered)
            self.report("kept", self.config, f"edited by you; the new default is {new_file.name}, merge it by hand")
            return False
        changed = self._write(self.config, rendered)
        if new_file.exists():
            new_file.unlink()
            self.report("removed", new_file, f"{self.config.name} is the default now")
        state[key] = _sha256(rendered)
        self._write(self.state_file, (json.dumps(state, indent=2) + "\n").encode())
        return changed

    def _activate(self, enable: bool, changed: bool) -> None:
        """Create the user, reload systemd, enable and (re)start the unit."""
        self._run("systemd-sysusers", SYSUSERS_FILE.name)
        if not Path("/run/systemd/system").is_dir():
            self.report("skipped", Path("systemctl"), "systemd is not running here")
            return
        self._run("systemctl", "daemon-reload")
        name = self.service_name
        if not enable:
            self.report("skipped", Path("systemctl enable"), f"--no-enable; later: systemctl enable --now {name}")
            return
        was_active = self._run("systemctl", "is-active", "--quiet", name, check=False) == 0
        self._run("systemctl", "enable", "--now", name)
        if was_active and changed:
            self._run("systemctl", "restart", name)

    # -- uninstall -----------------------------------------------------------------------------
    def enabled_instances(self) -> list[str]:
        """The ``explaincam@NAME.service`` units enabled under the root (from the .wants links)."""
        return sorted({link.name for link in self.at(UNIT_DIR).glob("*.wants/explaincam@?*.service")})

    def uninstall(self, purge: bool) -> None:
        """Stop, disable and remove the units, the venv and the models; ``purge`` also config and state.
        With a camera: only that camera's instance (``purge``: its config and snapshot folder)."""
        systemd_up = self.live and Path("/run/systemd/system").is_dir()
        if self.camera is not None:
            self._uninstall_camera(purge, systemd_up)
            return
        print(f"removing explaincam from {self.prefix}" + ("" if self.live else f" under {self.root}"))
        if systemd_up:
            for name in ([UNIT_NAME] if self.unit.exists() else []) + self.enabled_instances():
                self._run("systemctl", "disable", "--now", name, check=False)
        self._remove(self.unit)
        self._remove(self.template_unit)
        for drop_in in self.tensorflow_drop_ins:
            if drop_in.exists():
                self._remove_tensorflow_drop_in(drop_in)
        if systemd_up:
            self._run("systemctl", "daemon-reload")
        for path in (self.venv, self.prefix_dir / "models", self.prefix_dir / "README.md", self.state_file):
            self._remove(path)
        if self.prefix_dir.is_dir() and not any(self.prefix_dir.iterdir()):
            self._remove(self.prefix_dir)
        kept = [self.at(CONFIG_DIR), self.at(STATE_DIR), self.sysusers]
        for path in kept:
            if purge:
                self._remove(path)
            elif path.exists():
                self.report("kept", path, "--purge removes it")
        print("done.")

    def _uninstall_camera(self, purge: bool, systemd_up: bool) -> None:
        """Stop and disable one camera's instance; ``purge`` also removes its config and snapshot folder."""
        print(f"removing {self.service_name}" + ("" if self.live else f" under {self.root}"))
        if systemd_up:
            self._run("systemctl", "disable", "--now", self.service_name, check=False)
        for path in (self.config, self.at(STATE_DIR / self.camera)):
            if purge:
                self._remove(path)
            elif path.exists():
                self.report("kept", path, "--purge removes it")
        print("done.")

    def _remove_tensorflow_drop_in(self, drop_in: Path) -> None:
        """Remove the TensorFlow memory drop-in, and its folder when nothing else is in it."""
        self._remove(drop_in)
        if not any(drop_in.parent.iterdir()):  # drop-ins of `systemctl edit` stay
            self._remove(drop_in.parent)

    def _remove(self, path: Path) -> None:
        """Remove a file or folder, saying so (or that it was not there)."""
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            self.report("absent", path)
            return
        self.report("removed", path)
