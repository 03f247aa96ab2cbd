"""The bench's TensorFlow child (a fresh process per thread count: TensorFlow fixes its thread pools
when it starts): Keras encoder timings, the float TFLite conversion, MACs, the seed-style
pipeline and the practical int8 peak model. Run by convert/bench/child.py as ``python -m convert.bench.keras_task``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from convert.bench.child import serve_task
from convert.bench.measure import PEAK_CONV, attempt, bench_frames, timed_loop
from convert.bench.seed import seed_pipeline
from convert.model import load_captioner
from convert.quantize import to_float_tflite, to_int8_tflite
from daemon.bundle import load_bundle

def keras_macs(model) -> dict:
    """Multiply-accumulates of a Keras model's Conv2D, DepthwiseConv2D and Dense layers, from their shapes.

    Nested models (the encoder's ``backbone``) are counted layer by layer. Activations,
    batch norm, pooling and additions are not multiply-accumulates and are left out.
    """
    def leaves(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from leaves(layer)
            else:
                yield layer

    counts = {"conv": 0, "depthwise": 0, "dense": 0}
    for layer in leaves(model):
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output.shape
            counts["depthwise"] += h * w * c_out * int(np.prod(layer.kernel_size))
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            counts["conv"] += h * w * c_out * int(np.prod(layer.kernel_size)) * c_in // layer.groups
        elif isinstance(layer, layers.Dense):
            shape = layer.input.shape
            counts["dense"] += int(np.prod(shape[1:-1], dtype=np.int64)) * shape[-1] * layer.units
    counts = {k: int(v) for k, v in counts.items()}
    return {"total": sum(counts.values()), **counts}


def int8_peak_model(path: str | Path) -> int:
    """Write a full-integer TFLite model of one large int8 convolution (PEAK_CONV); its MACs.

    Its rate on LiteRT is what this CPU's int8 kernels can do at best: a big, regular
    convolution with every operand int8, no small layers, no memory-bound depthwise steps.
    """
    h, w, c_in, c_out, k = PEAK_CONV
    inputs = keras.Input((h, w, c_in))
    model = keras.Model(inputs, keras.layers.Conv2D(c_out, k, padding="same", use_bias=False)(inputs))
    rng = np.random.default_rng(0)
    Path(path).write_bytes(to_int8_tflite(model, lambda: (rng.uniform(0, 255, (h, w, c_in)) for _ in range(4))))
    return h * w * c_in * c_out * k * k


def keras_task(params: dict) -> dict:
    """TensorFlow child: Keras encoder timings at ``threads``, and the optional parts ``params`` asks for."""
    threads = params["threads"]
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    bundle = load_bundle(params["bundle"], verify=False)  # the parent verified it
    captioner = load_captioner(bundle.file("captioner"))
    encoder = captioner.get_layer("encoder")
    frames = bench_frames(params["frames"], bundle.input_size)
    batches = [f[None].astype(np.float32) for f in frames]
    graph = tf.function(lambda x: encoder(x, training=False))
    seconds = params["seconds"]
    out = {
        "keras_float": attempt(lambda: timed_loop(
            lambda i: encoder.predict(batches[i % len(batches)], verbose=0), seconds)),
        "keras_float_graph": attempt(lambda: timed_loop(
            lambda i: graph(batches[i % len(batches)]).numpy(), seconds)),
    }
    if params.get("float_tflite"):
        out["float_tflite"] = attempt(lambda: Path(params["float_tflite"]).write_bytes(to_float_tflite(encoder)))
    if params.get("macs"):
        out["macs"] = attempt(lambda: keras_macs(encoder))
    if params.get("seed_frames"):
        out["seed"] = attempt(lambda: seed_pipeline(captioner, bundle, frames[:params["seed_frames"]]))
    if params.get("int8_peak"):
        out["int8_peak_macs"] = attempt(lambda: int8_peak_model(params["int8_peak"]))
    return out


if __name__ == "__main__":
    serve_task(keras_task)
