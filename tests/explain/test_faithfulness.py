"""Faithfulness metrics (pure numpy)."""

import numpy as np
import pytest

from convert import faithfulness as ff


def test_pointing_hit():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 6:9] = True  # rows 2-3, columns 6-8
    assert ff.pointing_hit((7, 3), mask)
    assert not ff.pointing_hit((3, 7), mask)
    assert not ff.pointing_hit((50, 3), mask)


def test_perturbation_series_and_auc():
    start, finish = np.zeros((4, 5, 3), np.float32), np.ones((4, 5, 3), np.float32)
    order = np.arange(20)
    series = ff.perturbation_series(start, finish, order, steps=4)
    assert series.shape == (5, 4, 5, 3)
    assert [float(s.mean()) for s in series] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert series[1].reshape(20, 3)[:5].min() == 1 and series[1].reshape(20, 3)[5:].max() == 0
    assert ff.auc([1, 1, 1]) == pytest.approx(1.0)
    assert ff.auc([1, 0, 0, 0, 0]) == pytest.approx(0.125)
    with pytest.raises(ValueError):
        ff.auc([1.0])


def test_a_map_on_the_evidence_deletes_faster_than_random():
    """A toy 'model' whose score is the share of a bright square still intact."""
    image = np.zeros((32, 32, 3), np.float32)
    image[8:16, 8:16] = 255
    evidence = image[..., 0] > 0

    def score(batch):
        return (batch[:, evidence, 0] > 128).mean(axis=1)

    rng = np.random.default_rng(0)
    good = ff.importance_order(evidence.astype(float), rng)
    rand = ff.random_order(32 * 32, rng)
    deletion_good = ff.auc(ff.deletion_curve(score, image, good, 16))
    deletion_random = ff.auc(ff.deletion_curve(score, image, rand, 16))
    insertion_good = ff.auc(ff.insertion_curve(score, image, good, 16, substrate=np.zeros_like(image)))
    insertion_random = ff.auc(ff.insertion_curve(score, image, rand, 16, substrate=np.zeros_like(image)))
    assert deletion_good < 0.1 < deletion_random
    assert insertion_good > 0.9 > insertion_random
    assert np.allclose(ff.mean_substrate(image), image.mean(axis=(0, 1)))


def test_importance_order_breaks_ties_randomly():
    flat = np.zeros((4, 4))
    flat[0, 0] = 1
    a = ff.importance_order(flat, np.random.default_rng(1))
    b = ff.importance_order(flat, np.random.default_rng(2))
    assert a[0] == b[0] == 0 and not np.array_equal(a, b)


def test_spearman_matches_scipy_with_ties():
    from scipy import stats
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)
    b = a + rng.normal(0, 2, 200)
    assert ff.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert ff.rankdata([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert ff.spearman(a, -a) == pytest.approx(-1)
    assert ff.spearman(np.ones(10), a[:10]) == 0.0
