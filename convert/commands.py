"""The offline tools' ``explaincam`` subcommands.

pyproject.toml registers this table in the ``explaincam.commands`` entry point group, where
the console script (daemon/cli.py) finds it: the device package never names this one.
Each module is imported only when its command runs (most of them load TensorFlow).
"""

from __future__ import annotations

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "scenes": ("convert.scenes", "write generated captioned scenes with ground truth"),
    "train": ("convert.train", "train a captioner on generated scenes or a Flickr-style folder"),
    "convert": ("convert.pack", "quantize a trained or seed-format model into a bundle"),
    "evaluate": ("convert.evaluate", "caption and explanation metrics of a bundle on a scenes folder"),
    "concepts": ("convert.concepts", "build a bundle's ACE concept bank"),
    "export-explainer": ("convert.explainer_export", "add the LiteRT gradient graph (explainer_float.tflite) to a bundle"),
    "feature-stats": ("convert.feature_stats", "store a bundle's statistics for the out-of-distribution warning"),
    "bench": ("convert.bench.cli", "measure speed and memory, side by side with the seed-style pipeline"),
    "history-bench": ("convert.bench.history_cli", "measure the timeline: captions/s with history on and off, "
                                                   "bytes written, queries over 100,000 events"),
    "fleet-bench": ("convert.bench.fleet", "measure a fleet on a private broker: N camera daemons, 1..M workers"),
}
