"""TFLite conversion of the encoder: full-integer int8 (uint8 input) and plain float.

The int8 encoder takes uint8 RGB exactly as the camera gives it (the model's own input
scaling is inside it) and returns int8 features that the runtime dequantizes.

The encoder is exported to a temporary SavedModel folder (``explaincam-encoder-*`` in
``$TMPDIR``, about the size of the float model: ~0.9 GB for EfficientNetV2L) that is
removed when the conversion ends, also when it fails or is interrupted.

``explaincam convert`` quantizes in a process of its own (``to_int8_tflite_apart``): the
converter takes gigabytes for a large model (6 GB for EfficientNetV2L at 480 px) that
TensorFlow would otherwise keep in the converting process for the rest of the conversion,
the explainer export included. Its calibration images go there one file each and are read
back one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

import keras


def _export(encoder: keras.Model, folder: str) -> None:
    """Export the encoder (batch of one) as a SavedModel with one signature, ``serve``."""
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serve", lambda image: encoder(image, training=False),
                         input_signature=[tf.TensorSpec((1, *encoder.input_shape[1:]), tf.float32, name="image")])
    archive.write_out(folder, verbose=False)


def _convert(encoder: keras.Model, configure: Callable[["tf.lite.TFLiteConverter"], None]) -> bytes:
    """Export the encoder to a temporary SavedModel, configure a converter, convert."""
    with tempfile.TemporaryDirectory(prefix="explaincam-encoder-") as folder:
        _export(encoder, folder)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        configure(converter)
        return converter.convert()


def _configure_int8(converter, representative: Callable[[], Iterable[np.ndarray]]) -> None:
    """Full-integer int8 settings (uint8 in, int8 out), calibrated on ``representative()``'s images."""
    def dataset():
        for image in representative():
            yield [np.asarray(image, np.float32)[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8


def to_int8_tflite(encoder: keras.Model, representative: Callable[[], Iterable[np.ndarray]]) -> bytes:
    """Full-integer int8 TFLite flatbuffer (TFLITE_BUILTINS_INT8 only, uint8 in, int8 out).

    ``representative`` yields uint8 or float images (H, W, 3) in 0..255 used to calibrate
    activation ranges; a hundred varied images are plenty. They are fed one at a time: an
    export with a batch dimension of 8 calibrated at half the speed in TFLite's calibrator
    (EfficientNetV2B0, 224 px, 32 images: 36 s against 18 s), and the int8 model would
    then take batches of 8.
    """
    return _convert(encoder, lambda converter: _configure_int8(converter, representative))


def to_int8_tflite_apart(encoder: keras.Model, images: Sequence[np.ndarray],
                         verbose: bool = True) -> tuple[bytes, float]:
    """``to_int8_tflite`` with the converter in a process of its own; (flatbuffer, calibration seconds).

    ``verbose``: that process draws a calibration progress line. Raises RuntimeError if it
    fails (the converter's own messages go to stderr).
    """
    with tempfile.TemporaryDirectory(prefix="explaincam-encoder-") as folder:
        _export(encoder, folder)
        calibration = Path(folder) / "calibration"
        calibration.mkdir()
        for i, image in enumerate(images):
            np.save(calibration / f"{i:06d}.npy", np.asarray(image))
        root = str(Path(__file__).resolve().parents[1])  # the checkout this module runs from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-m", "convert.quantize", folder, "1" if verbose else "0"], env=env)
        if done.returncode != 0:
            raise RuntimeError(f"int8 quantization failed (exit status {done.returncode}); "
                               "the converter's messages are above")
        timing = json.loads((Path(folder) / "timing.json").read_text())
        return (Path(folder) / "encoder_int8.tflite").read_bytes(), timing["calibration_seconds"]


def _quantize_folder(folder: Path, show_progress: bool) -> None:
    """The child of ``to_int8_tflite_apart``: the SavedModel in ``folder`` to ``encoder_int8.tflite`` there."""
    from convert.progress import Progress

    paths = sorted((folder / "calibration").glob("*.npy"))
    progress = Progress("calibrating", show_progress)
    seconds = []

    def representative():  # one image in memory at a time; the converter asks once the model is exported
        started = time.monotonic()
        for i, path in enumerate(paths):
            yield np.load(path)
            progress(i + 1, len(paths))
        seconds.append(time.monotonic() - started)

    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=["serve"])
    _configure_int8(converter, representative)
    (folder / "encoder_int8.tflite").write_bytes(converter.convert())
    (folder / "timing.json").write_text(json.dumps({"calibration_seconds": seconds[-1] if seconds else 0.0}))


def to_float_tflite(encoder: keras.Model) -> bytes:
    """Float32 TFLite flatbuffer of the same encoder (the bench's float baseline)."""
    return _convert(encoder, lambda converter: None)


if __name__ == "__main__":  # the child of to_int8_tflite_apart
    _quantize_folder(Path(sys.argv[1]), sys.argv[2] == "1")
