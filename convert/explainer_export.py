"""``explaincam export-explainer``: the explainer's gradient graphs as a float32 LiteRT file.

Explanations need gradients of word log-probabilities; TensorFlow computes them here, once,
at conversion, and ``explainer_float.tflite`` carries them to the box, where the LiteRT
backend (``daemon.explain.backends.litert``) runs them without TensorFlow. The file has one
signature per entry point of the backend contract, at a fixed batch B and token length T
(the bundle's ``max_length`` + 1: the start token and up to ``max_length`` words):

- ``logits``: images (B, H, W, 3) float 0..255, tokens (B, T) int32 -> logits (B, T, V);
- ``layer_gradients``: + weights (B, T-1) -> activations and gradients of the Grad-CAM
  layer (B, h, w, C), scores (B,);
- ``image_gradients``: -> gradients (B, H, W, 3), scores (B,);
- ``bottleneck_activations``: images -> activations of the ACE bottleneck (B, h', w', C');
- ``bottleneck_gradients``: -> activations, gradients of the bottleneck, scores.

The score of row i is sum_t weights[i, t] * log_softmax(logits[i, t])[tokens[i, t + 1]].

Three things stand between the captioner and a TFLITE_BUILTINS-only graph, and the export
copy deals with each while keeping the weights:

- the LSTM runs as a ``while`` loop, which has no convertible gradient: the copy unrolls
  it to T steps (same cell, same mask semantics);
- some gradient ops have no builtin (``ReluGrad``, ``Relu6Grad``, ``SigmoidGrad``,
  ``TanhGrad``, ``DepthwiseConv2dNativeBackpropInput``): the forward ops get gradients
  written with builtins instead (a multiply by a mask or by the derivative from the
  output; the input gradient of a depthwise convolution as a depthwise convolution of the
  zero-stuffed upstream gradient with the spatially flipped kernel);
- slicing the logits would bring ``StridedSliceGrad``: the score picks words with a one-hot.

A graph that still holds an op without a builtin is not written; ``ExportError`` names the
ops, and the bundle keeps working on the TensorFlow backend.

Memory: the signatures are converted one at a time, each saved with the captioner's
variables for the converter to fold, its memory freed before the next, and merged into one
file in which the signatures share every identical constant (``merge_signatures``, one part
in memory at a time). ``explaincam convert`` runs the export in processes of its own
(``export_in_subprocess``: one saves the signatures, one converts each), so that running out of memory
there costs the explainer graph only, never the bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import nn_grad

import keras

from convert.concepts import bottleneck_layer
from convert.fresh_process import StepError, run_step, step_main
from convert.memory import release_freed_memory
from daemon.bundle import BundleError, load_bundle, write_manifest
from daemon.explain.backends.tensorflow import SplitCaptioner
from daemon.explain.layers import MomentMap  # noqa: F401  registers the layer for load_model
from daemon.files import write_atomically

EXPLAINER_FILE = "explainer_float.tflite"
# One row per call: XNNPACK's time per row is the same at batch 1, 4 and 8 on the shipped
# model, and batch 1 never runs padding rows (a 3-word answer at batch 8 ran 8), the file is a
# quarter of batch 8's (its constants carry the batch), and the outputs are bit-identical.
DEFAULT_BATCH = 1
SIGNATURES = ("logits", "layer_gradients", "image_gradients", "bottleneck_activations", "bottleneck_gradients")
# A captioner file smaller than this exports in one fresh process, saving and converting each signature in
# turn: TensorFlow's import (4 s) and the captioner's load are paid once, not six times (the shipped
# model: 18 s instead of 45; EfficientNetV2B0, 25 MB: 1.4 GB instead of 1.2). Larger ones convert
# each signature in a process of its own (README, "The seed's model").
ONE_PROCESS_BELOW_BYTES = 64 * 2 ** 20


class ExportError(Exception):
    """The explainer graph cannot be exported op-clean; the message names the ops."""


# ------------------------------------------------------------- gradients with builtins only

def _relu_grad(op, grad):
    return grad * tf.cast(op.outputs[0] > 0, grad.dtype)


def _relu6_grad(op, grad):
    y = op.outputs[0]
    return grad * tf.cast(tf.logical_and(y > 0, y < 6), grad.dtype)


def _sigmoid_grad(op, grad):
    y = op.outputs[0]
    return grad * y * (1 - y)


def _tanh_grad(op, grad):
    y = op.outputs[0]
    return grad * (1 - y * y)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """Rows (or columns) of zeros SAME padding adds before the input."""
    out = -(-size // stride)
    return max((out - 1) * stride + kernel - size, 0) // 2


def _stuff(grad, stride: int, axis: int):
    """``grad`` with stride - 1 zeros after every element along ``axis`` (1 or 2), the last trimmed."""
    if stride == 1:
        return grad
    stacked = tf.stack([grad] + [tf.zeros_like(grad)] * (stride - 1), axis=axis + 1)
    shape = grad.shape.as_list()
    shape[axis] *= stride
    stuffed = tf.reshape(stacked, shape)
    keep = [slice(None)] * 4
    keep[axis] = slice(0, shape[axis] - (stride - 1))
    return stuffed[tuple(keep)]


def _depthwise_grad(op, grad):
    """Input gradient of a depthwise convolution as a depthwise convolution (builtins only).

    Per spatial axis with kernel K, stride s and p rows of padding before, the input
    gradient is the correlation of the upstream gradient, zero-stuffed to stride 1 and
    padded with K - 1 - p zeros before, with the flipped kernel. Dilated or NCHW
    convolutions keep TensorFlow's own gradient (and the export names its op).
    """
    x, kernel = op.inputs
    strides = op.get_attr("strides")
    dilations = op.get_attr("dilations")
    padding = op.get_attr("padding").decode()
    fmt = op.get_attr("data_format").decode()
    shape = x.shape.as_list()
    if fmt != "NHWC" or list(dilations) != [1, 1, 1, 1] or padding not in ("SAME", "VALID") \
            or None in shape:
        return nn_grad._DepthwiseConv2dNativeGrad(op, grad)
    kh, kw, channels, multiplier = kernel.shape.as_list()
    g = grad
    pads = [[0, 0]]
    for axis, k in ((1, kh), (2, kw)):
        s = strides[axis]
        g = _stuff(g, s, axis)
        before = _same_padding(shape[axis], k, s) if padding == "SAME" else 0
        lead = k - 1 - before
        trail = shape[axis] + k - 1 - g.shape[axis] - lead
        pads.append([lead, trail])
    pads.append([0, 0])
    g = tf.pad(g, pads)
    flipped = tf.reverse(kernel, axis=[0, 1])
    flipped = tf.reshape(flipped, [kh, kw, channels * multiplier, 1])
    dx = tf.nn.depthwise_conv2d(g, flipped, [1, 1, 1, 1], "VALID")
    if multiplier > 1:
        dx = tf.reduce_sum(tf.reshape(dx, shape[:3] + [channels, multiplier]), axis=-1)
    return dx, None


_OVERRIDES = {
    "Relu": ("ExplaincamBuiltinRelu", _relu_grad),
    "Relu6": ("ExplaincamBuiltinRelu6", _relu6_grad),
    "Sigmoid": ("ExplaincamBuiltinSigmoid", _sigmoid_grad),
    "Tanh": ("ExplaincamBuiltinTanh", _tanh_grad),
    "DepthwiseConv2dNative": ("ExplaincamBuiltinDepthwise", _depthwise_grad),
}
for _name, _fn in _OVERRIDES.values():
    tf.RegisterGradient(_name)(_fn)
GRADIENT_OVERRIDES = {op: name for op, (name, _) in _OVERRIDES.items()}


# ------------------------------------------------------------------ the unrolled decoder

class UnrolledDecoder:
    """The captioner's decoder (features, tokens) -> logits with its LSTM unrolled to T steps.

    Same layers and weights as ``convert.model.build_captioner``'s; the LSTM keeps Keras'
    mask semantics (a padding token 0 carries the state over and repeats the last output,
    or outputs zeros with ``zero_output_for_mask``).
    """

    def __init__(self, captioner: keras.Model):
        self.feat_dense = captioner.get_layer("feat_dense")
        self.embedding = captioner.get_layer("embedding")
        self.lstm = captioner.get_layer("lstm")
        self.merge_dense = captioner.get_layer("merge_dense")
        self.logits = captioner.get_layer("logits")
        cell = getattr(self.lstm, "cell", self.lstm)
        self.cell = cell
        self.units = int(cell.units)
        self.zero_output_for_mask = bool(getattr(self.lstm, "zero_output_for_mask", False))
        if getattr(self.lstm, "go_backwards", False) or getattr(self.lstm, "stateful", False):
            raise ExportError("the decoder's LSTM runs backwards or statefully; the export expects the "
                              "causal LSTM of convert.model.build_captioner")

    def __call__(self, features, tokens):
        """Logits (B, T, V) of the encoder features (B, F) and token rows (B, T)."""
        f = self.feat_dense(features)
        e = self.embedding(tokens)
        kernel, recurrent, bias = (tf.convert_to_tensor(w) for w in (
            self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias))
        mask = tf.cast(tf.not_equal(tokens, 0), tf.float32)
        batch = tokens.shape[0]
        h = tf.zeros([batch, self.units])
        c = tf.zeros([batch, self.units])
        outputs = []
        xs = tf.unstack(e, axis=1)
        ms = tf.unstack(mask[:, :, None], axis=1)
        for x, m in zip(xs, ms):
            z = tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias
            zi, zf, zc, zo = tf.split(z, 4, axis=1)
            i = self.cell.recurrent_activation(zi)
            fg = self.cell.recurrent_activation(zf)
            c_new = fg * c + i * self.cell.activation(zc)
            o = self.cell.recurrent_activation(zo)
            h_new = o * self.cell.activation(c_new)
            h = m * h_new + (1 - m) * h
            c = m * c_new + (1 - m) * c
            outputs.append(m * h_new if self.zero_output_for_mask else h)
        s = tf.stack(outputs, axis=1)
        merged = self.merge_dense(s + tf.expand_dims(f, 1))  # no slice: its gradient has no builtin
        return self.logits(merged)


# --------------------------------------------------------------------- the entry points

def word_scores(logits, tokens, weights):
    """Per row: sum_t weights[t] * log_softmax(logits[t])[tokens[t + 1]] (no slicing of the logits)."""
    vocab = logits.shape[-1]
    targets = tf.concat([tokens[:, 1:], tf.zeros_like(tokens[:, :1])], axis=1)
    w = tf.concat([weights, tf.zeros_like(weights[:, :1])], axis=1)
    picked = tf.reduce_sum(tf.nn.log_softmax(logits, axis=-1) * tf.one_hot(targets, vocab), axis=-1)
    return tf.reduce_sum(picked * w, axis=1)


class ExplainerGraphs(tf.Module):
    """The five entry points over one captioner, traced at a fixed batch and token length."""

    def __init__(self, captioner: keras.Model, gradcam_layer: str, bottleneck_layer: str,
                 batch: int, tokens: int, signatures: tuple[str, ...] = SIGNATURES):
        super().__init__()
        unknown = [name for name in signatures if name not in SIGNATURES]
        if unknown:
            raise ValueError(f"unknown explainer signatures {unknown}; known: {', '.join(SIGNATURES)}")
        self.signatures_exported = tuple(signatures)
        self.captioner = captioner
        self.gradcam = SplitCaptioner(captioner, gradcam_layer)
        self.bottleneck = SplitCaptioner(captioner, bottleneck_layer)
        self.decoder = UnrolledDecoder(captioner)
        size = tuple(int(d) for d in captioner.inputs[0].shape[1:3])
        images = tf.TensorSpec([batch, *size, 3], tf.float32, name="images")
        token_rows = tf.TensorSpec([batch, tokens], tf.int32, name="tokens")
        weights = tf.TensorSpec([batch, tokens - 1], tf.float32, name="weights")
        self._entry_points = {
            "logits": (self._logits, [images, token_rows]),
            "layer_gradients": (self._layer_gradients, [images, token_rows, weights]),
            "image_gradients": (self._image_gradients, [images, token_rows, weights]),
            "bottleneck_activations": (self._bottleneck_activations, [images]),
            "bottleneck_gradients": (self._bottleneck_gradients, [images, token_rows, weights]),
        }

    @staticmethod
    def _overrides():
        return tf.compat.v1.get_default_graph().gradient_override_map(GRADIENT_OVERRIDES)

    def _logits(self, images, tokens):
        _, features = self.gradcam.encode(images)
        return {"logits": self.decoder(features, tokens)}

    def _split_gradients(self, split: SplitCaptioner, images, tokens, weights):
        with self._overrides():
            acts, features = split.encode(images)
            scores = word_scores(self.decoder(features, tokens), tokens, weights)
        (grads,) = tf.gradients(scores, [acts])
        return {"activations": acts, "gradients": grads, "scores": scores}

    def _layer_gradients(self, images, tokens, weights):
        return self._split_gradients(self.gradcam, images, tokens, weights)

    def _bottleneck_gradients(self, images, tokens, weights):
        return self._split_gradients(self.bottleneck, images, tokens, weights)

    def _image_gradients(self, images, tokens, weights):
        with self._overrides():
            _, features = self.gradcam.encode(images)
            scores = word_scores(self.decoder(features, tokens), tokens, weights)
        (grads,) = tf.gradients(scores, [images])
        return {"gradients": grads, "scores": scores}

    def _bottleneck_activations(self, images):
        acts, _ = self.bottleneck.encode(images)
        return {"activations": acts}

    def concrete_function(self, name: str):
        """A fresh trace of one entry point (not kept here: a large model's traces are freed between signatures).

        Traced without AutoGraph: the entry points have no tensor-dependent Python control
        flow (the LSTM is unrolled in Python), and AutoGraph's converted method calls once
        lost ``self`` (``_split_gradients() missing ... 'weights'``) in a seed conversion.
        """
        function, signature = self._entry_points[name]
        return tf.function(function, input_signature=signature, autograph=False).get_concrete_function()


# ------------------------------------------------------------------------- conversion

_UNSUPPORTED = re.compile(r"'(?:tf|tfl)\.(\w+)' op is neither a custom op nor a flex op")


def operator_names(model: bytes) -> list[str]:
    """Every operator code of a .tflite flatbuffer: builtin names, or 'CUSTOM:<code>' for custom ops."""
    # ai-edge-litert is installed only on x86_64 and aarch64 (pyproject), TensorFlow elsewhere too
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    flat = schema.Model.GetRootAsModel(model, 0)
    out = []
    for k in range(flat.OperatorCodesLength()):
        code = flat.OperatorCodes(k)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            out.append(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            out.append(names.get(builtin, str(builtin)))
    return out


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send the process's stderr (the converter's MLIR diagnostics, which its exception repeats) to a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def save_signature(graphs: ExplainerGraphs, name: str, folder: str | Path) -> None:
    """Save one entry point of the graphs, with the captioner's weights, as a SavedModel in ``folder``."""
    # Saved with its variables, held by a module that has no function of its own: the
    # converter sees that nothing assigns them and folds them into constants itself.
    # (Folding them here, with convert_variables_to_constants_v2, took ten times the
    # weights' size in memory, and saving the folded graph more.)
    holder = tf.Module()
    holder.weights = [getattr(v, "value", v) for v in graphs.captioner.variables]  # Keras 3 wraps tf.Variable
    # the gradients are ops of the traced graph already; nothing needs tracing again
    tf.saved_model.save(holder, str(folder), signatures={name: graphs.concrete_function(name)},
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))


def convert_saved_signature(folder: str | Path, name: str) -> bytes:
    """The float32 TFLITE_BUILTINS-only flatbuffer of one saved entry point; ExportError naming the ops otherwise."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=[name])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    converter.exclude_conversion_metadata = True  # its pass copies the whole flatbuffer twice more
    try:
        with _stderr_to(Path(folder) / "converter.log"):
            model = converter.convert()
    except Exception as exc:  # the converter raises ConverterError with MLIR diagnostics
        ops = sorted(set(_UNSUPPORTED.findall(str(exc))))
        if ops:
            raise ExportError(f"the explainer graph needs ops with no TFLite builtin: {', '.join(ops)}") from None
        lines = str(exc).strip().splitlines()
        raise ExportError("the explainer graph does not convert to TFLite builtins: "
                          + (lines[-1] if lines else type(exc).__name__)) from None
    custom = sorted({op for op in operator_names(model) if op.startswith("CUSTOM")})
    if custom:
        raise ExportError(f"the explainer graph needs ops with no TFLite builtin: {', '.join(custom)}")
    return model


def convert_signature(graphs: ExplainerGraphs, name: str) -> bytes:
    """The float32 TFLITE_BUILTINS-only flatbuffer of one entry point; ExportError naming the ops otherwise."""
    with tempfile.TemporaryDirectory(prefix="explainer-export-") as tmp:
        save_signature(graphs, name, tmp)
        release_freed_memory()
        return convert_saved_signature(tmp, name)


def convert_graphs(graphs: ExplainerGraphs, out: str | Path) -> int:
    """Write the float32 TFLITE_BUILTINS-only flatbuffer of all the entry points to ``out`` (atomically); its size.

    ExportError naming the ops otherwise. Each signature converts on its own, its memory
    freed before the next (all five in one conversion copy every weight per signature,
    several times over: README, "The seed's model"), and ``merge_signatures`` joins them
    into one file whose signatures share every identical weight.
    """
    with tempfile.TemporaryDirectory(prefix="explainer-parts-") as tmp:
        parts = []
        for name in graphs.signatures_exported:
            part = Path(tmp) / f"{name}.tflite"
            part.write_bytes(convert_signature(graphs, name))
            release_freed_memory()
            parts.append(part)
        model = merge_signatures(parts)
        write_atomically(out, model)
        return len(model)


# ---------------------------------------------------------------- one file, weights shared

def _version(text: bytes) -> tuple[int, ...]:
    """A metadata version string such as b'2.3.0\\0\\0' as a comparable tuple."""
    return tuple(int(n) for n in re.findall(rb"\d+", text))


class _Packed:
    """A table already written into the builder, standing in for its object in the model's vectors."""

    def __init__(self, offset: int):
        self.offset = offset

    def Pack(self, builder) -> int:  # noqa: N802 (the flatbuffers object API's name)
        """The table's offset in the builder."""
        return self.offset


def _constants(path: Path):
    """(sha256, size) of each non-empty buffer of a .tflite file, and the file's size."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    found = []
    for index in range(model.BuffersLength()):
        buffer = model.Buffers(index)
        if not buffer.DataIsNone() and buffer.DataLength():
            found.append((hashlib.sha256(buffer.DataAsNumpy()).digest(), buffer.DataLength()))
    return found, len(data)


def merge_signatures(paths: list[Path]) -> memoryview:
    """One .tflite (its bytes) holding the signatures of several single-signature .tflite files.

    Each file's subgraph, operator codes and signature are carried over; a constant buffer
    whose bytes another file already brought is stored once and shared (the forward pass's
    weights are in every signature). The result must fit a flatbuffer (2 GB).

    Memory: one part file at a time besides the result. A first pass sizes the result (the
    builder never grows, which would copy it); the second writes each part's new constants,
    subgraph and signature straight into the builder and lets the part go.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    unique, structure = {}, 0
    for path in paths:
        constants, size = _constants(path)
        unique.update(constants)
        structure += size - sum(n for _, n in constants)
    size = sum(unique.values())
    if size >= 2 ** 31 - 2 ** 26:
        raise ExportError(f"the explainer graph's weights take {size / 2 ** 30:.1f} GB even shared, more than "
                          "a .tflite file holds (2 GB)")
    builder = flatbuffers.Builder(size + structure + 2 ** 20)

    merged = schema.ModelT()
    merged.version, merged.description = 3, b"explaincam explainer"
    merged.buffers = [_Packed(schema.BufferT().Pack(builder))]  # buffer 0: the empty sentinel
    merged.operatorCodes, merged.subgraphs, merged.signatureDefs = [], [], []
    stored: dict[bytes, int] = {}  # sha256 of a constant's bytes -> its buffer in the merged file
    codes: dict[tuple, int] = {}
    runtime = b""
    for path in paths:
        part = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
        if len(part.subgraphs) != 1 or len(part.signatureDefs or []) != 1:
            raise ExportError(f"{path.name}: expected one subgraph and one signature, found "
                              f"{len(part.subgraphs)} and {len(part.signatureDefs or [])}")
        buffer_of = {}
        for index, buffer in enumerate(part.buffers):
            data = buffer.data
            if data is None or len(data) == 0:  # no constant: the sentinel 0, or a tensor's own empty buffer
                buffer_of[index] = len(merged.buffers) if index else 0
                if index:
                    merged.buffers.append(_Packed(schema.BufferT().Pack(builder)))
                continue
            key = hashlib.sha256(data).digest()
            if key not in stored:
                stored[key] = len(merged.buffers)
                merged.buffers.append(_Packed(schema.BufferT(data=data).Pack(builder)))
            buffer_of[index] = stored[key]
        code_of = {}
        for index, code in enumerate(part.operatorCodes):
            key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
            code_of[index] = codes.setdefault(key, len(codes))
            if code_of[index] == len(merged.operatorCodes):
                merged.operatorCodes.append(code)
        (subgraph,) = part.subgraphs
        for tensor in subgraph.tensors:
            tensor.buffer = buffer_of[tensor.buffer]
        for operator in subgraph.operators:
            operator.opcodeIndex = code_of[operator.opcodeIndex]
        (signature,) = part.signatureDefs
        signature.subgraphIndex = len(merged.subgraphs)
        # written now: the unpacked subgraph's arrays are views of the part's bytes
        merged.subgraphs.append(_Packed(subgraph.Pack(builder)))
        merged.signatureDefs.append(_Packed(signature.Pack(builder)))
        for entry in part.metadata or []:
            if entry.name == b"min_runtime_version":
                version = bytes(part.buffers[entry.buffer].data)
                runtime = max(runtime, version, key=_version)
        del part, subgraph, signature
    if runtime:
        merged.metadata = [schema.MetadataT()]
        merged.metadata[0].name, merged.metadata[0].buffer = b"min_runtime_version", len(merged.buffers)
        merged.buffers.append(schema.BufferT(data=np.frombuffer(runtime, np.uint8)))
    builder.Finish(merged.Pack(builder), file_identifier=b"TFL3")
    return memoryview(builder.Bytes)[builder.Head():]


# ---------------------------------------------------------------------------- bundles

def explainer_layers(bundle, captioner: keras.Model) -> tuple[str, str]:
    """(Grad-CAM layer, ACE bottleneck layer) of a bundle: the manifest's, the concept bank's or the default."""
    bottleneck = None
    if bundle.has("concepts"):
        with np.load(bundle.file("concepts"), allow_pickle=False) as bank:
            bottleneck = str(bank["layer"])
    return bundle.manifest["gradcam_layer"], bottleneck or bottleneck_layer(captioner)


def export_explainer(captioner: keras.Model, out: str | Path, gradcam_layer: str, bottleneck_layer: str,
                     tokens: int, batch: int = DEFAULT_BATCH) -> dict:
    """Write the explainer graph of a captioner to ``out`` (atomically); its manifest entry.

    Raises ExportError naming the ops when the graph has ops without a TFLite builtin.
    """
    started = time.perf_counter()
    size = convert_graphs(ExplainerGraphs(captioner, gradcam_layer, bottleneck_layer, batch, tokens), out)
    return _entry(out, gradcam_layer, bottleneck_layer, tokens, batch, started, size)


def _entry(out: str | Path, gradcam_layer: str, bottleneck_layer: str, tokens: int, batch: int,
           started: float, size: int) -> dict:
    """The entry of an export of all the signatures into ``out`` that began at ``started`` (perf_counter)."""
    return {"file": Path(out).name, "batch": int(batch), "tokens": int(tokens), "gradcam_layer": gradcam_layer,
            "bottleneck_layer": bottleneck_layer, "signatures": list(SIGNATURES),
            "export_seconds": round(time.perf_counter() - started, 1), "bytes": int(size)}


def add_to_bundle(bundle_dir: str | Path, batch: int = DEFAULT_BATCH, captioner: keras.Model | None = None) -> dict:
    """Export a bundle's explainer graph into it and record it in the (re-hashed) manifest.

    On ExportError the bundle is left as it was (no explainer file, the TensorFlow backend serves it).
    """
    bundle = load_bundle(bundle_dir)
    if not bundle.has("captioner"):
        raise ExportError(f"{bundle.path} has no captioner.keras to export the explainer graph from")
    if captioner is None:
        captioner = keras.models.load_model(bundle.file("captioner"), compile=False)
    gradcam_layer, bottleneck_layer = explainer_layers(bundle, captioner)
    try:
        entry = export_explainer(captioner, bundle.path / EXPLAINER_FILE, gradcam_layer, bottleneck_layer,
                                 tokens=bundle.max_length + 1, batch=batch)
    except ExportError as exc:
        raise ExportError(f"{bundle.path}: {exc}; the bundle is unchanged and explains with the "
                          "TensorFlow backend") from None
    manifest = dict(bundle.manifest)
    manifest["files"] = dict(manifest["files"], explainer=EXPLAINER_FILE)
    manifest["explainer"] = manifest_entry(entry)
    write_manifest(bundle.path, manifest)
    return entry


def manifest_entry(entry: dict) -> dict:
    """The manifest's ``explainer`` entry of an export's entry: what the graph is, not how it was made."""
    return {k: v for k, v in entry.items() if k not in ("export_seconds", "bytes", "peak_rss_bytes")}


def configure(parser) -> None:
    """Arguments of ``explaincam export-explainer``."""
    parser.add_argument("--bundle", required=True, help="bundle folder to add explainer_float.tflite to")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"rows per call the graph takes (default {DEFAULT_BATCH}; memory grows with it)")


def main(args) -> int:
    """Export the graph into the bundle and print its manifest entry."""
    if args.batch < 1:
        print("error: --batch must be at least 1")
        return 2
    try:
        entry = add_to_bundle(args.bundle, args.batch)
    except (ExportError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(entry, indent=2))
    return 0


def export_in_subprocess(captioner_path: str | Path, out: str | Path, gradcam_layer: str, bottleneck_layer: str,
                         tokens: int, batch: int = DEFAULT_BATCH, apart: bool | None = None) -> dict:
    """``export_explainer`` of a saved captioner in fresh processes; its entry, or ``{"error": one line}``.

    With ``apart`` (the default for a captioner file of ONE_PROCESS_BELOW_BYTES or more), one
    process (``convert.fresh_process``) loads the captioner and saves every signature as a
    SavedModel; then each signature's SavedModel is converted in a process that holds nothing
    else. Converting all five in one process carried what the earlier ones left behind into
    the largest (EfficientNetV2L at 480: 2.0 GB before ``image_gradients`` began, 1.3 GB
    fresh), and one process per signature carried the loaded captioner into its conversion
    (EfficientNetV2L at 64 px: ``image_gradients`` 6.4 GB, its conversion alone 5.6). A small
    captioner is saved and converted signature by signature in one process. The parts are merged
    here, which needs no TensorFlow. On success ``out`` is written and the entry has
    export_seconds, bytes and peak_rss_bytes (the largest of those processes'). Otherwise
    ``out`` is not there and the line says why: an op without a builtin, or a process
    killed (the kernel's answer to running out of memory).
    """
    out = Path(out)
    started = time.perf_counter()
    if apart is None:
        apart = Path(captioner_path).stat().st_size >= ONE_PROCESS_BELOW_BYTES
    with tempfile.TemporaryDirectory(prefix="explainer-parts-") as tmp:
        parts = [Path(tmp) / f"{name}.tflite" for name in SIGNATURES]
        step_args = [str(captioner_path), tmp, gradcam_layer, bottleneck_layer, str(tokens), str(batch)]
        try:
            if not apart:
                peak = run_step("convert.explainer_export", ["export", *step_args], "the export process").peak_rss_bytes
            else:
                peak = run_step("convert.explainer_export", ["save", *step_args], "the export process").peak_rss_bytes
                for name, part in zip(SIGNATURES, parts):
                    converted = run_step("convert.explainer_export",
                                         ["convert", str(Path(tmp) / name), str(part), name],
                                         f"the conversion process of {name}")
                    peak = max(peak, converted.peak_rss_bytes)
                    shutil.rmtree(Path(tmp) / name)
        except StepError as exc:
            return {"error": str(exc)}
        try:
            model = merge_signatures(parts)
        except ExportError as exc:  # more weights than a .tflite file holds
            return {"error": str(exc)}
        write_atomically(out, model)
    return dict(_entry(out, gradcam_layer, bottleneck_layer, tokens, batch, started, len(model)), peak_rss_bytes=peak)


def _step(argv: list[str]) -> None:
    """One step of export_in_subprocess in this process: ``save CAPTIONER FOLDER GRADCAM_LAYER BOTTLENECK TOKENS
    BATCH`` (every signature as a SavedModel in FOLDER/SIGNATURE), ``export`` with the same arguments (each
    signature saved, then converted to FOLDER/SIGNATURE.tflite) or ``convert SAVED_SIGNATURE PART SIGNATURE``."""
    if argv[0] in ("save", "export"):
        captioner_path, folder, gradcam_layer, bottleneck, tokens, batch = argv[1:]
        graphs = ExplainerGraphs(keras.models.load_model(captioner_path, compile=False), gradcam_layer, bottleneck,
                                 int(batch), int(tokens))
        for name in SIGNATURES:
            saved = Path(folder) / name
            save_signature(graphs, name, saved)
            if argv[0] == "export":
                write_atomically(Path(folder) / f"{name}.tflite", convert_saved_signature(saved, name))
                shutil.rmtree(saved)
            release_freed_memory()
    elif argv[0] == "convert":
        folder, part, name = argv[1:]
        write_atomically(Path(part), convert_saved_signature(folder, name))
    else:
        raise ExportError(f"no export step {argv[0]!r}")


if __name__ == "__main__":
    step_main(_step)
