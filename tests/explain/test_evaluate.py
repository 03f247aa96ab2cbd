"""``explaincam evaluate`` on a few generated scenes with the shipped bundle."""

from __future__ import annotations

import argparse
import json

import pytest

from convert import evaluate as ev
from convert.scenes import write_scenes
from daemon.bundle import load_bundle
from daemon.explain_settings import ExplainOptions
from tests.conftest import SHIPPED_BUNDLE


def test_caption_and_explanation_metrics_on_two_scenes(tmp_path):
    """The figures a user reads, against what the README measured on the shipped bundle:
    exact match 0.997 and int8/float agreement 1.0 (so both right on two scenes), Grad-CAM
    pointing 0.93-0.96, deletion AUC 0.28 against 0.67 for the random ordering, insertion
    0.94 against 0.87, randomization similarity of Grad-CAM about 0 (its maps depend on the
    weights)."""
    scenes = write_scenes(tmp_path / "scenes", 2, seed=8282)
    methods = {"gradcam", "saliency", "occlusion"}
    report = ev.evaluate(SHIPPED_BUNDLE, scenes, explanations=True, methods=["gradcam", "saliency", "occlusion"],
                         options=ExplainOptions(ig_steps=4, smoothgrad_samples=2, occlusion_steps=6))
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}))
    records = [json.loads(line) for line in (scenes / "captions.jsonl").read_text().splitlines()]
    named = sum(len({i for obj in r["objects"] for i in obj["token_indices"]}) for r in records)
    assert report["counts"]["scenes"] == 2 and report["counts"]["object_words"] == named
    assert report["exact_match"] == report["exact_match_float"] == report["int8_float_agreement"] == 1.0
    assert report["bleu4"] == report["caption_scores"]["bleu4"] == 1.0
    assert report["caption_scores"]["meteor"] == 1.0 and report["bundle_health"]["status"] == "ok"
    # every word of 2 scenes: at most one miss
    assert report["pointing_game"]["gradcam"] >= 1 - 1 / named, report["pointing_game"]
    assert set(report["pointing_game"]) == methods and 0 <= report["pointing_game"]["saliency"] <= 1
    deletion, insertion = report["deletion_auc"], report["insertion_auc"]
    for key in ("deletion_auc", "insertion_auc", "deletion_auc_int8", "insertion_auc_int8"):
        assert set(report[key]) == methods | {"random"} and all(0 <= v <= 1 for v in report[key].values())
    for method in ("gradcam", "saliency"):  # the probability falls sooner when the explained pixels go first
        assert 0 <= deletion[method] < deletion["random"] - 0.2, deletion
    assert insertion["gradcam"] > insertion["random"], insertion
    # occlusion explains the int8 model: its pixels taken first lower the int8 model's probability sooner
    assert report["deletion_auc_int8"]["occlusion"] < report["deletion_auc_int8"]["random"], report["deletion_auc_int8"]
    # the float twin's maps against the int8 occlusion maps, and the flagged words' stability
    assert set(report["agreement_with_int8_occlusion"]) == {"gradcam", "saliency"}
    assert all(-1 <= v <= 1 for v in report["agreement_with_int8_occlusion"].values())
    stability = report["gradient_stability"]["gradcam"]
    assert stability["resolved"]["words"] + stability["below_resolution"]["words"] == named
    # occlusion's randomization runs on an int8 quantization of each randomized stage
    similarity = report["randomization_similarity"]
    assert set(similarity) == methods | {"mean"}
    assert similarity["gradcam"] < 0.3, similarity  # the README: 0.02 / -0.03 / 0.03
    assert similarity["occlusion"] < 0.5, similarity  # the README: 0.31
    assert similarity["mean"] == pytest.approx(sum(similarity[m] for m in methods) / len(methods), abs=1e-3)
    # the shipped Grad-CAM layer is in the encoder head, so the backbone is randomized from its top down
    assert list(report["randomization_cascade"]) == ["decoder", "encoder_head", "backbone_top"]
    assert report["randomization_cascade"]["backbone_top"] == {m: similarity[m] for m in methods}
    assert report["settings"]["gradcam_layer"] == load_bundle(SHIPPED_BUNDLE).manifest["gradcam_layer"]
    assert "lstm" in report["settings"]["randomized_layers"]["decoder"]


def test_a_folder_that_is_not_a_scenes_folder_is_refused(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    ev.configure(parser)
    assert ev.main(parser.parse_args(["--bundle", str(SHIPPED_BUNDLE), "--scenes", str(tmp_path)])) == 2
    assert "not a scenes folder" in capsys.readouterr().err
