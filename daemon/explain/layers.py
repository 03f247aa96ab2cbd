"""Keras layers of the captioner that Keras itself lacks (TensorFlow side only).

Registered for ``keras.models.load_model``: the explainer imports this module before it
loads a bundle's ``captioner.keras``, the converter builds models from it.
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="explaincam")
class MomentMap(keras.layers.Layer):
    """A map A (h, w, C) -> [A, A * x, A * y] (h, w, 3C), with x and y running -1..1.

    Global average pooling of this map gives, per channel, the mean activation and its
    first moments along x and y, so the pooled features still say where things are
    ("left of", "above"). Because the position weighting is done here, *before* the
    pooling, the pooling reads every position alike: each output channel is "this kind of
    thing, weighted by where it is", the layer Grad-CAM's channel-averaged gradients are
    exact for (the gradient of a pooled feature is the same at every position). Channel
    order is block-wise: the C plain channels, then the C x-weighted, then the C y-weighted.
    """

    def build(self, input_shape):
        """Fix the coordinate maps for the input's spatial size."""
        h, w = int(input_shape[1]), int(input_shape[2])
        ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        self._xs = ops.convert_to_tensor(xs[:, :, None].astype(np.float32))
        self._ys = ops.convert_to_tensor(ys[:, :, None].astype(np.float32))

    def call(self, inputs):
        """The position-weighted channels, concatenated after the plain ones."""
        return ops.concatenate([inputs, inputs * self._xs, inputs * self._ys], axis=-1)

    def compute_output_shape(self, input_shape):
        """Same map, three times the channels."""
        return (*input_shape[:-1], 3 * input_shape[-1])

