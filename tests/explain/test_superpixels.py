"""ACE's SLIC superpixels without scikit-image: the segments scikit-image cuts, from numpy and OpenCV.

scikit-image is installed for the tests (the convert extra) and is the reference here; the
box does not have it.
"""

import cv2
import numpy as np
import pytest
import skimage.data
from skimage.segmentation import slic

from daemon.explain import segments
from daemon.explain.superpixels import MIN_SIZE_FACTOR, slic_labels
from daemon.scenes import scene_at

HELD_OUT_SEED = 6161  # not the concept bank's discovery stream (5050) nor training (1)


def best_iou(reference: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the reference's segments of the best IoU with one of ``labels``' segments."""
    n_ref, n_ours = reference.max() + 1, labels.max() + 1
    inter = np.bincount(reference.ravel() * n_ours + labels.ravel(), minlength=n_ref * n_ours).reshape(n_ref, n_ours)
    union = np.bincount(reference.ravel(), minlength=n_ref)[:, None] + np.bincount(labels.ravel())[None, :] - inter
    return float((inter / union).max(axis=1).mean())


def reference_slic(image: np.ndarray, n: int) -> np.ndarray:
    """scikit-image's SLIC with ACE's settings."""
    return slic(image, n_segments=n, compactness=segments.COMPACTNESS, sigma=segments.SIGMA, start_label=0,
                channel_axis=-1)


def test_segments_match_scikit_image_on_held_out_scenes_and_a_photo():
    images = [scene_at(HELD_OUT_SEED, i).image for i in range(6)] + [skimage.data.chelsea()]  # 300 x 451
    ious = []
    for image in images:
        for n in segments.N_SEGMENTS:
            ours, theirs = slic_labels(image, n, segments.COMPACTNESS, segments.SIGMA), reference_slic(image, n)
            assert ours.dtype == np.int32 and ours.shape == image.shape[:2]
            assert abs(int(ours.max()) - int(theirs.max())) <= 2
            ious.append(best_iou(theirs, ours))
    print(f"FIGURES superpixels: best IoU with scikit-image's segments, mean {np.mean(ious):.3f}, min {min(ious):.3f}")
    assert np.mean(ious) >= 0.95 and min(ious) >= 0.85


def test_every_segment_is_one_connected_piece_of_at_least_half_a_segment():
    image = scene_at(HELD_OUT_SEED, 7).image
    for n in segments.N_SEGMENTS:
        labels = slic_labels(image, n, segments.COMPACTNESS, segments.SIGMA)
        count = int(labels.max()) + 1
        assert set(np.unique(labels)) == set(range(count))  # numbered 0..count-1, none missing
        grid = len(range(int(np.sqrt(224 * 224 / n) // 2), 224, round(np.sqrt(224 * 224 / n)))) ** 2
        for label in range(count):
            pieces, _ = cv2.connectedComponents((labels == label).astype(np.uint8), connectivity=4)
            assert pieces - 1 == 1, f"segment {label} of {n} is in {pieces - 1} pieces"
        assert np.bincount(labels.ravel()).min() >= int(MIN_SIZE_FACTOR * 224 * 224 / grid)


def test_a_flat_image_is_cut_into_scikit_images_starting_grid():
    image = np.full((224, 224, 3), 90, np.uint8)
    labels = slic_labels(image, 16, segments.COMPACTNESS, segments.SIGMA)
    assert labels.max() + 1 == 16
    np.testing.assert_array_equal(labels, reference_slic(image, 16))


def test_an_image_that_is_not_rgb_is_refused():
    with pytest.raises(ValueError, match="RGB"):
        slic_labels(np.zeros((32, 32), np.uint8), 4, segments.COMPACTNESS, segments.SIGMA)
