"""``explaincam history-bench``: the timeline's figures alone (``explaincam bench`` reports them too)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from convert.bench.report import history_lines
from convert.bench.run import HISTORY_EVENTS, run_history_bench
from daemon.captioner import DEFAULT_BUNDLE


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam history-bench``."""
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle folder")
    parser.add_argument("--seconds", type=float, default=5.0, help="captioning time per variant (default 5)")
    parser.add_argument("--events", type=int, default=HISTORY_EVENTS, help="synthetic events in the store")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    """Run the timeline's bench; print its lines (or JSON) with the load average it ran under."""
    if args.seconds <= 0 or args.events < 100:
        print("error: --seconds must be positive and --events at least 100", file=sys.stderr)
        return 2
    result = run_history_bench(args.bundle, args.seconds, args.events)
    if "error" in result:
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2) if args.json else "\n".join(
        history_lines(result) + [f"(load average {result['load_average'][0]:.1f} on {os.cpu_count()} cores)"]))
    return 0
