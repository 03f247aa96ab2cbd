"""Corrupted, truncated and missing model bundles: ``explaincam run`` refuses to start and names the file.

Some damage the manifest's hashes catch (a truncated copy, a deleted file). Some they
cannot: a bundle re-hashed after a file went bad (a converter bug, a hand edit). Either
way the daemon must exit at once with the config exit code and one clear line naming the
bundle and the file, not a traceback and not a loop that fails on every frame.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np

from daemon.bundle import write_manifest
from tests.conftest import SHIPPED_BUNDLE, daemon_config
from tests.faults.probes import figures

EXIT_CONFIG = 2
REFUSE_TIMEOUT = 60  # a dozen daemons start at once on a busy 2-core box


def truncate(path) -> None:
    """Keep the first half of a file, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def rehash(bundle) -> None:
    """Make the manifest's hashes match the files again (as a buggy converter would)."""
    write_manifest(bundle, json.loads((bundle / "manifest.json").read_text()))


def drop_a_weight(path) -> None:
    """Rewrite decoder.npz without its LSTM kernel."""
    with np.load(path) as data:
        weights = {k: data[k] for k in data.files if k != "lstm_kernel"}
    with open(path, "wb") as fh:
        np.savez(fh, **weights)


def damage(bundle, case: str) -> str:
    """Damage a copy of the shipped bundle; the name of the file the refusal must name."""
    if case == "manifest truncated":
        truncate(bundle / "manifest.json")
        return "manifest.json"
    if case == "manifest not an object":
        (bundle / "manifest.json").write_text("[]\n")
        return "manifest.json"
    if case == "manifest with a bad input size":
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["input"]["size"] = "large"
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        return "manifest.json"
    if case == "encoder missing":
        (bundle / "encoder_int8.tflite").unlink()
        return "encoder_int8.tflite"
    name = {"encoder": "encoder_int8.tflite", "decoder": "decoder.npz", "vocab": "vocab.txt",
            "captioner": "captioner.keras"}[case.split()[0]]
    if "truncated" in case:
        truncate(bundle / name)
    elif "lacks a weight" in case:
        drop_a_weight(bundle / name)
    elif "not text" in case:
        (bundle / name).write_bytes(bytes(range(256)) * 4)
    if "re-hashed" in case:
        rehash(bundle)
    return name


CASES = [
    "manifest truncated", "manifest not an object", "manifest with a bad input size", "encoder missing",
    "encoder truncated", "decoder truncated", "vocab truncated", "captioner truncated",
    "encoder truncated, re-hashed", "decoder truncated, re-hashed", "decoder lacks a weight, re-hashed",
    "vocab truncated, re-hashed", "vocab not text, re-hashed",
]


def test_damaged_or_missing_bundles_are_refused_at_start_naming_the_file(tmp_path, daemon_process):
    runs = []
    missing = tmp_path / "no-such-bundle"
    runs.append(("missing model", missing, missing.name))
    for n, case in enumerate(CASES):
        bundle = tmp_path / f"bundle{n}"
        shutil.copytree(SHIPPED_BUNDLE, bundle)
        runs.append((case, bundle, damage(bundle, case)))
    started = time.monotonic()
    daemons = [(case, bundle, name, tmp_path / f"run{n}",
                daemon_process(daemon_config(tmp_path / f"run{n}", 1, model={"bundle": str(bundle)})))
               for n, (case, bundle, name) in enumerate(runs)]
    refusals, seconds = {}, {}
    for case, bundle, name, run_dir, daemon in daemons:
        code = daemon.process.wait(REFUSE_TIMEOUT)
        seconds[case] = round(time.monotonic() - started, 1)
        log = daemon.log()
        refusal = next((line for line in log.splitlines() if "cannot load the model" in line), "")
        refusals[case] = refusal
        assert code == EXIT_CONFIG, f"{case}: exit code {code}\n{log}"
        assert "Traceback" not in log, f"{case}: a traceback instead of a refusal\n{log}"
        assert str(bundle) in refusal and name in refusal, f"{case}: the refusal does not name {name}\n{log}"
        assert not (run_dir / "snapshot").exists(), f"{case}: it started captioning"
    for case, line in refusals.items():
        print(f"  {case}: {line.split('cannot load the model: ', 1)[-1]}")
    figures("bad_bundles", cases=len(runs), refused=sum(1 for line in refusals.values() if line),
            slowest_refusal_s=max(seconds.values()))
