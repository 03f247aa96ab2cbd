"""``explaincam bench``: arguments, the run, the table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from convert.bench.report import format_table
from convert.bench.run import HISTORY_EVENTS, run_bench
from daemon.bundle import BundleError, load_bundle
from daemon.captioner import DEFAULT_BUNDLE
from daemon.encoder import EncoderError


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam bench``."""
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle folder")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed loop (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="the configured thread count (default 2, "
                        "the daemon's model.threads); everything is also measured at 1 thread")
    parser.add_argument("--seed-frames", type=int, default=5, help="frames the slow seed-style pipeline runs (default 5)")
    parser.add_argument("--history-events", type=int, default=HISTORY_EVENTS,
                        help=f"synthetic events in the timeline store it queries (default {HISTORY_EVENTS:,})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")


def main(args: argparse.Namespace) -> int:
    """Run the bench; print the table (or JSON). Exit 2 if the bundle cannot be loaded."""
    if args.seconds <= 0 or args.threads < 1 or args.seed_frames < 1 or args.history_events < 1:
        print("error: --seconds must be positive, --threads, --seed-frames and --history-events at least 1",
              file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.bundle)
        result = run_bench(bundle, args.seconds, args.threads, args.seed_frames, args.history_events,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (BundleError, EncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
