"""Captioned image sets for training: generated scenes, or a user's Flickr8k/Flickr30k folder.

Flickr8k (``captions.txt``: a CSV with the header ``image,caption``, or the older
``Flickr8k.token.txt``: ``image#n<TAB>caption``) and Flickr30k (``results.csv``:
``image_name| comment_number| comment``, the seed project's format). Images are looked for
in ``Images/``, ``images/``, ``flickr30k_images/``, ``Flicker8k_Dataset/`` or the folder itself.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.scenes import COLOURS, SHAPES, SIZES, scene_at
from daemon.vocab import Vocabulary, normalise_caption

FOREGROUND_CELL = 8  # CaptionSet.foreground is kept at 1/8 of the image side
MAX_OBJECTS = 3  # the most objects a generated scene holds
ATTRIBUTES = (SIZES, tuple(COLOURS), SHAPES)  # the object words of a scene, by kind: size, colour, shape
IMAGE_FOLDERS = ("Images", "images", "flickr30k_images", "Flicker8k_Dataset", "Flickr8k_Dataset")


@dataclass
class CaptionSet:
    """Images (N, H, W, 3 uint8 RGB), for each image its reference captions, and where known
    (generated scenes) the objects' extent (N, H/8, W/8 bool; an 8x8 block holds an object pixel),
    centres (N, MAX_OBJECTS, 2 pixel x, y; NaN where a scene has fewer objects) and attributes
    (N, MAX_OBJECTS, 3: indices into ATTRIBUTES' sizes, colours and shapes; -1 where a scene
    has fewer objects)."""

    images: np.ndarray
    captions: list[list[str]]
    foreground: np.ndarray | None = None
    centres: np.ndarray | None = None
    attributes: np.ndarray | None = None


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image file as size x size RGB uint8; raise ValueError if it is unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def scenes_set(count: int, seed: int, progress=None) -> CaptionSet:
    """``count`` generated scenes of stream ``seed`` in memory."""
    images, captions, foreground = [], [], []
    centres = np.full((count, MAX_OBJECTS, 2), np.nan, np.float32)
    attributes = np.full((count, MAX_OBJECTS, len(ATTRIBUTES)), -1, np.int8)
    for i in range(count):
        s = scene_at(seed, i)
        images.append(s.image)
        captions.append([s.caption])
        foreground.append(s.foreground(FOREGROUND_CELL))
        centres[i, :len(s.objects)] = [obj.center for obj in s.objects]
        attributes[i, :len(s.objects)] = [[values.index(value) for values, value in
                                           zip(ATTRIBUTES, (obj.size, obj.colour, obj.shape))] for obj in s.objects]
        if progress:
            progress(i + 1, count)
    return CaptionSet(np.stack(images), captions, np.stack(foreground), centres, attributes)


def object_density(centres: np.ndarray, attributes: np.ndarray, image_side: int, map_side: int,
                   sigma_cells: float = 0.6, mass: float = 10.0) -> np.ndarray:
    """Per image, a (map_side, map_side, C) map with one channel per word of ATTRIBUTES (each
    size, colour and shape, in that order), holding a Gaussian of mass ``mass`` at the centre
    of every object that word describes.

    ``centres`` is (N, K, 2) pixel x, y and ``attributes`` (N, K, 3) indices, -1 for absent
    objects. Each kind's channels sum to ``mass`` times the number of objects whatever
    their area (the density maps of crowd counting), so a mean over them counts objects
    where a mean over their area cannot, and every word that names an object has evidence
    of its own at that object's centre.
    """
    cell = image_side / map_side
    grid = (np.arange(map_side, dtype=np.float32) + 0.5) * cell  # cell centres in pixels
    present = attributes[..., 0] >= 0
    cx = np.where(present, centres[..., 0], 0.0)[..., None]
    cy = np.where(present, centres[..., 1], 0.0)[..., None]
    gx = np.exp(-0.5 * ((grid - cx) / (sigma_cells * cell)) ** 2)  # (N, K, map_side)
    gy = np.exp(-0.5 * ((grid - cy) / (sigma_cells * cell)) ** 2)
    blobs = gy[..., :, None] * gx[..., None, :]  # (N, K, map_side, map_side)
    blobs /= blobs.sum(axis=(-2, -1), keepdims=True)
    words = np.concatenate([attributes[..., [kind]] == np.arange(len(values))
                            for kind, values in enumerate(ATTRIBUTES)], axis=-1) & present[..., None]
    return (mass * np.einsum("nkhw,nkc->nhwc", blobs, words.astype(np.float32))).astype(np.float32)


def read_flickr_captions(folder: str | Path) -> dict[str, list[str]]:
    """Captions by image file name from a Flickr8k or Flickr30k caption file."""
    folder = Path(folder)
    by_image: dict[str, list[str]] = {}
    if (folder / "results.csv").is_file():  # Flickr30k: image_name| comment_number| comment
        with open(folder / "results.csv", newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="|")
            next(reader, None)
            for row in reader:
                if len(row) >= 3:
                    by_image.setdefault(row[0].strip(), []).append("|".join(row[2:]).strip())
    elif (folder / "captions.txt").is_file():  # Flickr8k (Kaggle): image,caption
        with open(folder / "captions.txt", newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for row in reader:
                if len(row) >= 2:
                    by_image.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    elif (folder / "Flickr8k.token.txt").is_file():  # Flickr8k (original): image#n\tcaption
        for line in (folder / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
            if "\t" in line:
                key, caption = line.split("\t", 1)
                by_image.setdefault(key.split("#")[0], []).append(caption.strip())
    else:
        raise FileNotFoundError(
            f"{folder} has no results.csv (Flickr30k), captions.txt or Flickr8k.token.txt (Flickr8k)")
    if not by_image:
        raise ValueError(f"no captions found in {folder}")
    return by_image


def flickr_set(folder: str | Path, size: int, limit: int | None = None, progress=None) -> CaptionSet:
    """Images and captions of a Flickr-style folder, resized to ``size``."""
    folder = Path(folder)
    by_image = read_flickr_captions(folder)
    image_dir = next((folder / d for d in IMAGE_FOLDERS if (folder / d).is_dir()), folder)
    names = sorted(by_image)[:limit]
    images, captions = [], []
    for i, name in enumerate(names):
        images.append(load_image(image_dir / name, size))
        captions.append(by_image[name])
        if progress:
            progress(i + 1, len(names))
    return CaptionSet(np.stack(images), captions)


def build_vocabulary(captions: list[list[str]], min_count: int = 1) -> Vocabulary:
    """Words seen at least ``min_count`` times, most frequent first, plus start/end tokens."""
    counts = Counter(w for caps in captions for c in caps for w in normalise_caption(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary(["startseq", "endseq"] + [w for w in words if w not in ("startseq", "endseq")])


def sequences(captions: list[list[str]], vocab: Vocabulary, max_words: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-forcing arrays: for each (image, caption) pair the image index, the input
    tokens ``[start, w1..wn]`` and the targets ``[w1..wn, end]``, post-padded with 0."""
    rows, inputs, targets = [], [], []
    for i, caps in enumerate(captions):
        for c in caps:
            ids = vocab.encode(c)[:max_words]
            seq_in = [vocab.start] + ids
            seq_out = ids + [vocab.end]
            pad = max_words + 1 - len(seq_in)
            rows.append(i)
            inputs.append(seq_in + [0] * pad)
            targets.append(seq_out + [0] * pad)
    return np.array(rows), np.array(inputs, np.int32), np.array(targets, np.int32)
