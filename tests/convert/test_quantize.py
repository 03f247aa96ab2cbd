"""The int8 encoder: TensorFlow's own quantization, run in fresh processes, and its failures."""

from __future__ import annotations

import os
import signal
import tempfile

import numpy as np
import pytest
import tensorflow as tf

import keras

from convert.model import load_captioner
from convert.pack import calibration_images
from convert.quantize import QuantizeError, to_int8_tflite
from daemon.encoder import interpreter_class
from tests.conftest import SHIPPED_BUNDLE, child_running, wait_until

SIZE = 224  # the shipped encoder's input


@pytest.fixture(scope="module")
def encoder():
    """The shipped bundle's trained float encoder."""
    return load_captioner(SHIPPED_BUNDLE / "captioner.keras").get_layer("encoder")


@pytest.fixture(scope="module")
def tiny_encoder():
    """A one-convolution encoder at 32 px: the failures below need a quantization, not a good one."""
    image = keras.Input((32, 32, 3))
    return keras.Model(image, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(image)))


def _noise(count: int) -> list[np.ndarray]:
    """Random uint8 RGB frames of the tiny encoder's size."""
    return [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(count)]


def _images(count: int, first: int = 0) -> list[np.ndarray]:
    """``count`` generated scenes (the shipped model's world) from the ``first``, as uint8 RGB frames."""
    return calibration_images(SIZE, first + count, None)[first:]


def _tensorflows_own_int8(encoder: keras.Model, calibration: list[np.ndarray]) -> bytes:
    """What TensorFlow's converter makes in one process from the same SavedModel export and settings."""
    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(encoder)
        archive.add_endpoint("serve", lambda image: encoder(image, training=False),
                             input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")])
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image.astype(np.float32)[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        return converter.convert()


def _run(model: bytes, images: list[np.ndarray]) -> tuple[np.ndarray, list]:
    """(int8 outputs of the images, every tensor's quantization scales) of a flatbuffer on LiteRT."""
    interpreter = interpreter_class()(model_content=model)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"]).copy())
    scales = [(d["name"], d["dtype"], d["quantization_parameters"]["scales"].tolist())
              for d in interpreter.get_tensor_details()]
    return np.stack(outputs), sorted(scales, key=lambda entry: entry[0])


def left_behind(folder) -> list:
    """What the conversion left in ``folder`` (its TMPDIR). TensorFlow's autograph writes the sources of the
    functions it converts in this (the test's) process there too, once per process, whichever test traces first."""
    return [p for p in folder.iterdir() if not p.name.startswith("__autograph_generated_file")]


def test_the_int8_encoder_is_what_tensorflows_converter_makes_in_one_process(encoder):
    calibration = _images(6)
    ours = to_int8_tflite(encoder, lambda: iter(calibration))
    reference = _tensorflows_own_int8(encoder, calibration)
    frames = _images(5, first=20)
    ours_out, ours_scales = _run(ours, frames)
    reference_out, reference_scales = _run(reference, frames)
    assert ours_out.dtype == np.int8 and np.array_equal(ours_out, reference_out)
    assert ours_scales == reference_scales  # every tensor, its type and its calibrated ranges
    assert len(np.unique(ours_out)) > 50  # calibrated features, not a constant


def test_a_calibration_killed_for_memory_fails_in_one_line_and_leaves_no_temporary_files(
        tiny_encoder, tmp_path, monkeypatch):
    """The kernel's OOM killer sends SIGKILL; here the test sends it once the first image is taken."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def representative():
        for i, image in enumerate(_noise(4)):
            if i == 1:
                os.kill(wait_until(lambda: child_running("convert.quantize\0calibrate"), timeout=60,
                                   message="the calibrating process"), signal.SIGKILL)
            yield image

    with pytest.raises(QuantizeError) as failed:
        to_int8_tflite(tiny_encoder, representative)
    message = str(failed.value)
    assert "int8 calibration was killed (SIGKILL)" in message and "lack of memory" in message
    assert len(message.splitlines()) == 1
    assert left_behind(tmp_path) == []


def test_a_calibration_image_of_the_wrong_size_is_named_and_stops_the_calibration(tiny_encoder, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    images = _noise(2) + [np.zeros((32, 33, 3), np.uint8)]
    with pytest.raises(QuantizeError, match=r"a calibration image is \(32, 33, 3\), the encoder takes \(32, 32, 3\)"):
        to_int8_tflite(tiny_encoder, lambda: iter(images))
    assert not child_running("convert.quantize\0calibrate")
    assert left_behind(tmp_path) == []
