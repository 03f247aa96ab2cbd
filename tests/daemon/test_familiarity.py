"""The out-of-distribution warning: feature statistics maths, and the shipped bundle on unseen scenes and real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import skimage.data
import sklearn.datasets
import pytest

from convert.feature_stats import new_bundle_feature_stats
from daemon.bundle import BundleError, load_bundle, write_manifest
from daemon.captioner import DEFAULT_BUNDLE, Captioner
from daemon.captioner import resize_for_encoder
from daemon.familiarity import (FEATURE_STATS_FILE, HIST_BINS, MIN_FRAMES, SATURATED, STATS_SIDE, CaptionFamiliarity,
                                FeatureStats, image_statistics, shrink_for_statistics)
from daemon.scenes import scene_at
from tests.conftest import REPO

HELD_OUT_SEED = 5150  # never used for the shipped statistics (they use 4242)
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GREY_PHOTOS = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock", "page", "text")


def real_photos() -> dict[str, np.ndarray]:
    """The photographs bundled with scikit-image and scikit-learn (offline), as RGB uint8."""
    photos = {name: getattr(skimage.data, name)() for name in COLOUR_PHOTOS}
    photos.update({name: np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2) for name in GREY_PHOTOS})
    photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    sample = sklearn.datasets.load_sample_images()
    photos.update({path.rsplit("/", 1)[-1].split(".")[0]: image for path, image in zip(sample.filenames, sample.images)})
    return {name: np.ascontiguousarray(image[..., :3], dtype=np.uint8) for name, image in photos.items()}


def test_statistics_flag_far_frames_and_survive_a_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    calibration = rng.normal(0, 1, (400, 6)) @ rng.normal(0, 1, (6, 6))
    stats = FeatureStats.fit(calibration)
    near = stats.judge(calibration.mean(0))
    far = stats.judge(calibration.mean(0) + 10 * calibration.std(0))
    assert not near.out_of_distribution and near.familiarity > 0.9
    assert far.out_of_distribution and far.familiarity == 0.0
    path = tmp_path / "feature_stats.npz"
    path.write_bytes(stats.to_bytes())
    assert FeatureStats.load(path).judge(calibration[0]) == stats.judge(calibration[0])
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="feature_stats.npz"):
        FeatureStats.load(path)


def test_a_stream_is_judged_again_when_its_caption_changes_or_a_while_has_passed():
    captioner = Captioner.from_path(DEFAULT_BUNDLE)
    scene, photo = captioner.resize(scene_at(HELD_OUT_SEED, 0).image), captioner.resize(real_photos()["astronaut"])
    familiar, strange = (scene, captioner.encode(scene)), (photo, captioner.encode(photo))
    stream = CaptionFamiliarity(captioner.feature_stats, rejudge_s=0.5)
    first, judged = stream.judge("a red circle", *familiar)
    assert judged and not first.out_of_distribution
    assert stream.judge("a red circle", *strange) == (first, False)  # same caption, within 0.5 s: reused
    changed, judged = stream.judge("a blue square", *strange)  # the caption changed: judged on this frame
    assert judged and changed.out_of_distribution
    time.sleep(0.6)
    again, judged = stream.judge("a blue square", *familiar)  # same caption, but 0.5 s later
    assert judged and not again.out_of_distribution
    every_frame = CaptionFamiliarity(captioner.feature_stats)  # independent images: each judged
    assert every_frame.judge("x", *familiar)[1] and every_frame.judge("x", *strange) == (changed, True)


def test_too_few_calibration_frames_are_refused():
    with pytest.raises(ValueError, match="at least 40"):
        FeatureStats.fit(np.zeros((30, 4)))


def test_shipped_bundle_knows_generated_scenes_and_flags_real_photos():
    captioner = Captioner.from_path(DEFAULT_BUNDLE, threads=2)
    assert captioner.feature_stats is not None, "the shipped bundle has no feature_stats.npz"
    scenes = [captioner.caption(scene_at(HELD_OUT_SEED, i).image).familiarity for i in range(200)]
    scene_rate = np.mean([f.out_of_distribution for f in scenes])
    photos = {name: captioner.caption(image).familiarity for name, image in real_photos().items()}
    photo_rate = np.mean([f.out_of_distribution for f in photos.values()])
    print(f"FIGURES familiarity: scenes of seed {HELD_OUT_SEED} flagged {scene_rate:.3f} (200), real photos "
          f"flagged {photo_rate:.3f} ({len(photos)}), threshold {captioner.feature_stats.threshold:.1f}; " +
          ", ".join(f"{name} {f.distance:.1f}" for name, f in photos.items()))
    assert scene_rate <= 0.02
    assert photo_rate >= 0.9
    assert np.median([f.familiarity for f in scenes]) > 0.2


def test_statistics_frame_has_the_pixels_of_opencvs_area_filter_on_uint8():
    frames = [scene_at(HELD_OUT_SEED, i).image for i in range(20)] + list(real_photos().values())
    for frame in frames:
        for size in (224, 100, 331):
            image = resize_for_encoder(frame, size)
            np.testing.assert_array_equal(shrink_for_statistics(image),
                                          cv2.resize(image, (STATS_SIDE, STATS_SIDE), interpolation=cv2.INTER_AREA))


def test_image_statistics_follow_their_definitions():
    """Histograms and order statistics against numpy's own histogram and percentiles."""
    for image in (scene_at(HELD_OUT_SEED, 0).image, resize_for_encoder(real_photos()["chelsea"], 224)):
        stats = image_statistics(image)
        small = cv2.resize(image, (STATS_SIDE, STATS_SIDE), interpolation=cv2.INTER_AREA)
        saturation, value = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1:].reshape(-1, 2).T
        log_share = lambda values, top: np.log(np.histogram(np.minimum(values, top - 1e-3), HIST_BINS, (0, top))[0]
                                               / values.size + 1e-3)
        np.testing.assert_allclose(stats[:HIST_BINS], log_share(saturation, 256), rtol=1e-6)
        np.testing.assert_allclose(stats[HIST_BINS:2 * HIST_BINS], log_share(value, 256), rtol=1e-6)
        laplacian = np.abs(cv2.Laplacian(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))
        np.testing.assert_allclose(stats[4 * HIST_BINS:5 * HIST_BINS], log_share(np.log1p(laplacian.ravel()), 8.0),
                                   rtol=1e-6)
        assert stats[-3] == pytest.approx(np.log(np.mean(saturation > SATURATED) + 1e-3), rel=1e-6)
        assert stats[-2] == pytest.approx(np.percentile(saturation, 98, method="lower") / 255.0, rel=1e-6)
        assert stats[-1] == pytest.approx(np.log1p(np.percentile(laplacian, 50, method="higher")), rel=1e-6)


def bundle_without_stats(tmp_path):
    """A copy of the shipped bundle whose manifest names no feature statistics."""
    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    (copy / FEATURE_STATS_FILE).unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["feature_stats"]
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "sha256"})
    return copy


def test_feature_stats_command_adds_hashed_statistics_to_a_bundle(tmp_path):
    bundle = bundle_without_stats(tmp_path)
    assert Captioner.from_path(bundle).caption(scene_at(HELD_OUT_SEED, 0).image).familiarity is None
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "feature-stats", "--bundle", str(bundle),
                          "--scenes", "60"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["frames"] == 60
    assert load_bundle(bundle).has("feature_stats")  # named and hashed in the manifest
    result = Captioner.from_path(bundle).caption(scene_at(HELD_OUT_SEED, 1).image)
    assert 0.0 <= result.familiarity.familiarity <= 1.0 and "familiarity_ms" in result.timings
    (bundle / FEATURE_STATS_FILE).write_bytes(b"junk")
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_manifest(bundle, {k: v for k, v in manifest.items() if k != "sha256"})  # hashes fit, content does not
    with pytest.raises(BundleError, match="feature_stats.npz cannot be read"):
        Captioner.from_path(bundle)


def test_convert_fits_statistics_on_enough_calibration_images_only(tmp_path):
    bundle = bundle_without_stats(tmp_path)
    images = [scene_at(HELD_OUT_SEED, i).image for i in range(MIN_FRAMES)]
    files = {"encoder_int8": "encoder_int8.tflite"}
    assert "skipped" in new_bundle_feature_stats(bundle, files, images[:8]) and "feature_stats" not in files
    summary = new_bundle_feature_stats(bundle, files, images)
    assert files["feature_stats"] == FEATURE_STATS_FILE and summary["frames"] == MIN_FRAMES
    assert FeatureStats.load(bundle / FEATURE_STATS_FILE).threshold == pytest.approx(summary["threshold"], abs=1e-3)
