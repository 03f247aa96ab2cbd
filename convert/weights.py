"""Encoder weights: ``imagenet`` (Keras' download), ``none`` (random) or a local weights file.

A box without internet cannot download ImageNet weights, so a user copies the file Keras
would download onto it and gives its path (``--weights PATH``), or puts it where Keras
looks first (``~/.keras/models/<file>``). Both Keras formats load:

- a legacy Keras 2 ``.h5`` (what keras.applications downloads, with or without the
  classifier top): matched layer by layer by name where every backbone layer's name is in
  the file, else in layer order as Keras itself loads these files (some families renamed
  their layers in Keras 3, ``Conv/BatchNorm`` -> ``conv_bn``); layers of the file that the
  backbone lacks (the top, at the end) are skipped;
- a Keras 3 ``.weights.h5`` (``model.save_weights``): loaded by Keras into the same
  architecture without the top, or, if the file has the top, into the architecture with it
  and copied by layer name.

Either way every backbone layer with weights must have received them from the file;
otherwise the error names the first layer that did not.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import h5py
import numpy as np

import keras


class WeightsError(ValueError):
    """The encoder weights cannot be had; the message (one line) says why and what to do."""


def describe(weights: str | None) -> str:
    """How the weights are recorded in train.json / the manifest: imagenet, none or the file name."""
    if weights in (None, "none"):
        return "none"
    if weights == "imagenet":
        return "imagenet"
    return Path(weights).name


def is_pretrained(weights: str | None) -> bool:
    """Whether ``weights`` gives trained weights (imagenet or a file) rather than random ones."""
    return weights not in (None, "none")


def build_backbone(factory, name: str, weights: str | None, **kwargs) -> keras.Model:
    """``factory(include_top=False, ...)`` with ``weights`` = imagenet, none/None or a file path."""
    if weights in (None, "none"):
        return factory(include_top=False, weights=None, **kwargs)
    if weights == "imagenet":
        return _imagenet(factory, name, **kwargs)
    backbone = factory(include_top=False, weights=None, **kwargs)
    load_file(backbone, factory, name, Path(weights), **kwargs)
    return backbone


def _keras_cache() -> Path:
    """The folder keras.utils.get_file keeps downloads in (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _imagenet(factory, name: str, **kwargs) -> keras.Model:
    """The backbone with Keras' ImageNet weights; a failed download becomes one clear line."""
    try:
        return factory(include_top=False, weights="imagenet", **kwargs)
    except Exception as exc:  # keras.utils.get_file raises a bare Exception for URL errors
        url = re.search(r"https?://\S+?\.h5", str(exc))
        if url is None:
            raise
        fname = url.group(0).rsplit("/", 1)[-1]
        raise WeightsError(
            f"cannot download the imagenet weights of {name} (no network?): copy {fname} from {url.group(0)} "
            f"to {_keras_cache() / fname}, or give --weights PATH to that file") from None


def _is_legacy_h5(path: Path) -> bool:
    """Whether ``path`` is a Keras 2 / legacy HDF5 weights or model file (layer_names attribute)."""
    with h5py.File(path, "r") as fh:
        group = fh["model_weights"] if "model_weights" in fh else fh
        return "layer_names" in group.attrs


def legacy_h5_layers(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weights) in file order from a legacy Keras .h5 (model or weights-only file)."""
    with h5py.File(path, "r") as fh:
        group = fh["model_weights"] if "model_weights" in fh else fh
        layers = []
        for name in group.attrs.get("layer_names", []):
            name = name.decode() if isinstance(name, bytes) else name
            g = group[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
            layers.append((name, [np.asarray(g[n]) for n in names]))
    return layers


def load_file(backbone: keras.Model, factory, name: str, path: Path, **kwargs) -> None:
    """Fill ``backbone`` (no top) from a local weights file; raise WeightsError naming what did not fit."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        legacy = _is_legacy_h5(path)
    except OSError as exc:
        raise WeightsError(f"weights file {path} is not a Keras .h5 file: {exc}") from None
    if legacy:
        stored = [(layer, values) for layer, values in legacy_h5_layers(path) if values]
        by_name = dict(stored)
        if all(layer.name in by_name for layer in backbone.layers if layer.weights):
            _load_by_name(backbone, by_name, name, path)
        else:
            _load_in_order(backbone, stored, name, path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            backbone.load_weights(path)
        except ValueError:
            full = factory(include_top=True, weights=None, **kwargs)
            try:
                full.load_weights(path)
            except ValueError as exc:
                raise WeightsError(f"weights file {path} does not fit {name}: {_first_mismatch(exc)}") from None
            _load_by_name(backbone, {layer.name: layer.get_weights() for layer in full.layers}, name, path)
    _verify_from_file(backbone, path, name)


def _load_by_name(backbone: keras.Model, found: dict[str, list[np.ndarray]], name: str, path: Path) -> None:
    """Set every weighted backbone layer from the same-named entry of ``found``."""
    for layer in backbone.layers:
        if not layer.weights:
            continue
        values = found.get(layer.name)
        if not values:
            raise WeightsError(f"weights file {path} has no weights for layer {layer.name!r} of {name}: "
                               f"is it the file of another model?")
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise WeightsError(f"weights file {path} does not fit {name}: layer {layer.name!r} needs weights "
                               f"of shapes {want}, the file has {got}")
        layer.set_weights(values)


def _load_in_order(backbone: keras.Model, stored: list[tuple[str, list[np.ndarray]]], name: str, path: Path) -> None:
    """Set the weighted backbone layers from the file's weighted layers, in order (Keras' legacy rule)."""
    weighted = [layer for layer in backbone.layers if layer.weights]
    if len(stored) < len(weighted):
        raise WeightsError(f"weights file {path} has {len(stored)} layers with weights, {name} needs "
                           f"{len(weighted)}: is it the file of another model?")
    for layer, (stored_name, values) in zip(weighted, stored):
        variables = layer.trainable_weights + layer.non_trainable_weights  # the order Keras 2 wrote
        want = [tuple(v.shape) for v in variables]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise WeightsError(f"weights file {path} does not fit {name}: layer {layer.name!r} needs weights "
                               f"of shapes {want}, the file's layer {stored_name!r} in its place has {got}")
        for variable, value in zip(variables, values):
            variable.assign(value)


def _first_mismatch(exc: Exception) -> str:
    """The layer and shapes of Keras' load_weights error, on one line."""
    text = str(exc)
    layer = re.search(r"object <\w+ name=([^,>]+)", text)
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    counts = re.search(r"expected (\d+) variables, but received (\d+)", text)
    if layer and shapes:
        return f"layer {layer.group(1)!r} needs weights of shape {shapes.group(1)}, the file has {shapes.group(2)}"
    if layer and counts:
        return (f"layer {layer.group(1)!r} has {counts.group(1)} weights, "
                f"the file's layer in its place {counts.group(2)}")
    return " ".join(text.split())[:300]


def _verify_from_file(backbone: keras.Model, path: Path, name: str) -> None:
    """Every weight array of the backbone must be one of the file's arrays (Keras 3 skips some silently)."""
    stored = set()

    def collect(_, item):
        if isinstance(item, h5py.Dataset) and item.shape:
            stored.add(hashlib.sha1(np.ascontiguousarray(item[()], np.float32).tobytes()).hexdigest())

    with h5py.File(path, "r") as fh:
        fh.visititems(collect)
    for layer in backbone.layers:
        for weight in layer.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight), np.float32)
            if hashlib.sha1(value.tobytes()).hexdigest() not in stored:
                raise WeightsError(f"weights file {path} left layer {layer.name!r} of {name} without its weights "
                                   f"({weight.path}): is it the file of another model?")
