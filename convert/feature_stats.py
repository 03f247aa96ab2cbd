"""``explaincam feature-stats``: store a bundle's familiarity statistics (``feature_stats.npz``).

The statistics (daemon/familiarity.py) are fitted on the frame descriptors of the
calibration frames: the bundle's own int8 encoder and generated scenes of the calibration
seed, or a folder of the user's images. ``explaincam convert`` calls this on its
calibration images; this command adds or refreshes the file of an existing bundle
(no TensorFlow needed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from daemon.bundle import BundleError, load_bundle, write_manifest
from daemon.captioner import resize_for_encoder
from daemon.encoder import TFLiteEncoder
from daemon.familiarity import FEATURE_STATS_FILE, MIN_FRAMES, FeatureStats, frame_descriptor
from daemon.imaging import read_rgb
from daemon.scenes import scene_at

CALIBRATION_SEED = 4242  # scenes that calibrate int8 ranges (convert.pack) and feature statistics; training uses seed 1


def fit_feature_stats(encoder_path: str | Path, images: list[np.ndarray], out: str | Path) -> dict:
    """Fit the statistics on ``images`` (RGB uint8) with an int8 encoder file and write them to ``out``.

    Returns a summary: frames, threshold and the share of the held-back frames beyond it.
    """
    encoder = TFLiteEncoder(encoder_path, threads=2)
    descriptors = []
    for image in images:
        frame = resize_for_encoder(image, encoder.input_size)
        descriptors.append(frame_descriptor(frame, encoder.encode(frame)))
    stats = FeatureStats.fit(np.stack(descriptors))
    Path(out).write_bytes(stats.to_bytes())
    return {"frames": len(images), "threshold": round(stats.threshold, 3),
            "held_back_flagged": round(float(np.mean(stats.reference > stats.threshold)), 4)}


def new_bundle_feature_stats(bundle_dir: str | Path, files: dict, calibration: list[np.ndarray]) -> dict:
    """For ``explaincam convert``: fit on the calibration images into the bundle being written and name the
    file in its ``files``; with fewer than MIN_FRAMES images the bundle goes without (the summary says why)."""
    if len(calibration) < MIN_FRAMES:
        return {"skipped": f"{len(calibration)} calibration images, at least {MIN_FRAMES} needed; "
                           "add them with explaincam feature-stats"}
    summary = fit_feature_stats(Path(bundle_dir) / files["encoder_int8"], calibration,
                                Path(bundle_dir) / FEATURE_STATS_FILE)
    files["feature_stats"] = FEATURE_STATS_FILE
    return summary


def add_feature_stats(bundle_dir: str | Path, images: list[np.ndarray]) -> dict:
    """Fit and write ``feature_stats.npz`` into an existing bundle and re-hash its manifest; return the summary."""
    bundle = load_bundle(bundle_dir)
    summary = fit_feature_stats(bundle.file("encoder_int8"), images, bundle.path / FEATURE_STATS_FILE)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "sha256"}
    manifest["files"] = dict(manifest["files"], feature_stats=FEATURE_STATS_FILE)
    write_manifest(bundle.path, manifest)
    return summary


def folder_images(folder: str | Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` readable images of a folder (recursively, sorted), RGB uint8; ValueError if none."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"))
    images = []
    for path in paths[:limit]:
        try:
            images.append(read_rgb(path))
        except ValueError:
            continue
    if not images:
        raise ValueError(f"no readable images in {folder}")
    return images


def configure(parser) -> None:
    """Arguments of ``explaincam feature-stats``."""
    parser.add_argument("--bundle", required=True, help="model bundle folder to add feature_stats.npz to")
    parser.add_argument("--scenes", type=int, default=2000,
                        help="generated scenes of the calibration seed to fit on (default 2000)")
    parser.add_argument("--images", default=None, help="fit on this folder of your own images instead")


def main(args) -> int:
    """Fit, write and print the summary."""
    try:
        if args.images:
            images = folder_images(args.images, args.scenes)
        else:
            images = [scene_at(CALIBRATION_SEED, i).image for i in range(args.scenes)]
        summary = add_feature_stats(args.bundle, images)
    except (BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
