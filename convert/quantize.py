"""TFLite conversion of the encoder: full-integer int8 (uint8 input) and plain float.

The int8 encoder takes uint8 RGB exactly as the camera gives it (the model's own input
scaling is inside it) and returns int8 features that the runtime dequantizes.
"""

from __future__ import annotations

import tempfile
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

import keras


def _converter(encoder: keras.Model) -> "tf.lite.TFLiteConverter":
    """A converter for the encoder, exported as a SavedModel with a batch of one."""
    folder = tempfile.mkdtemp(prefix="explaincam-encoder-")
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serve", lambda image: encoder(image, training=False),
                         input_signature=[tf.TensorSpec((1, *encoder.input_shape[1:]), tf.float32, name="image")])
    archive.write_out(folder, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])


def to_int8_tflite(encoder: keras.Model, representative: Callable[[], Iterable[np.ndarray]]) -> bytes:
    """Full-integer int8 TFLite flatbuffer (TFLITE_BUILTINS_INT8 only, uint8 in, int8 out).

    ``representative`` yields uint8 or float images (H, W, 3) in 0..255 used to calibrate
    activation ranges; a few hundred varied images are plenty.
    """
    converter = _converter(encoder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def dataset():
        for image in representative():
            yield [np.asarray(image, np.float32)[None]]

    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    return converter.convert()


def to_float_tflite(encoder: keras.Model) -> bytes:
    """Float32 TFLite flatbuffer of the same encoder (the bench's float baseline)."""
    converter = _converter(encoder)
    return converter.convert()
