"""The out-of-distribution warning: feature statistics maths, and the shipped bundle on unseen scenes and real photos."""

from __future__ import annotations

import numpy as np
import pytest

from convert.scenes import scene_at
from daemon.captioner import DEFAULT_BUNDLE, Captioner
from daemon.familiarity import FeatureStats

HELD_OUT_SEED = 5150  # never used for the shipped statistics (they use 4242)
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GREY_PHOTOS = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock", "page", "text")


def real_photos() -> dict[str, np.ndarray]:
    """The photographs bundled with scikit-image and scikit-learn (offline), as RGB uint8."""
    skimage_data = pytest.importorskip("skimage.data")
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    photos = {name: getattr(skimage_data, name)() for name in COLOUR_PHOTOS}
    photos.update({name: np.repeat(getattr(skimage_data, name)()[..., None], 3, axis=2) for name in GREY_PHOTOS})
    photos["motorcycle"] = skimage_data.stereo_motorcycle()[0]
    sample = sklearn_datasets.load_sample_images()
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
