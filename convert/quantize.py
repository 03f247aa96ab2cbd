"""TFLite conversion of the encoder: full-integer int8 (uint8 input) and plain float.

The int8 encoder takes uint8 RGB exactly as the camera gives it (the model's own input
scaling is inside it) and returns int8 features that the runtime dequantizes.

The encoder is exported to a temporary SavedModel folder (``explaincam-encoder-*`` in
``$TMPDIR``, about the size of the float model: ~0.9 GB for EfficientNetV2L) that is
removed when the conversion ends, also when it fails or is interrupted.
"""

from __future__ import annotations

import tempfile
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

import keras


def _convert(encoder: keras.Model, configure: Callable[["tf.lite.TFLiteConverter"], None]) -> bytes:
    """Export the encoder (batch of one) to a temporary SavedModel, configure a converter, convert."""
    with tempfile.TemporaryDirectory(prefix="explaincam-encoder-") as folder:
        archive = keras.export.ExportArchive()
        archive.track(encoder)
        archive.add_endpoint("serve", lambda image: encoder(image, training=False),
                             input_signature=[tf.TensorSpec((1, *encoder.input_shape[1:]), tf.float32, name="image")])
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        configure(converter)
        return converter.convert()


def to_int8_tflite(encoder: keras.Model, representative: Callable[[], Iterable[np.ndarray]]) -> bytes:
    """Full-integer int8 TFLite flatbuffer (TFLITE_BUILTINS_INT8 only, uint8 in, int8 out).

    ``representative`` yields uint8 or float images (H, W, 3) in 0..255 used to calibrate
    activation ranges; a hundred varied images are plenty. They are fed one at a time: an
    export with a batch dimension of 8 calibrated at half the speed in TFLite's calibrator
    (README, "Converting a seed-format model"), and the int8 model would then take batches of 8.
    """
    def configure(converter):
        def dataset():
            for image in representative():
                yield [np.asarray(image, np.float32)[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8

    return _convert(encoder, configure)


def to_float_tflite(encoder: keras.Model) -> bytes:
    """Float32 TFLite flatbuffer of the same encoder (the bench's float baseline)."""
    return _convert(encoder, lambda converter: None)
