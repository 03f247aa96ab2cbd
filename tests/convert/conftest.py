"""Artefacts that several convert test files check, made once per test run: a captioner trained on
a small Flickr8k-format folder of real photos, and its bundle. Training and converting take
minutes on a busy 2-core box; each test that only reads them would otherwise pay again, and so
would each pytest-xdist worker that runs one of those files (``made_once``)."""

import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

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


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name`` filled by ``make``, made once per test run: the pytest-xdist workers of
    a run share it (the first makes it under a file lock, the others wait for it and read it)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing to share
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    run_root = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's own
    folder = run_root / name
    with open(run_root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".made").exists():  # first, or the one before failed half-way
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """A Flickr8k-format folder (Images/ + captions.txt) of scikit-image's and scikit-learn's
    bundled photos, with the captions of PHOTO_CAPTIONS."""
    return made_once(tmp_path_factory, "flickr8k", write_photo_folder)


def write_photo_folder(root: Path) -> None:
    """Fill ``root`` with the photo folder of ``photo_folder``."""
    from skimage import data
    from sklearn.datasets import load_sample_images

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
    folder = made_once(tmp_path_factory, "photo-captioner", lambda out: train_and_convert(photo_folder, out))
    return folder / "t", folder / "b"
