"""TFLite conversion of the encoder: full-integer int8 (uint8 input) and plain float.

The int8 encoder takes uint8 RGB exactly as the camera gives it (the model's own input
scaling is inside it) and returns int8 features that the runtime dequantizes.

The encoder is exported to a temporary SavedModel folder (``explaincam-encoder-*`` in
``$TMPDIR``, about the size of the float model: ~0.9 GB for EfficientNetV2L, with the float
flatbuffer beside it) that is removed when the conversion ends, also when it fails or is
interrupted.

int8 quantization is TensorFlow's own, run in two fresh processes (``convert.fresh_process``).
The first converts the SavedModel to the float flatbuffer that TensorFlow's converter
calibrates (the converter itself, stopped where it would start calibrating: same passes, same
settings; it replaces the converter's private ``_quantize`` step, read by its argument names,
and says so in one line if a TensorFlow release no longer has it). The second calibrates that
flatbuffer on the images streamed to it and quantizes it with TensorFlow's MLIR quantizer, the
calls the converter would make next. In the converting process the two held EfficientNetV2L's
float model about ten times over on top of everything the conversion had loaded: 7.7-8.0 GB
peak for the seed model's conversion; README, "The seed's model", has the figures now.
"""

from __future__ import annotations

import inspect
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

import keras

from convert.fresh_process import StepError, run_step, step_main
from convert.memory import release_freed_memory
from daemon.files import write_atomically


class QuantizeError(RuntimeError):
    """The int8 quantization failed; the message says why in one line."""


class _ReadyToCalibrate(Exception):
    """Raised by the converter where it would calibrate: the float flatbuffer and its quantizer settings."""

    def __init__(self, model: bytes, settings: dict):
        super().__init__("ready to calibrate")
        self.model, self.settings = model, settings


def _export(encoder: keras.Model, folder: str) -> None:
    """Export the encoder (batch of one) as a SavedModel into ``folder``."""
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serve", lambda image: encoder(image, training=False),
                         input_signature=[tf.TensorSpec((1, *encoder.input_shape[1:]), tf.float32, name="image")])
    archive.write_out(folder, verbose=False)


def _float_model_to_calibrate(saved_model: str) -> tuple[bytes, dict]:
    """The float flatbuffer TensorFlow's int8 converter calibrates, and the settings of its quantizer."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serve"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(())  # never read: the conversion stops before
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8

    own_step = inspect.signature(type(converter)._quantize)
    model_argument = list(own_step.parameters)[1]  # after self: the float flatbuffer it would calibrate

    def stop_before_calibrating(*args, **kwargs):
        # named as this TensorFlow's converter names them (its private step's arguments vary by version)
        step = own_step.bind(converter, *args, **kwargs).arguments
        if not converter.experimental_new_quantizer or step["activations_type"] != tf.int8:
            raise QuantizeError("this TensorFlow's converter would not use its MLIR quantizer for int8")
        debug_options = step.get("debug_options")
        raise _ReadyToCalibrate(step[model_argument], {
            "input_type": step["input_type"].name, "output_type": step["output_type"].name,
            "enable_variable_quantization": bool(step.get("enable_variable_quantization", False)),
            "disable_per_channel": bool(converter._experimental_disable_per_channel),
            "disable_per_channel_for_dense_layers":
                bool(getattr(converter, "_experimental_disable_per_channel_quantization_for_dense_layers", False)),
            "debug_options": debug_options.SerializeToString().hex() if debug_options is not None else None})

    converter._quantize = stop_before_calibrating  # TensorFlow's own step, run in a fresh process instead
    try:
        converter.convert()
    except _ReadyToCalibrate as ready:
        return ready.model, ready.settings
    raise QuantizeError("TensorFlow's converter finished without calibrating: no int8 model")


def to_int8_tflite(encoder: keras.Model, representative: Callable[[], Iterable[np.ndarray]]) -> bytes:
    """Full-integer int8 TFLite flatbuffer (TFLITE_BUILTINS_INT8 only, uint8 in, int8 out).

    ``representative`` yields uint8 or float images (H, W, 3) in 0..255 used to calibrate
    activation ranges; a hundred varied images are plenty. They are fed one at a time: an
    export with a batch dimension of 8 calibrated at half the speed in TFLite's calibrator
    (README, "Converting a seed-format model"), and the int8 model would then take batches of 8.
    Each image is handed to the calibrating process as it is needed, so ``representative``
    runs at the calibration's pace.
    """
    shape = tuple(int(d) for d in encoder.input_shape[1:])
    with tempfile.TemporaryDirectory(prefix="explaincam-encoder-") as folder:
        saved_model, float_path, int8_path = (str(Path(folder) / "saved_model"), Path(folder) / "float.tflite",
                                              Path(folder) / "int8.tflite")
        _export(encoder, saved_model)
        release_freed_memory()
        try:
            settings = json.loads(run_step("convert.quantize", ["float", saved_model, str(float_path)],
                                           "the encoder's float conversion").output)
            run_step("convert.quantize",
                     ["calibrate", str(float_path), str(int8_path), json.dumps(dict(settings, shape=shape))],
                     "the encoder's int8 calibration", _streamed(representative, shape))
        except StepError as exc:
            raise QuantizeError(str(exc)) from None
        return int8_path.read_bytes()


def _streamed(representative: Callable[[], Iterable[np.ndarray]], shape: tuple[int, ...]) -> Iterable[bytes]:
    """The calibration images as float32 bytes, checked against the encoder's input shape."""
    for image in representative():
        image = np.asarray(image, np.float32)
        if image.shape != shape:
            raise QuantizeError(f"a calibration image is {image.shape}, the encoder takes {shape}")
        yield image.tobytes()


def _calibrate_and_quantize(float_path: Path, int8_path: Path, settings: dict, images: Iterable[np.ndarray]) -> None:
    """TensorFlow's calibration and MLIR int8 quantization of a float flatbuffer, as its converter runs them."""
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers, mlir_quantize
    from tensorflow.lite.python.optimize import calibrator

    model = calibrator.add_intermediate_tensors(float_path.read_bytes())
    calibrated = calibrator.Calibrator(model).calibrate(lambda: ([image[None]] for image in images))
    del model
    options = {"input_data_type": tf.dtypes.as_dtype(settings["input_type"]),
               "output_data_type": tf.dtypes.as_dtype(settings["output_type"]),
               "enable_variable_quantization": settings["enable_variable_quantization"],
               "disable_per_channel_for_dense_layers": settings["disable_per_channel_for_dense_layers"]}
    if settings["debug_options"] is not None:
        options["debug_options_str"] = bytes.fromhex(settings["debug_options"])
    known = inspect.signature(mlir_quantize).parameters  # what this TensorFlow's quantizer takes
    quantized = mlir_quantize(calibrated, settings["disable_per_channel"],
                              **{name: value for name, value in options.items() if name in known})
    del calibrated
    write_atomically(int8_path, deduplicate_readonly_buffers(quantized))


def _images_from(stream, shape: tuple[int, ...]):
    """Float32 images of ``shape`` read one after another from a binary stream, until it ends."""
    size = int(np.prod(shape)) * 4
    while chunk := stream.read(size):
        if len(chunk) != size:
            raise QuantizeError(f"a calibration image was cut short ({len(chunk)} of {size} bytes)")
        yield np.frombuffer(chunk, np.float32).reshape(shape)


def to_float_tflite(encoder: keras.Model) -> bytes:
    """Float32 TFLite flatbuffer of the same encoder (the bench's float baseline)."""
    with tempfile.TemporaryDirectory(prefix="explaincam-encoder-") as folder:
        _export(encoder, folder)
        return tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"]).convert()


def _step(argv: list[str]) -> str | None:
    """One step of to_int8_tflite in this process: ``float SAVED_MODEL FLOAT`` (prints the quantizer's settings)
    or ``calibrate FLOAT INT8 SETTINGS`` (the settings and the image shape, JSON; float32 images on stdin)."""
    if argv[0] == "float":
        model, settings = _float_model_to_calibrate(argv[1])
        write_atomically(Path(argv[2]), model)
        return json.dumps(settings)
    if argv[0] == "calibrate":
        settings = json.loads(argv[3])
        _calibrate_and_quantize(Path(argv[1]), Path(argv[2]), settings,
                                _images_from(sys.stdin.buffer, tuple(settings["shape"])))
        return None
    raise QuantizeError(f"no quantization step {argv[0]!r}")


if __name__ == "__main__":
    step_main(_step)
