"""Heatmap maths: normalisation, upsampling, peak, PNG round trips, overlay and grid."""

import numpy as np

from daemon.explain import heatmap, picture
from daemon.imaging import decode_png, encode_png


def test_normalise_maps_to_unit_range_and_flat_maps_to_zero():
    m = heatmap.normalise(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert m.min() == 0 and m.max() == 1 and np.isclose(m[0, 1], 0.25)
    assert not heatmap.normalise(np.full((3, 3), 5.0)).any()
    tiny = heatmap.normalise(np.array([[0.0, 3e-13]]))  # tiny gradients are not "flat"
    assert tiny.max() == 1
    assert np.isfinite(heatmap.normalise(np.array([[np.nan, 1.0]]))).all()


def test_upsample_keeps_the_range_and_the_peak_follows_the_hot_cell():
    coarse = np.zeros((7, 7), np.float32)
    coarse[5, 1] = 1.0  # row 5, column 1
    up = heatmap.to_image_map(coarse, (224, 224))
    assert up.shape == (224, 224) and up.min() >= 0 and up.max() <= 1
    x, y = heatmap.peak(up)
    assert abs(x - (1.5 * 32)) <= 16 and abs(y - (5.5 * 32)) <= 16


def test_peak_smoothing_ignores_a_single_noisy_pixel():
    m = np.zeros((224, 224), np.float32)
    m[100:140, 30:70] = 0.8  # a hot region
    m[5, 200] = 1.0  # one noisy pixel
    assert heatmap.peak(m, sigma=0) == (200, 5)
    x, y = heatmap.peak(m)
    assert 30 <= x < 70 and 100 <= y < 140


def test_png_base64_round_trip():
    m = np.linspace(0, 1, 224 * 224, dtype=np.float32).reshape(224, 224)
    back = heatmap.heatmap_from_base64(heatmap.heatmap_png_base64(m))
    assert back.shape == m.shape and np.abs(back - m).max() <= 1 / 255 + 1e-6
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)


def test_overlay_and_grid_shapes():
    image = np.full((224, 224, 3), 100, np.uint8)
    hot = np.zeros((7, 7), np.float32)
    hot[3, 3] = 1
    out = picture.overlay(image, hot, peak_xy=(112, 112))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    rows = [("#0 a", [("gradcam", hot, (1, 1)), ("saliency", hot, None)]), ("#1 red", [("gradcam", hot, None)])]
    grid = picture.grid(image, rows, tile=64)
    assert grid.shape == (2 * (64 + 22), 3 * 64, 3)
    assert picture.grid(None, rows, tile=64).shape == grid.shape
