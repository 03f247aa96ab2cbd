"""``explaincam``: one console script, one subcommand per tool.

Only the chosen subcommand's module is imported, so ``explaincam run`` never loads
TensorFlow while ``explaincam train`` does. Each command module offers
``configure(parser)`` and ``main(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

from daemon.process import package_version

ENTRY_POINT_GROUP = "explaincam.commands"  # other packages' command tables (convert/commands.py)

# name -> (module, one-line help)
DEVICE_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon.app", "run the capture daemon (captions over MQTT and to the snapshot folder)"),
    "check-config": ("daemon.check_config", "validate a config.yaml and report each error with its key and line"),
    "caption": ("daemon.captioner", "caption image files with a bundle's int8 encoder"),
    "request": ("daemon.explain.client", "ask a running daemon over MQTT to explain a frame"),
    "history": ("daemon.history.cli", "search a camera's timeline of events (or every camera's) over MQTT"),
    "explain": ("daemon.explain.oneshot", "explain the caption of one image file (Grad-CAM, saliency, ACE)"),
    "install-service": ("daemon.install", "install (or --uninstall) the systemd service"),
    "worker": ("daemon.fleet.worker", "explain the jobs of a fleet's cameras (MQTT 5 shared subscription)"),
}


def all_commands() -> dict[str, tuple[str, str]]:
    """The device's commands, then those installed packages register under ``explaincam.commands``
    (the offline tools); a table that cannot be loaded is left out with a warning."""
    commands = dict(DEVICE_COMMANDS)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            commands.update(entry.load())
        except Exception as exc:  # a broken plug-in must not take the device's commands with it
            print(f"warning: the {entry.name} commands ({entry.value}) cannot be loaded: {exc}", file=sys.stderr)
    return commands


def _top_level_parser(commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    width = max(map(len, commands)) + 2
    parser = argparse.ArgumentParser(
        prog="explaincam",
        description="Edge daemon for explainable image captioning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<{width}}{h}" for n, (_, h) in commands.items()),
    )
    parser.add_argument("--version", "-V", action="store_true", help="print explaincam's version and exit")
    parser.add_argument("command", choices=list(commands), metavar="COMMAND", help="see below")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``explaincam`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):
        print(f"explaincam {package_version()}")
        return 0
    commands = all_commands()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        parser = _top_level_parser(commands)
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.parse_args(argv[:1])  # exits with a clear "invalid choice" message
    name = argv[0]
    module_name, help_text = commands[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # e.g. TensorFlow for the offline tools without the convert extra
        if not exc.name or exc.name.split(".")[0] == module_name.split(".")[0]:  # a broken install: show it
            raise
        print(f"error: explaincam {name} needs the Python package {exc.name!r}, which is not installed; "
              "pip install 'explaincam[convert]' installs what the offline tools need", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"explaincam {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
