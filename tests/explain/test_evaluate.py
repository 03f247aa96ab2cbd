"""``explaincam evaluate`` on a few generated scenes with the shipped bundle."""

from __future__ import annotations

import argparse


from convert import evaluate as ev
from convert.scenes import write_scenes
from daemon.bundle import load_bundle
from daemon.explain_settings import ExplainOptions
from tests.conftest import SHIPPED_BUNDLE



def test_caption_and_explanation_metrics_on_two_scenes(tmp_path):
    scenes = write_scenes(tmp_path / "scenes", 2, seed=8282)
    report = ev.evaluate(SHIPPED_BUNDLE, scenes, explanations=True, methods=["gradcam", "saliency"],
                         options=ExplainOptions(ig_steps=4, smoothgrad_samples=2))
    assert report["counts"]["scenes"] == 2 and report["counts"]["object_words"] >= 4
    for key in ("exact_match", "bleu4", "int8_float_agreement"):
        assert 0 <= report[key] <= 1
    assert set(report["pointing_game"]) == {"gradcam", "saliency"}
    assert set(report["deletion_auc"]) == set(report["insertion_auc"]) == {"gradcam", "saliency", "random"}
    assert all(0 <= v <= 1 for v in report["deletion_auc"].values())
    assert set(report["randomization_similarity"]) == {"gradcam", "saliency", "mean"}
    # the shipped Grad-CAM layer is in the encoder head, so the backbone is randomized from its top down
    assert list(report["randomization_cascade"]) == ["decoder", "encoder_head", "backbone_top"]
    assert report["settings"]["gradcam_layer"] == load_bundle(SHIPPED_BUNDLE).manifest["gradcam_layer"]
    assert "lstm" in report["settings"]["randomized_layers"]["decoder"]


def test_a_folder_that_is_not_a_scenes_folder_is_refused(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    ev.configure(parser)
    assert ev.main(parser.parse_args(["--bundle", str(SHIPPED_BUNDLE), "--scenes", str(tmp_path)])) == 2
    assert "not a scenes folder" in capsys.readouterr().err
