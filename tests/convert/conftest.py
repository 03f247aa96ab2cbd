"""Artefacts that several convert test files check, made once per session: a captioner trained on
a small Flickr8k-format folder of real photos, and its bundle. Training and converting take
minutes on a busy 2-core box; each test that only reads them would otherwise pay again."""

import numpy as np
import pytest
from PIL import Image

from daemon.cli import main as cli

PHOTO_SIZE = 64  # encoder input of the photo captioners
PHOTO_CAPTIONS = {
    "astronaut.jpg": ["a woman in a space suit smiles", "an astronaut poses in front of a flag"],
    "chelsea.jpg": ["a cat looks to the side", "an orange cat sits on a floor"],
    "coffee.jpg": ["a cup of coffee on a saucer", "a coffee cup on a red table"],
    "rocket.jpg": ["a rocket stands on a launch pad", "a space rocket ready for launch"],
    "china.jpg": ["an old temple with a red roof", "a chinese building between trees"],
    "flower.jpg": ["a bee on a pink flower", "a flower with a small insect"],
}
PHOTO_TRAINING = ["--epochs", "2", "--input-size", str(PHOTO_SIZE), "--batch-size", "4", "--quiet"]
PHOTO_CALIBRATION = 6  # every photo


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """A Flickr8k-format folder (Images/ + captions.txt) of scikit-image's and scikit-learn's
    bundled photos, with the captions of PHOTO_CAPTIONS."""
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
    lines = ["image,caption"] + [f"{name},{caption}" for name, caps in PHOTO_CAPTIONS.items() for caption in caps]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return root


def train_and_convert(folder, out, train_args=(), convert_args=()):
    """``explaincam train`` on a photo folder, then ``convert`` calibrated on its images, into
    ``out/t`` and ``out/b``; asserts both succeed and returns the two folders."""
    assert cli(["train", "--dataset", str(folder), "--out", str(out / "t"), *PHOTO_TRAINING, *train_args]) == 0
    assert cli(["convert", "--model", str(out / "t"), "--out", str(out / "b"), "--images", str(folder / "Images"),
                "--calibration", str(PHOTO_CALIBRATION), "--quiet", *convert_args]) == 0
    return out / "t", out / "b"


@pytest.fixture(scope="session")
def photo_bundle(photo_folder, tmp_path_factory):
    """(training folder, bundle folder) of a captioner trained on photo_folder with the default
    (random) encoder, converted with every file a bundle can have, the explainer graph included."""
    return train_and_convert(photo_folder, tmp_path_factory.mktemp("photo-captioner"))
