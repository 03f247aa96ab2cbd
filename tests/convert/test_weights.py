"""Encoder weights offline: local files in both Keras formats, with or without the top; each
failure is one clear line (no traceback); the converter leaves no temporary folder behind,
also when interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import keras
import tf_keras
from keras import layers

from convert.model import build_encoder
from daemon.cli import main as cli
from daemon.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[2]
FEATURES = 576  # MobileNetV3Small's pooled features
SIZE = 64


def _seed_decoder(path: Path, vocab: Vocabulary, features: int = FEATURES, prefix: int = 12) -> None:
    """A small seed-architecture decoder (.h5) for the vocabulary."""
    f = keras.Input((features,))
    p = keras.Input((prefix,))
    x = layers.Dense(32, activation="relu")(layers.Dropout(0.4)(f))
    s = layers.LSTM(32)(layers.Dropout(0.4)(layers.Embedding(len(vocab), 16, mask_zero=True)(p)))
    out = layers.Dense(len(vocab), activation="softmax")(layers.Dense(32, activation="relu")(layers.add([x, s])))
    keras.Model([f, p], out).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    vocab = Vocabulary(["startseq", "endseq", "a", "dog", "runs"])
    vocab.save(root / "vocab.txt")
    _seed_decoder(root / "seed.h5", vocab)
    keras.utils.set_random_seed(3)
    # Keras 3 weights files of MobileNetV3Small, with and without the classifier top ...
    keras.applications.MobileNetV3Small(weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(root / "top.weights.h5")
    keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)).save_weights(
        root / "notop.weights.h5")
    # ... and of another model, which shares layer names with different shapes
    keras.applications.MobileNetV3Large(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)).save_weights(
        root / "large.weights.h5")
    return root


def _conv_kernel(path: Path, include_top: bool) -> np.ndarray:
    model = keras.applications.MobileNetV3Small(weights=None, include_top=include_top, input_shape=(SIZE, SIZE, 3))
    model.load_weights(path)
    return model.get_layer("expanded_conv_project").get_weights()[0]


@pytest.mark.parametrize("name,top", [("top.weights.h5", True), ("notop.weights.h5", False)])
def test_a_local_weights_file_loads_with_or_without_top(files, name, top):
    encoder = build_encoder("MobileNetV3Small", SIZE, str(files / name), pooling="avg")
    loaded = encoder.get_layer("backbone").get_layer("expanded_conv_project").get_weights()[0]
    np.testing.assert_array_equal(loaded, _conv_kernel(files / name, top))


def test_a_legacy_keras2_h5_with_its_top_loads(tmp_path):
    """A Keras 2 file (MobileNetV3's layers were renamed in Keras 3: Conv/BatchNorm -> conv_bn)."""
    full = tf_keras.applications.MobileNetV3Small(weights=None, input_shape=(SIZE, SIZE, 3))
    full.save_weights(tmp_path / "mnv3s.h5")
    pooled = tf_keras.applications.MobileNetV3Small(weights=None, include_top=False, pooling="avg",
                                                    input_shape=(SIZE, SIZE, 3))
    pooled.load_weights(tmp_path / "mnv3s.h5", by_name=True)
    encoder = build_encoder("MobileNetV3Small", SIZE, str(tmp_path / "mnv3s.h5"), pooling="avg")
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(encoder.predict(images, verbose=0), pooled.predict(images, verbose=0), atol=1e-5)


def _convert(files: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", "--from-seed", "--encoder", "MobileNetV3Small", "--decoder", str(files / "seed.h5"),
            "--vocab", str(files / "vocab.txt"), "--input-size", str(SIZE), "--out", str(out), *extra]


@pytest.mark.parametrize("weights,expected", [
    (None, "needs the encoder weights it was trained with"),
    (["--weights", "none"], "--allow-random-encoder"),
    (["--weights", "missing.h5"], "missing.h5 does not exist"),
    (["--weights", "large.weights.h5"], "does not fit MobileNetV3Small: layer '"),
])
def test_each_weights_error_is_one_clear_line(files, tmp_path, capsys, weights, expected):
    extra = [] if weights is None else [weights[0], str(files / weights[1]) if "." in weights[1] else weights[1]]
    assert cli(_convert(files, tmp_path / "b", "--quiet", *extra)) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: ") and expected in out[0], out
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", **extra)


def test_imagenet_without_network_says_where_to_put_the_file(files, tmp_path):
    home = tmp_path / "keras-home"
    proxy = "http://127.0.0.1:9"  # nothing listens: every download fails at once, network or not
    result = subprocess.run([sys.executable, "-m", "daemon.cli", *_convert(files, tmp_path / "b", "--quiet",
                                                                         "--weights", "imagenet")],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env=_env(KERAS_HOME=str(home), HTTPS_PROXY=proxy, https_proxy=proxy,
                                     HTTP_PROXY=proxy, http_proxy=proxy))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    fname = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert f"{home / 'models' / fname}" in errors[0] and "--weights PATH" in errors[0]
    assert "Traceback" not in result.stderr


def _sigint_at_default() -> None:
    """In the child, before exec: SIGINT at its default, so Python turns it into KeyboardInterrupt
    also when pytest was started with SIGINT ignored (a background job of a non-interactive
    shell), which the child would inherit and which made it calibrate all 5000 images."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_no_temporary_folder_after_a_conversion_or_an_interrupted_one(files, tmp_path):
    # The two conversions are independent and spend most of their time in single-threaded
    # tracing and conversion: they run side by side, each with a TMPDIR of its own. The explainer
    # export (and its temporary folder) runs before calibration: the interrupted one has done it.
    temp = {name: tmp_path / f"tmp-{name}" for name in ("ok", "cut")}
    for folder in temp.values():
        folder.mkdir()
    args = [sys.executable, "-m", "daemon.cli", *_convert(files, tmp_path / "ok", "--weights", "none",
                                                           "--allow-random-encoder", "--calibration", "8", "--no-explainer",
                                                           "--quiet")]
    with open(tmp_path / "ok.log", "wb") as log:
        done = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env(TMPDIR=str(temp["ok"])))
    try:
        args = [sys.executable, "-m", "daemon.cli", *_convert(files, tmp_path / "cut", "--weights", "none",
                                                               "--allow-random-encoder", "--calibration", "5000")]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                                env=_env(TMPDIR=str(temp["cut"])), preexec_fn=_sigint_at_default)
        seen = b""
        deadline = time.monotonic() + 600
        while b"calibrating:" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += os.read(proc.stdout.fileno(), 4096)
        assert b"calibrating:" in seen, seen[-2000:]
        assert b"explainer graph: " in seen, seen[-2000:]  # the explainer export ran to its end before calibration
        # mid-way: the export is there
        assert any(p.name.startswith("explaincam-encoder-") for p in temp["cut"].iterdir())
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        assert proc.returncode == 130
        assert list(temp["cut"].iterdir()) == []
        assert not (tmp_path / "cut").exists() and not (tmp_path / "cut.partial").exists()

        assert done.wait(timeout=600) == 0, (tmp_path / "ok.log").read_text(errors="replace")[-4000:]
    finally:
        if done.poll() is None:
            done.kill()
            done.wait()
    assert (tmp_path / "ok" / "manifest.json").is_file()
    assert list(temp["ok"].iterdir()) == []
