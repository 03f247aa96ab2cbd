"""The TensorFlow backend: the bundle's ``captioner.keras`` under a GradientTape (the fallback).

``SplitCaptioner`` runs the sequence-form captioner so that the activations of one layer
inside the nested ``encoder/backbone`` sub-model (or of the encoder's head) come out of the
same forward pass as the logits, which makes them differentiable targets.
``TensorFlowBackend`` answers the ``Backend`` protocol (``daemon.explain.backends``) with
graph-compiled functions over two such cuts: the Grad-CAM layer and ACE's bottleneck. It is
also what the offline tools use (``explaincam concepts``, the randomization test).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import keras

from daemon.explain.backends import token_rows
from daemon.explain.layers import MomentMap  # noqa: F401  registers the layer for load_model
from daemon.explain_settings import ExplainOptions


class SplitCaptioner:
    """The captioner as image -> (activations of one encoder layer, logits) in one pass.

    The layer is either inside the nested ``backbone`` or one of the encoder's own layers
    after it (the head, e.g. ``moment_map``).
    """

    def __init__(self, captioner: keras.Model, layer_name: str):
        encoder = captioner.get_layer("encoder")
        backbone = encoder.get_layer("backbone")
        chain = [layer for layer in encoder.layers if not isinstance(layer, keras.layers.InputLayer)]
        at = chain.index(backbone)
        self.before, self.after = chain[:at], chain[at + 1:]
        self.layer_name = layer_name
        head_input = self.after[0].input  # the backbone's output in the encoder's graph
        self.in_head = layer_name in [layer.name for layer in self.after]
        if self.in_head:
            self.split = backbone
            self.head = keras.Model(head_input, [encoder.get_layer(layer_name).output, encoder.output])
        else:
            try:
                layer = backbone.get_layer(layer_name)
            except ValueError:
                raise ValueError(f"layer {layer_name!r} is not a layer of the encoder") from None
            self.split = keras.Model(backbone.input, [layer.output, backbone.output])
            self.head = keras.Model(head_input, encoder.output)
        features = captioner.get_layer("feat_dropout").input  # the encoder's output in the captioner graph
        self.decoder = keras.Model([features, captioner.inputs[1]], captioner.output)
        self.captioner = captioner

    def encode(self, images):
        """(activations, encoder features) of a batch of 0..255 RGB float images."""
        x = images
        for layer in self.before:
            x = layer(x, training=False)
        if self.in_head:
            return self.head(self.split(x, training=False), training=False)
        acts, x = self.split(x, training=False)
        return acts, self.head(x, training=False)

    def forward(self, images, tokens):
        """(activations, logits (B, T, V)) for images and teacher-forced token rows."""
        acts, features = self.encode(images)
        return acts, self.decoder([features, tokens], training=False)


def default_bottleneck_layer(captioner: keras.Model) -> str:
    """ACE's default bottleneck: the encoder's reduced map if its head has one, else the backbone's last layer."""
    encoder = captioner.get_layer("encoder")
    if any(layer.name == "spatial_reduce" for layer in encoder.layers):
        return "spatial_reduce"
    return encoder.get_layer("backbone").layers[-1].name


def weighted_score(logits, tokens, weights):
    """score_i = sum_t weights[i, t] * log_softmax(logits[i, t])[tokens[i, t + 1]] (the Backend convention)."""
    logp = tf.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = tf.gather(logp, tokens[:, 1:], axis=2, batch_dims=2)
    return tf.reduce_sum(picked * weights, axis=1)


def _compiled(model: SplitCaptioner):
    """Graph-compiled logits and gradient functions of one cut of the captioner."""

    def logits(images, tokens):
        return model.forward(images, tokens)[1]

    def layer_gradients(images, tokens, weights):
        with tf.GradientTape() as tape:
            acts, out = model.forward(images, tokens)
            scores = weighted_score(out, tokens, weights)
            total = tf.reduce_sum(scores)  # rows are independent: one backward pass gives each its gradient
        return acts, tape.gradient(total, acts), scores

    def image_gradients(images, tokens, weights):
        with tf.GradientTape() as tape:
            tape.watch(images)
            scores = weighted_score(model.forward(images, tokens)[1], tokens, weights)
            total = tf.reduce_sum(scores)
        return tape.gradient(total, images), scores

    def encode(images):
        return model.encode(images)

    return {name: tf.function(fn, reduce_retracing=True)
            for name, fn in (("logits", logits), ("layer_gradients", layer_gradients),
                             ("image_gradients", image_gradients), ("encode", encode))}


class TensorFlowBackend:
    """The ``Backend`` protocol on TensorFlow: a bundle's Keras captioner, cut at the Grad-CAM and bottleneck layers."""

    name = "tensorflow"

    def __init__(self, bundle, threads: int | None = None, gradcam_layer: str | None = None,
                 bottleneck_layer: str | None = None, batch_size: int = ExplainOptions.batch_size,
                 captioner: keras.Model | None = None):
        """``captioner`` replaces the bundle's (the randomization test's re-initialised copy);
        the bottleneck defaults to the layer of the bundle's concept bank, else ``default_bottleneck_layer``."""
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TensorFlow already started its thread pools in this process
                pass
        if captioner is None:
            captioner = keras.models.load_model(bundle.file("captioner"), compile=False)
        self.captioner = captioner
        self.batch_size = batch_size
        size = bundle.input_size
        self.input_size = (size, size)
        self.gradcam_layer = gradcam_layer or bundle.manifest["gradcam_layer"]
        if bottleneck_layer is None and bundle.has("concepts"):
            with np.load(bundle.file("concepts"), allow_pickle=False) as bank:
                bottleneck_layer = str(bank["layer"])
        self.bottleneck_layer = bottleneck_layer or default_bottleneck_layer(captioner)
        encoder = captioner.get_layer("encoder")
        known = {layer.name for layer in encoder.layers} | {layer.name for layer in encoder.get_layer("backbone").layers}
        for layer in (self.gradcam_layer, self.bottleneck_layer):
            if layer not in known:
                raise ValueError(f"layer {layer!r} is not a layer of the encoder")
        self.split = SplitCaptioner(captioner, self.gradcam_layer)
        self._gradcam = _compiled(self.split)
        self._bottleneck = None  # built on first use: most answers need no ACE

    def _bottleneck_functions(self) -> dict:
        """The compiled functions of the bottleneck cut (the Grad-CAM cut when the layers are the same)."""
        if self._bottleneck is None:
            same = self.bottleneck_layer == self.gradcam_layer
            self._bottleneck = self._gradcam if same else _compiled(SplitCaptioner(self.captioner,
                                                                                   self.bottleneck_layer))
        return self._bottleneck

    def _batched(self, fn, images, *rest) -> list[np.ndarray]:
        """Run ``fn`` over ``batch_size`` chunks of the rows; its outputs concatenated, as numpy."""
        images = np.asarray(images, np.float32)
        outs = []
        for s in range(0, len(images), self.batch_size):
            out = fn(tf.convert_to_tensor(images[s:s + self.batch_size]), *(r[s:s + self.batch_size] for r in rest))
            outs.append([o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))])
        return [np.concatenate(parts) for parts in zip(*outs)]

    def logits(self, images, tokens):
        """(N, L, V) logits."""
        return self._batched(self._gradcam["logits"], images, token_rows(tokens, len(images)))[0]

    def layer_gradients(self, images, tokens, weights):
        """(acts, grads, scores) at the Grad-CAM layer."""
        return tuple(self._batched(self._gradcam["layer_gradients"], images, token_rows(tokens, len(images)),
                                   np.asarray(weights, np.float32)))

    def image_gradients(self, images, tokens, weights):
        """(grads w.r.t. the images, scores)."""
        return tuple(self._batched(self._gradcam["image_gradients"], images, token_rows(tokens, len(images)),
                                   np.asarray(weights, np.float32)))

    def bottleneck_activations(self, images):
        """(N, h', w', C') at the bottleneck layer."""
        return self._batched(self._bottleneck_functions()["encode"], images)[0]

    def bottleneck_gradients(self, images, tokens, weights):
        """(acts, grads, scores) at the bottleneck layer."""
        return tuple(self._batched(self._bottleneck_functions()["layer_gradients"], images,
                                   token_rows(tokens, len(images)), np.asarray(weights, np.float32)))

    def features(self, images):
        """Full-precision encoder features (N, F) (what the int8 encoder approximates)."""
        return self._batched(self._gradcam["encode"], images)[1]
