"""``explaincam check-config``: validate a config file and the model bundle it names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.bundle import BundleError, load_bundle
from daemon.config import CONFIG_FILE
from daemon.config_file import ConfigError, ConfigProblem, key_line, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam check-config``."""
    parser.add_argument("-c", "--config", default=CONFIG_FILE, help=f"config file to check (default: {CONFIG_FILE})")


def main(args: argparse.Namespace) -> int:
    """Print each problem as ``file:line: key.path: message`` in file order, then check that the model
    bundle is there and whole (hashes); exit 1 if anything is wrong."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(exc.filename), file=sys.stderr)
        print(f"{exc.filename}: {len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    try:
        load_bundle(cfg.model.bundle_path())
    except BundleError as exc:
        line = key_line(Path(args.config).read_text(), ("model", "bundle"))
        print(ConfigProblem("model.bundle", line, str(exc)).format(args.config), file=sys.stderr)
        return 1
    print(f"{args.config}: OK (camera {cfg.camera.name!r}, source {cfg.camera.source.type}, "
          f"broker {cfg.mqtt.host}:{cfg.mqtt.port}, bundle {cfg.model.bundle})")
    return 0
