"""The model bundle: a folder with ``manifest.json`` naming and hashing every file.

This reader is the one statement of the format (README and DESIGN point here); the
converter (``convert/pack.py``) writes it through ``write_manifest``.

Format (``format_version`` 1). The files, by their key in the manifest's ``files``
(the shipped bundle's names; a manifest may name others)::

    encoder_int8      encoder_int8.tflite     full-integer encoder: uint8 RGB in, int8 features (required)
    decoder           decoder.npz             weights of the numpy step decoder (required)
    vocab             vocab.txt               one word per line; line k is token k+1, 0 is padding (required)
    captioner         captioner.keras         float sequence-form captioner: the converter, the TensorFlow backend
    explainer         explainer_float.tflite  float32 logits and gradient graphs, builtin ops only: the LiteRT
                                              backend (daemon.explain.backends.litert)
    feature_stats     feature_stats.npz       what "familiar" means (daemon.familiarity); without it captions
                                              carry no familiarity
    concepts          concepts.npz            ACE concept bank (daemon.explain.concept_bank)
    concepts_gallery  concepts.png            the bank's concepts drawn for people
    report            report.json             what the converter measured (convert/health.py reads it)

``manifest.json``::

    format_version    1
    model_name        the model's name (in captions, discovery, fleet jobs)
    input             size (side of the square input, pixels), resize ("area", or "nearest": PIL's
                      rule, for seed models), and how the pixels are given (color, dtype, range,
                      preprocessing: folded into the model, so every bundle takes plain uint8 RGB)
    max_length        most words a caption may have
    special_tokens    start and end words, pad_id
    files             key -> file name inside the folder (above)
    sha256            file name -> hex sha256 of every file named in ``files``
    gradcam_layer     the layer Grad-CAM explains by default
    explainer         with the graph: its file, batch, tokens, gradcam_layer, bottleneck_layer
                      and signatures (what the LiteRT backend checks before it runs it)
    encoder, feature_dim, vocab_size, training: how the model was made (for people)

A bundle that lacks a required key or file, or whose files do not match their hashes,
is refused with a BundleError naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from daemon.files import write_atomically

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("model_name", "input", "files", "sha256", "special_tokens", "max_length")  # of manifest.json
REQUIRED_FILES = ("encoder_int8", "decoder", "vocab")  # keys of files every bundle has: what captions need
RESIZE_METHODS = ("area", "nearest")  # input.resize: how the model's training images were resized


class BundleError(Exception):
    """A model bundle is missing, malformed or does not match its hashes."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder and its manifest."""

    path: Path
    manifest: dict
    manifest_sha256: str = ""  # of manifest.json as read: names this exact bundle (it hashes every other file)

    @property
    def name(self) -> str:
        """The model's name."""
        return self.manifest["model_name"]

    @property
    def input_size(self) -> int:
        """Side of the square RGB input the encoder takes."""
        return int(self.manifest["input"]["size"])

    @property
    def resize(self) -> str:
        """How frames are resized to the input: ``area`` (default) or ``nearest`` (PIL's rule, the seed's)."""
        return self.manifest["input"].get("resize", "area")

    @property
    def max_length(self) -> int:
        """Most words a caption may have (the seed's prefix length less the start token)."""
        return int(self.manifest["max_length"])

    def file(self, key: str) -> Path:
        """Path of one of the bundle's files by manifest key (``encoder_int8`` ...)."""
        return self.path / self.manifest["files"][key]

    def has(self, key: str) -> bool:
        """Whether the bundle has the file of this manifest key."""
        return key in self.manifest["files"]


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_manifest(manifest, manifest_path: Path) -> None:
    """Raise BundleError, naming the manifest and the key, unless it has what the daemon reads."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object, not a {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{manifest_path.parent}: bundle format {version!r} is not supported "
                          f"(expected {FORMAT_VERSION})")
    for key in REQUIRED_KEYS:
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks the key {key!r}")
    for key in ("input", "files", "sha256", "special_tokens"):
        if not isinstance(manifest[key], dict):
            raise BundleError(f"{manifest_path}: {key!r} must be a JSON object")
    if not isinstance(manifest["model_name"], str):
        raise BundleError(f"{manifest_path}: 'model_name' must be a string")
    if not _positive_int(manifest["input"].get("size")):
        raise BundleError(f"{manifest_path}: input.size must be a positive whole number of pixels, "
                          f"not {manifest['input'].get('size')!r}")
    if manifest["input"].get("resize", "area") not in RESIZE_METHODS:
        raise BundleError(f"{manifest_path}: input.resize must be one of {', '.join(RESIZE_METHODS)}, "
                          f"not {manifest['input'].get('resize')!r}")
    if not _positive_int(manifest["max_length"]):
        raise BundleError(f"{manifest_path}: max_length must be a positive whole number, "
                          f"not {manifest['max_length']!r}")
    for key in ("start", "end"):
        if not isinstance(manifest["special_tokens"].get(key), str):
            raise BundleError(f"{manifest_path}: special_tokens.{key} must be a word")
    files = manifest["files"]
    for key in REQUIRED_FILES:
        if key not in files:
            raise BundleError(f"{manifest_path} names no {key!r} file")
    for key, name in files.items():
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise BundleError(f"{manifest_path}: files.{key} must be a file name inside the bundle, not {name!r}")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and (by default) hash-check a bundle; raise BundleError with the reason."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist or is not a folder")
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a model bundle: {MANIFEST} is missing")
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    check_manifest(manifest, manifest_path)
    files = manifest["files"]
    if verify:
        for key, name in files.items():
            file = path / name
            if not file.is_file():
                raise BundleError(f"{path}: {name} ({key}) is missing")
            expected = manifest["sha256"].get(name)
            if expected is None:
                raise BundleError(f"{manifest_path} has no sha256 for {name}")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(f"{path}: {name} does not match its sha256 in the manifest "
                                  f"(expected {expected[:12]}…, found {actual[:12]}…); "
                                  "the bundle is corrupt or was edited")
    return Bundle(path, manifest, hashlib.sha256(raw).hexdigest())


def manifest_sha256(path: str | Path) -> str:
    """The sha256 of a bundle folder's manifest.json as it is on disk now; OSError if it cannot be read."""
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()


def write_manifest(path: str | Path, manifest: dict) -> dict:
    """Hash every file named in ``manifest['files']`` and write ``manifest.json``."""
    path = Path(path)
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    manifest["sha256"] = {name: sha256_file(path / name) for name in manifest["files"].values()}
    write_atomically(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
