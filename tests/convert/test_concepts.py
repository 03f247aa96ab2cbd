"""`explaincam concepts`: ACE concept discovery, CAVs, TCAV scores and the bank written into a bundle."""

import json
import shutil

import cv2
import numpy as np
import pytest

from convert import concepts
from convert.scenes import write_scenes
from daemon.bundle import load_bundle, sha256_file
from daemon.captioner import DEFAULT_BUNDLE
from daemon.cli import main as cli
from daemon.explain.concept_bank import BACKGROUND, ConceptBank
from daemon.imaging import decode_png
from daemon.scenes import scene_at

SMALL = ["--clusters", "6", "--members", "8", "--min-images", "2", "--random-sets", "3", "--quiet"]


def test_provenance_names_the_object_a_segment_mostly_lies_on():
    scene = scene_at(31, 0)
    objects = concepts.object_masks(scene.objects, scene.image.shape[:2])
    colour, shape, mask = objects[0]
    assert concepts.provenance(mask, objects) == (colour, shape)
    inner = mask & np.roll(mask, 3, axis=0)  # still inside the object
    assert concepts.provenance(inner, objects) == (colour, shape)
    corner = np.zeros_like(mask)
    corner[:5, :5] = True
    if not any(m[:5, :5].any() for _, _, m in objects):
        assert concepts.provenance(corner, objects) == (BACKGROUND, BACKGROUND)


def test_cav_points_from_random_patches_towards_the_concept():
    rng = np.random.default_rng(0)
    negatives = rng.normal(0, 1, (40, 16))
    positives = rng.normal(0, 1, (40, 16))
    positives[:, 3] += 4.0
    cav = concepts.train_cav(positives, negatives, seed=0)
    assert np.isclose(np.linalg.norm(cav), 1.0)
    assert np.argmax(np.abs(cav)) == 3 and cav[3] > 0


def test_tcav_scores_and_t_test():
    grads = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 2.0], [0.5, -3.0]])
    cavs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert concepts.tcav_scores(grads, cavs).tolist() == [0.75, 0.5]
    assert concepts.t_test(np.ones(5), np.ones(5)) == 1.0  # constant and equal: no evidence
    assert concepts.t_test(np.ones(5), np.zeros(5)) == 0.0
    assert concepts.t_test(np.full(5, 0.9) + np.arange(5) * 1e-3, np.full(5, 0.1) + np.arange(5) * 1e-3) < 1e-6


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    """A writable copy of the shipped bundle."""
    path = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(DEFAULT_BUNDLE, path)
    return path


def test_concepts_command_writes_the_bank_into_the_bundle(bundle_copy, capsys):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"].pop("concepts", None)
    manifest["files"].pop("concepts_gallery", None)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    (bundle_copy / "concepts.npz").unlink(missing_ok=True)

    assert cli(["concepts", "--bundle", str(bundle_copy), "--scenes", "6", "--seed", "77", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "concepts, TCAV for" in out and "significant for" in out

    bundle = load_bundle(bundle_copy)  # hashes verified, the new files included
    assert bundle.manifest["files"]["concepts"] == "concepts.npz"
    assert bundle.manifest["files"]["concepts_gallery"] == "concepts.png"
    bank = ConceptBank.load(bundle.file("concepts"))
    k = len(bank)
    assert 1 <= k <= 6 and bank.layer == "spatial_reduce"  # the encoder's reduced map
    assert bank.n_segments == (15, 50) and bank.association.shape == (k, len(bank.words))
    assert bank.centres.shape == bank.cavs.shape == (k, bank.centres.shape[1])
    assert np.allclose(np.linalg.norm(bank.cavs, axis=1), 1.0, atol=1e-5)
    assert (bank.radius > 0).all() and (bank.image_count >= 2).all()
    assert bank.thumbnails.shape[:2] == (k, 8) and bank.thumbnails.dtype == np.uint8
    assert bank.exemplar_colour.shape == bank.exemplar_shape.shape == (k, 8)
    scene_words = {"red", "green", "blue", "yellow", "purple", "circle", "square", "triangle", "cross", BACKGROUND}
    assert set(bank.exemplar_colour.ravel()) | set(bank.exemplar_shape.ravel()) <= scene_words
    assert "a" in bank.words and bank.tcav.shape == bank.tcav_p.shape == (k, len(bank.words))
    assert ((0 <= bank.tcav) & (bank.tcav <= 1)).all() and ((0 <= bank.tcav_p) & (bank.tcav_p <= 1)).all()
    assert (bank.significant == (bank.tcav_p < concepts.SIGNIFICANCE)).all()
    assert bank.source == "scenes:seed=77:count=6"
    gallery = decode_png(bundle.file("concepts_gallery").read_bytes())
    assert gallery.shape[0] == k * 50 and gallery.shape[2] == 3


def test_concepts_from_folders_can_stay_out_of_the_bundle(bundle_copy, tmp_path):
    before = sha256_file(bundle_copy / "manifest.json")
    scenes = write_scenes(tmp_path / "scenes", 5, seed=78)
    out = tmp_path / "bank"
    assert cli(["concepts", "--bundle", str(bundle_copy), "--images", str(scenes), "--out-of-bundle", str(out),
                *SMALL]) == 0
    bank = ConceptBank.load(out / "concepts.npz")
    assert (out / "concepts.png").is_file()
    assert set(bank.exemplar_colour.ravel()) != {""}  # provenance from captions.jsonl objects
    assert sha256_file(bundle_copy / "manifest.json") == before

    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(5):
        cv2.imwrite(str(plain / f"{i}.png"), cv2.cvtColor(scene_at(79, i).image, cv2.COLOR_RGB2BGR))
    assert cli(["concepts", "--bundle", str(bundle_copy), "--images", str(plain), "--out-of-bundle", str(out),
                *SMALL]) == 0
    bank = ConceptBank.load(out / "concepts.npz")  # captions from the float model, no provenance
    assert set(bank.exemplar_colour.ravel()) == {""}
    assert all(label.startswith("concept ") for label in bank.labels)


def test_concepts_command_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["concepts", "--bundle", str(DEFAULT_BUNDLE), "--scenes", "0"])
    assert cli(["concepts", "--bundle", str(tmp_path), "--scenes", "2"]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_the_default_bottleneck_is_the_reduced_map_else_the_backbones_last_layer():
    from convert.model import build_captioner, build_encoder

    for pooling in ("moments", "avg"):
        encoder = build_encoder("MobileNetV3Small", 64, None, pooling, minimalistic=True, stride=16)
        layer = concepts.bottleneck_layer(build_captioner(encoder, 10, 8, 8))
        expected = "spatial_reduce" if pooling == "moments" else encoder.get_layer("backbone").layers[-1].name
        assert layer == expected, (pooling, layer)
