"""Gradient plumbing shared by every method (TensorFlow; loaded by the explainer process only).

``SplitCaptioner`` runs the sequence-form captioner so that the activations of one layer
inside the nested ``encoder/backbone`` sub-model come out of the same forward pass as the
logits, which makes them differentiable targets for a GradientTape. Two method families
sit on it; each method module only says how it weights:

- ``CAMMethod``: gradients of the target w.r.t. the chosen layer's activations;
  the map is ReLU(sum_k w_k A_k) with the method's channel weights w.
- ``InputGradientMethod``: gradients w.r.t. the image at inputs the method chooses
  (the image, noisy copies, points on a path), combined into one map per word.

Every method answers a list of raw 2-D maps, one per target, in the order given.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import keras

from daemon.explain.registry import ExplainOptions


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
                raise ValueError(f"Grad-CAM layer {layer_name!r} is not a layer of the encoder") from None
            self.split = keras.Model(backbone.input, [layer.output, backbone.output])
            self.head = keras.Model(head_input, encoder.output)
        features = captioner.get_layer("feat_dropout").input  # the encoder's output in the captioner graph
        self.decoder = keras.Model([features, captioner.inputs[1]], captioner.output)
        self.captioner = captioner
        # Graph-compiled logits (about 2.5x faster than eager on a CPU); a GradientTape
        # outside it still differentiates w.r.t. the images, not w.r.t. the activations.
        self.compiled_logits = tf.function(lambda images, tokens: self.forward(images, tokens)[1],
                                           reduce_retracing=True)

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

    def features(self, images: np.ndarray) -> np.ndarray:
        """Full-precision encoder features of a batch of images (what the int8 encoder approximates)."""
        return self.encode(tf.convert_to_tensor(images, tf.float32))[1].numpy()

    def logits(self, images: np.ndarray, tokens: list[int], batch_size: int = 32) -> np.ndarray:
        """Logits (N, T, V) of N images under the same teacher-forced tokens, batched."""
        out = []
        for s in range(0, len(images), batch_size):
            x = tf.convert_to_tensor(images[s:s + batch_size], tf.float32)
            tok = tf.convert_to_tensor(np.tile(np.asarray(tokens, np.int32), (len(x), 1)))
            out.append(self.compiled_logits(x, tok).numpy())
        return np.concatenate(out)


def _gradients(model: SplitCaptioner, images: np.ndarray, tokens: list[int], targets: list,
               batch_size: int, wrt_layer: bool):
    """Per-row gradients of target_i(logits_i) w.r.t. image_i or its layer activations.

    Rows are independent (inference mode), so the gradient of the summed targets gives
    every row its own gradient in one backward pass per batch.
    """
    acts_out, grads_out = [], []
    for s in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[s:s + batch_size], tf.float32)
        tok = tf.convert_to_tensor(np.tile(np.asarray(tokens, np.int32), (len(x), 1)))
        with tf.GradientTape() as tape:
            tape.watch(x)
            if wrt_layer:
                acts, logits = model.forward(x, tok)
            else:
                logits = model.compiled_logits(x, tok)
            total = tf.add_n([target(logits[i]) for i, target in enumerate(targets[s:s + batch_size])])
        grads_out.append(tape.gradient(total, acts if wrt_layer else x).numpy())
        if wrt_layer:
            acts_out.append(acts.numpy())
    grads = np.concatenate(grads_out)
    return (np.concatenate(acts_out), grads) if wrt_layer else grads


def image_gradients(model: SplitCaptioner, images: np.ndarray, tokens: list[int], targets: list,
                    batch_size: int = 16) -> np.ndarray:
    """d target_i / d image_i for each row (N, H, W, 3)."""
    return _gradients(model, images, tokens, targets, batch_size, wrt_layer=False)


def layer_gradients(model: SplitCaptioner, images: np.ndarray, tokens: list[int], targets: list,
                    batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(activations, d target_i / d activations_i) of the split layer for each row, (N, h, w, C) each."""
    return _gradients(model, images, tokens, targets, batch_size, wrt_layer=True)


class Method:
    """An explanation method: ``explain`` answers one raw 2-D map per target."""

    name = ""

    def explain(self, model: SplitCaptioner, image: np.ndarray, tokens: list[int], targets: list,
                options: ExplainOptions) -> list[np.ndarray]:
        """Raw maps (any resolution, larger = more important) for each target."""
        raise NotImplementedError


class CAMMethod(Method):
    """Class-activation maps: ReLU of the activations weighted per channel from their gradients."""

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """Channel weights (C,) from one row's activations and gradients (h, w, C)."""
        raise NotImplementedError

    def explain(self, model, image, tokens, targets, options):
        """One (h, w) map at the layer's resolution per target."""
        if not targets:
            return []
        images = np.repeat(np.asarray(image, np.float32)[None], len(targets), 0)
        acts, grads = layer_gradients(model, images, tokens, targets, options.batch_size)
        return [np.maximum(np.tensordot(a, self.weights(a, g), axes=([2], [0])), 0.0)
                for a, g in zip(acts, grads)]


class InputGradientMethod(Method):
    """Image-space gradients at method-chosen inputs, combined into one map per target."""

    def inputs(self, image: np.ndarray, options: ExplainOptions, rng: np.random.Generator) -> np.ndarray:
        """The (S, H, W, 3) images at which the gradient is taken for one target."""
        raise NotImplementedError

    def combine(self, image: np.ndarray, inputs: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """One (H, W) map from the gradients (S, H, W, 3) at the inputs."""
        raise NotImplementedError

    def explain(self, model, image, tokens, targets, options):
        """One (H, W) map per target; targets with few inputs share batches, memory stays bounded."""
        image = np.asarray(image, np.float32)
        rng = np.random.default_rng(options.seed)
        maps: list[np.ndarray] = []
        group: list[tuple[object, np.ndarray]] = []

        def flush():
            rows = np.concatenate([x for _, x in group])
            row_targets = [t for t, x in group for _ in range(len(x))]
            grads = image_gradients(model, rows, tokens, row_targets, options.batch_size)
            at = 0
            for _, x in group:
                maps.append(self.combine(image, x, grads[at:at + len(x)]))
                at += len(x)
            group.clear()

        for target in targets:
            group.append((target, self.inputs(image, options, rng)))
            if sum(len(x) for _, x in group) >= options.batch_size:
                flush()
        if group:
            flush()
        return maps


def channel_max_abs(grads: np.ndarray) -> np.ndarray:
    """max over colour channels of |gradient|: the saliency map of Simonyan et al."""
    return np.abs(grads).max(axis=-1)
