"""Training on a user's Flickr-style folder, conversion to a bundle, and bundle integrity."""

import json

import cv2
import numpy as np
import pytest

from convert.datasets import object_density, read_flickr_captions, scenes_set
from daemon.bundle import BundleError, load_bundle
from daemon.captioner import Captioner
from daemon.cli import main as cli
from daemon.scenes import COLOURS, PLURALS, SHAPES, SIZES, scene_at

# one batch of validation scenes instead of 500: these tests read training curves and the
# trained encoder, and validating 500 scenes every epoch took about half of each training
SMALL_VALIDATION = ("--validation", "8")


def _write_images(folder, count, seed):
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    for i in range(count):
        s = scene_at(seed, i)
        name = f"img{i}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        captions[name] = s.caption
    return captions


def write_flickr8k(root, count=12):
    """Kaggle Flickr8k layout: Images/ + captions.txt (CSV with header image,caption)."""
    caps = _write_images(root / "Images", count, seed=31)
    lines = ["image,caption"]
    for name, c in caps.items():
        lines += [f"{name},{c.capitalize()} .", f'{name},"{c}, clearly"']
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return caps


def write_flickr30k(root, count=12):
    """Flickr30k layout (the seed's): flickr30k_images/ + results.csv (image| n| caption)."""
    caps = _write_images(root / "flickr30k_images", count, seed=32)
    lines = ["image_name| comment_number| comment"]
    for name, c in caps.items():
        lines += [f"{name}| 0| {c} .", f"{name}| 1| {c.upper()}"]
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    return caps


def test_reads_both_flickr_layouts(tmp_path):
    c8 = write_flickr8k(tmp_path / "f8k", 3)
    c30 = write_flickr30k(tmp_path / "f30k", 3)
    r8, r30 = read_flickr_captions(tmp_path / "f8k"), read_flickr_captions(tmp_path / "f30k")
    assert set(r8) == set(c8) and all(len(v) == 2 for v in r8.values())
    assert set(r30) == set(c30) and r30["img0.jpg"][0] == c30["img0.jpg"] + " ."
    with pytest.raises(FileNotFoundError, match="results.csv"):
        read_flickr_captions(tmp_path)


def test_training_on_flickr30k_layout(tmp_path):
    write_flickr30k(tmp_path / "data", 8)
    # the small MobileNetV3 (half the time of the default one): this test reads the layout, not the model
    assert cli(["train", "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "t"), "--epochs", "1",
                "--input-size", "64", "--batch-size", "8", "--minimalistic", "--backbone-stride", "8",
                "--quiet"]) == 0
    summary = json.loads((tmp_path / "t" / "train.json").read_text())
    vocab = (tmp_path / "t" / "vocab.txt").read_text().split()
    assert summary["training_images"] > 0 and {"startseq", "endseq", "a"} <= set(vocab)


# photo_bundle (conftest.py): a captioner trained on a Flickr8k-format folder of real photos and
# converted; test_own_data.py captions and evaluates with it
def test_bundle_has_every_file_and_a_report(photo_bundle):
    _, folder = photo_bundle
    bundle = load_bundle(folder)
    m = bundle.manifest
    for name in ("captioner.keras", "encoder_int8.tflite", "decoder.npz", "vocab.txt", "report.json",
                 "explainer_float.tflite"):
        assert (folder / name).is_file()
        assert len(m["sha256"][name]) == 64
    assert m["input"]["size"] == 64 and m["special_tokens"]["start"] == "startseq"
    report = json.loads((folder / "report.json").read_text())
    assert 0.0 <= report["int8_float_agreement"] <= 1.0
    assert report["sizes_bytes"]["encoder_int8.tflite"] > 10_000


def test_int8_encoder_is_full_integer_with_uint8_input(photo_bundle):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(photo_bundle[1] / "encoder_int8.tflite"))
    interp.allocate_tensors()
    assert interp.get_input_details()[0]["dtype"] == np.uint8
    float_ops = [t for t in interp.get_tensor_details()
                 if t["dtype"] == np.float32 and not t["name"].startswith("serve_image")]
    assert not float_ops, [t["name"] for t in float_ops[:5]]


def test_captioner_runs_on_the_tiny_bundle(photo_bundle):
    cap = Captioner.from_path(photo_bundle[1])
    result = cap.caption(np.zeros((120, 90, 3), np.uint8))
    assert isinstance(result.caption, str) and result.timings["encoder_ms"] > 0


def test_tampered_bundle_is_refused(photo_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(photo_bundle[1], copy)
    with open(copy / "decoder.npz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="decoder.npz does not match its sha256"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(copy)


def test_convert_reports_bad_input(tmp_path, capsys):
    assert cli(["convert", "--model", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "not a training folder" in capsys.readouterr().out
    assert cli(["convert", "--from-seed", "--out", str(tmp_path / "b")]) == 2
    assert "--encoder" in capsys.readouterr().out


def _background_activity(train_dir, scenes):
    """Mean activation of the saved encoder's reduced map outside the objects of ``scenes``."""
    import keras

    from convert.model import load_captioner
    from daemon.scenes import block_any

    encoder = load_captioner(train_dir / "captioner.keras").get_layer("encoder")
    reduced = keras.Model(encoder.input, encoder.get_layer("spatial_reduce").output)
    maps = reduced.predict(np.stack([s.image for s in scenes]).astype("float32"), verbose=0)
    background = ~np.stack([block_any(s.foreground(), s.image.shape[0] // maps.shape[1]) for s in scenes])
    return float((maps * background[..., None]).sum() / (background.sum() * maps.shape[-1]))


def test_background_penalty_keeps_the_encoder_map_quiet_outside_the_objects(tmp_path):
    activity = {}
    for penalty in ("0", "1"):
        out = tmp_path / f"penalty{penalty}"
        assert cli(["train", "--out", str(out), "--scenes", "48", "--epochs", "2", "--minimalistic",
                    "--backbone-stride", "8", "--background-penalty", penalty, "--batch-size", "8",
                    *SMALL_VALIDATION, "--quiet"]) == 0
        summary = json.loads((out / "train.json").read_text())
        assert summary["background_penalty"] == float(penalty) and "accuracy" in summary["history"]
        activity[penalty] = _background_activity(out, [scene_at(77, i) for i in range(8)])
    assert activity["1"] < 0.25 * activity["0"], activity


def test_background_penalty_and_object_density_need_object_masks(tmp_path, capsys):
    write_flickr30k(tmp_path / "data", 4)
    for option in ("--background-penalty", "--object-density"):
        assert cli(["train", "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "t"), "--epochs", "1",
                    "--input-size", "64", option, "1", "--quiet"]) == 2
        assert "need generated scenes" in capsys.readouterr().out


def test_object_density_counts_each_object_once_per_word_that_describes_it():
    data = scenes_set(60, 31)
    density = object_density(data.centres, data.attributes, 224, 14, mass=1.0)
    words = [*SIZES, *COLOURS, *SHAPES]
    assert density.shape == (60, 14, 14, len(words))
    for i, caption in enumerate(c[0] for c in data.captions):
        per_word = dict(zip(words, density[i].sum(axis=(0, 1))))
        tokens = caption.split()
        count = {"two": 2, "three": 3}.get(tokens[0], 2 if (" of " in caption or "above" in caption) else 1)
        for kind in (SIZES, COLOURS, SHAPES):
            assert sum(per_word[w] for w in kind) == pytest.approx(count, abs=1e-4), caption
        named = [w for w in tokens if w in words] + [s for s in SHAPES if PLURALS[s] in tokens]
        for word in named:  # every colour, shape and size word of the caption has its objects' mass
            assert per_word[word] >= 1 - 1e-4, (caption, word)
        if count == 1:  # the densest cell of a lone object is the cell holding its centre
            y, x = np.unravel_index(density[i].sum(-1).argmax(), (14, 14))
            cx, cy = data.centres[i, 0]
            assert (int(cx // 16), int(cy // 16)) == (x, y), caption


def test_object_density_training_fits_the_map_to_the_object_centres(tmp_path):
    out = tmp_path / "density"
    assert cli(["train", "--out", str(out), "--scenes", "48", "--epochs", "2", "--minimalistic",
                "--backbone-stride", "16", "--object-density", "0.05", "--batch-size", "8", *SMALL_VALIDATION,
                "--quiet"]) == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["object_density"] == 0.05 and summary["background_penalty"] == 0.0
    errors = summary["history"]["object_density_error"]
    assert len(errors) == 2 and errors[1] < errors[0], errors


def test_training_needs_at_least_one_validation_scene(tmp_path, capsys):
    assert cli(["train", "--out", str(tmp_path / "t"), "--validation", "0", "--quiet"]) == 2
    assert "--validation must be at least 1" in capsys.readouterr().out
    assert not (tmp_path / "t").exists()
