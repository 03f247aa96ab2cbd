"""The README's "Your own data" path end to end on a small Flickr8k-format folder of real
photos (scikit-image's and scikit-learn's bundled samples, with captions written here):
train -> convert -> caption -> evaluate, with the default (random) encoder and with a local
weights file (``--weights PATH``, as a user's downloaded file would be given)."""

import json

import numpy as np
import pytest
from PIL import Image

import keras

from daemon.cli import main as cli

SIZE = 64
CAPTIONS = {
    "astronaut.jpg": ["a woman in a space suit smiles", "an astronaut poses in front of a flag"],
    "chelsea.jpg": ["a cat looks to the side", "an orange cat sits on a floor"],
    "coffee.jpg": ["a cup of coffee on a saucer", "a coffee cup on a red table"],
    "rocket.jpg": ["a rocket stands on a launch pad", "a space rocket ready for launch"],
    "china.jpg": ["an old temple with a red roof", "a chinese building between trees"],
    "flower.jpg": ["a bee on a pink flower", "a flower with a small insect"],
}


@pytest.fixture(scope="module")
def flickr_folder(tmp_path_factory):
    from skimage import data
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("flickr8k")
    (root / "Images").mkdir()
    photos = {"astronaut.jpg": data.astronaut(), "chelsea.jpg": data.chelsea(), "coffee.jpg": data.coffee(),
              "rocket.jpg": data.rocket()}
    samples = load_sample_images()
    for name, image in zip(samples.filenames, samples.images):
        photos[name.rsplit("/", 1)[-1]] = image
    for name, image in photos.items():
        Image.fromarray(np.asarray(image, np.uint8)).save(root / "Images" / name)
    lines = ["image,caption"] + [f"{name},{caption}" for name, caps in CAPTIONS.items() for caption in caps]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.timeout(1800)  # two trainings and conversions; minutes on a busy 2-core box
@pytest.mark.parametrize("weights", ["default", "file"])
def test_train_convert_caption_evaluate_on_real_photos(flickr_folder, tmp_path, capsys, weights):
    extra = []
    if weights == "file":  # a user's downloaded weights file (here: saved by keras, classifier top included)
        keras.utils.set_random_seed(1)
        keras.applications.MobileNetV3Small(weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(
            tmp_path / "mobilenet_v3_small.weights.h5")
        extra = ["--weights", str(tmp_path / "mobilenet_v3_small.weights.h5")]
    assert cli(["train", "--dataset", str(flickr_folder), "--out", str(tmp_path / "t"), "--epochs", "2",
                "--input-size", str(SIZE), "--batch-size", "4", "--quiet", *extra]) == 0
    summary = json.loads((tmp_path / "t" / "train.json").read_text())
    assert summary["weights"] == ("mobilenet_v3_small.weights.h5" if weights == "file" else "none")
    assert cli(["convert", "--model", str(tmp_path / "t"), "--out", str(tmp_path / "b"), "--images",
                str(flickr_folder / "Images"), "--calibration", "6", "--quiet"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["calibration"]["images"] == 6 and report["calibration"]["source"] == str(flickr_folder / "Images")
    assert report["health"]["status"] in ("ok", "broken")
    capsys.readouterr()
    assert cli(["caption", "--bundle", str(tmp_path / "b"), str(flickr_folder / "Images" / "chelsea.jpg")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    vocabulary = {w for caps in CAPTIONS.values() for c in caps for w in c.split()}
    assert line["caption"] and set(line["caption"].split()) <= vocabulary
    assert cli(["evaluate", "--bundle", str(tmp_path / "b"), "--dataset", str(flickr_folder), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["counts"] == {"images": 6, "references": 12}
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert 0.0 <= scores["caption_scores"][key] <= 1.0 or key == "cider"
    print("caption scores", weights, scores["caption_scores"])
