"""The README's "Your own data" path end to end on a small Flickr8k-format folder of real
photos (scikit-image's and scikit-learn's bundled samples, with captions written here):
train -> convert -> caption -> evaluate, with the default (random) encoder and with a local
weights file (``--weights PATH``, as a user's downloaded file would be given)."""

import json
from pathlib import Path

import keras
import pytest

from convert.captionscore import coco_scores
from convert.health import HEALTH_MIN_AGREEMENT, HEALTH_MIN_COSINE, health
from daemon.cli import main as cli
from tests.convert.conftest import PHOTO_CAPTIONS, PHOTO_SIZE, train_and_convert


@pytest.mark.timeout(1800)  # a training and a conversion; minutes on a busy 2-core box
@pytest.mark.parametrize("weights", ["default", "file"])
def test_train_convert_caption_evaluate_on_real_photos(photo_folder, tmp_path, capsys, request, weights):
    if weights == "default":  # the session's photo captioner (test_train_convert.py checks its bundle's files)
        train_dir, bundle = request.getfixturevalue("photo_bundle")
    else:  # a user's downloaded weights file (here: saved by keras, classifier top included)
        keras.utils.set_random_seed(1)
        keras.applications.MobileNetV3Small(weights=None, input_shape=(PHOTO_SIZE, PHOTO_SIZE, 3)).save_weights(
            tmp_path / "mobilenet_v3_small.weights.h5")
        # the explainer graph of this bundle is not what this test reads; the session bundle has one
        train_dir, bundle = train_and_convert(photo_folder, tmp_path,
                                              ["--weights", str(tmp_path / "mobilenet_v3_small.weights.h5")],
                                              ["--no-explainer"])
    summary = json.loads((train_dir / "train.json").read_text())
    assert summary["weights"] == ("mobilenet_v3_small.weights.h5" if weights == "file" else "none")
    report = json.loads((bundle / "report.json").read_text())
    assert report["calibration"]["images"] == 6 and report["calibration"]["source"] == str(photo_folder / "Images")
    # the verdict follows from the figures the converter measured (a random encoder may well be broken)
    assert report["health"] == health(report)
    assert (report["health"]["status"] == "broken") == (
        report["feature_cosine_mean"] < HEALTH_MIN_COSINE or report["int8_float_agreement"] < HEALTH_MIN_AGREEMENT)
    images = sorted(PHOTO_CAPTIONS)
    capsys.readouterr()
    assert cli(["caption", "--bundle", str(bundle), *(str(photo_folder / "Images" / name) for name in images)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [Path(line["file"]).name for line in lines] == images
    captions = {Path(line["file"]).name: line["caption"] for line in lines}
    vocabulary = {w for caps in PHOTO_CAPTIONS.values() for c in caps for w in c.split()}
    assert all(caption and set(caption.split()) <= vocabulary for caption in captions.values()), captions
    assert cli(["evaluate", "--bundle", str(bundle), "--dataset", str(photo_folder), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["counts"] == {"images": 6, "references": 12}
    # evaluate captions each photo as `caption` does and scores it against both of its references
    assert [(e["image"], e["caption"], e["references"]) for e in scores["examples"]] == [
        (name, captions[name], PHOTO_CAPTIONS[name]) for name in images[:5]]
    expected = coco_scores(PHOTO_CAPTIONS, captions)
    for key in ("bleu1", "bleu4", "rouge_l", "cider", "meteor"):
        assert scores["caption_scores"][key] == pytest.approx(expected[key], abs=1e-4), key
    assert all(0.0 <= scores["caption_scores"][key] <= 1.0 for key in ("bleu1", "bleu4", "rouge_l", "meteor"))
    assert 0.0 <= scores["caption_scores"]["cider"] <= 10.0  # pycocoevalcap's CIDEr(-D) is at most 10
    assert scores["bundle_health"]["status"] in (report["health"]["status"], "broken")
    print("captions", weights, captions, "scores", scores["caption_scores"])
