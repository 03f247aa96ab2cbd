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

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon.app", "run the capture daemon (captions over MQTT and to the snapshot folder)"),
    "check-config": ("daemon.config", "validate a config.yaml and report each error with its key and line"),
    "caption": ("daemon.captioner", "caption image files with a bundle's int8 encoder"),
    "request": ("daemon.explain.client", "ask a running daemon over MQTT to explain a frame"),
    "explain": ("daemon.explain.oneshot", "explain the caption of one image file (Grad-CAM, saliency, ACE)"),
    "scenes": ("convert.scenes", "write generated captioned scenes with ground truth"),
    "train": ("convert.train", "train a captioner on generated scenes or a Flickr-style folder"),
    "convert": ("convert.pack", "quantize a trained or seed-format model into a bundle"),
    "evaluate": ("convert.evaluate", "caption and explanation metrics of a bundle on a scenes folder"),
    "concepts": ("convert.concepts", "build a bundle's ACE concept bank"),
    "export-explainer": ("convert.explainer_export", "add the LiteRT gradient graph (explainer_float.tflite) to a bundle"),
    "feature-stats": ("convert.feature_stats", "store a bundle's statistics for the out-of-distribution warning"),
    "bench": ("convert.bench.cli", "measure speed and memory, side by side with the seed-style pipeline"),
    "install-service": ("daemon.install", "install (or --uninstall) the systemd service"),
    "worker": ("daemon.fleet.worker", "explain the jobs of a fleet's cameras (MQTT 5 shared subscription)"),
    "fleet-bench": ("convert.bench.fleet", "measure a fleet on a private broker: N camera daemons, 1..M workers"),
}


def package_version() -> str:
    """explaincam's installed version (pyproject.toml's), or "unknown" when run from a tree that is not installed."""
    try:
        return importlib.metadata.version("explaincam")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="explaincam",
        description="Edge daemon for explainable image captioning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<16}{h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("--version", "-V", action="store_true", help="print explaincam's version and exit")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="see below")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``explaincam`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):
        print(f"explaincam {package_version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = _top_level_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.parse_args(argv[:1])  # exits with a clear "invalid choice" message
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"explaincam {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
