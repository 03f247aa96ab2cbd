"""The README's "Your own data" path end to end on a small Flickr8k-format folder of real
photos (scikit-image's and scikit-learn's bundled samples, with captions written here):
train -> convert -> caption -> evaluate, with the default (random) encoder and with a local
weights file (``--weights PATH``, as a user's downloaded file would be given)."""

import json

import pytest

import keras

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
    assert report["health"]["status"] in ("ok", "broken")
    capsys.readouterr()
    assert cli(["caption", "--bundle", str(bundle), str(photo_folder / "Images" / "chelsea.jpg")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    vocabulary = {w for caps in PHOTO_CAPTIONS.values() for c in caps for w in c.split()}
    assert line["caption"] and set(line["caption"].split()) <= vocabulary
    assert cli(["evaluate", "--bundle", str(bundle), "--dataset", str(photo_folder), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["counts"] == {"images": 6, "references": 12}
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert 0.0 <= scores["caption_scores"][key] <= 1.0 or key == "cider"
    print("caption", weights, repr(line["caption"]), "scores", scores["caption_scores"])
