"""The encoder's head and backbone options (convert.model)."""

import numpy as np
import pytest

import keras


def test_moment_map_pools_to_the_mean_and_the_x_and_y_moments_of_each_channel():
    from convert.model import build_encoder

    encoder = build_encoder(input_size=64, stride=8, minimalistic=True, spatial_channels=5)
    reduced = keras.Model(encoder.input, encoder.get_layer("spatial_reduce").output)
    images = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    a = reduced.predict(images, verbose=0)  # (2, 8, 8, 5)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8), indexing="ij")
    expected = np.concatenate([a.mean((1, 2)), (a * xs[..., None]).mean((1, 2)), (a * ys[..., None]).mean((1, 2))], -1)
    np.testing.assert_allclose(encoder.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-5)
    assert expected[:, 5:].std() > 0  # the moments are not all zero: the check has teeth


def test_the_backbone_is_cut_at_the_requested_stride():
    from convert.model import build_encoder

    encoder = build_encoder(input_size=96, stride=8, minimalistic=True)
    backbone = encoder.get_layer("backbone")
    assert tuple(backbone.output.shape[1:3]) == (12, 12)
    assert not any("hard_swish" in str(getattr(layer, "activation", "")) for layer in backbone.layers)
    with pytest.raises(ValueError, match="minimalistic is a MobileNetV3 option"):
        build_encoder("MobileNetV2", input_size=96, minimalistic=True)


def test_a_moment_map_captioner_survives_save_and_load(tmp_path):
    from convert.model import build_captioner, build_encoder, load_captioner

    captioner = build_captioner(build_encoder(input_size=64, stride=8, minimalistic=True), vocab_size=12)
    captioner.save(tmp_path / "captioner.keras")
    loaded = load_captioner(tmp_path / "captioner.keras")
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    tokens = np.array([[1, 2, 3]], np.int32)
    np.testing.assert_allclose(loaded.predict([images, tokens], verbose=0),
                               captioner.predict([images, tokens], verbose=0), atol=1e-5)


@pytest.mark.parametrize("pooling", ["moments", "moments_max"])
def test_the_explainer_cuts_a_branching_head_at_the_moment_map(pooling):
    from convert.model import build_captioner, build_encoder
    from daemon.explain.backends.tensorflow import SplitCaptioner

    captioner = build_captioner(build_encoder(input_size=64, stride=16, minimalistic=True, pooling=pooling),
                                vocab_size=12)
    split = SplitCaptioner(captioner, "moment_map")
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    acts, features = split.encode(images)
    assert tuple(acts.shape) == (2, 4, 4, 3 * 96)
    np.testing.assert_allclose(np.asarray(features), captioner.get_layer("encoder").predict(images, verbose=0),
                               rtol=1e-4, atol=1e-5)
