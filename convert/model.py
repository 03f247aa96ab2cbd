"""The captioner model family: a keras.applications CNN encoder and a merge-LSTM decoder.

The layout follows the seed project (pooled CNN features -> Dense; word prefix ->
Embedding(mask_zero) -> LSTM; add; Dense; next-word softmax) with one change: the model
is kept in *sequence form*. It takes the image and a token sequence ``[startseq, w1, ...]``
and returns next-word logits at every position. Because the LSTM is causal and padding is
masked, position t of the sequence form equals the seed model applied to the pre-padded
prefix ``w<=t``, so training costs one encoder pass per caption instead of one per word,
and explanations get every word's log-probability from one pass.

Layer names are a contract with ``convert.pack`` (which exports the decoder weights for
the numpy step decoder) and with the explainer (which rebuilds the pieces).
"""

from __future__ import annotations

import numpy as np

import keras
from keras import layers

from convert.weights import build_backbone, is_pretrained
from daemon.explain.layers import MomentMap

# How each keras.applications family expects its 0..255 RGB input to be scaled. Families
# not listed carry their own preprocessing inside the model (EfficientNet, EfficientNetV2,
# MobileNetV3, ConvNeXt, RegNet).
_PREPROCESSING = {
    "tf": ("MobileNet", "MobileNetV2", "InceptionV3", "InceptionResNetV2", "Xception",
           "NASNetMobile", "NASNetLarge", "ResNet50V2", "ResNet101V2", "ResNet152V2"),
    "caffe": ("ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19"),
    "torch": ("DenseNet121", "DenseNet169", "DenseNet201"),
}

DEFAULT_ENCODER = "MobileNetV3Small"


def preprocessing_mode(encoder_name: str) -> str:
    """The input scaling a keras.applications encoder expects: none, tf, caffe or torch."""
    for mode, names in _PREPROCESSING.items():
        if encoder_name in names:
            return mode
    return "none"


def preprocessing_affine(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel affine map (3x3 matrix, bias) taking 0..255 RGB to the encoder's input."""
    if mode == "none":
        return np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    if mode == "tf":
        return np.eye(3, dtype=np.float32) / 127.5, -np.ones(3, np.float32)
    if mode == "torch":
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        return np.diag(1 / (255 * std)).astype(np.float32), (-mean / std).astype(np.float32)
    if mode == "caffe":  # RGB -> BGR, minus the ImageNet mean
        perm = np.zeros((3, 3), np.float32)
        perm[0, 2] = perm[1, 1] = perm[2, 0] = 1
        return perm, -np.array([103.939, 116.779, 123.68], np.float32)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def _cut_backbone(backbone: keras.Model, stride: int) -> keras.Model:
    """The backbone up to its last map at 1/``stride`` of the input resolution."""
    side = int(backbone.input.shape[1]) // stride
    at_stride = [layer for layer in backbone.layers
                 if len(layer.output.shape) == 4 and layer.output.shape[1] == side]
    if not at_stride:
        sides = sorted({int(layer.output.shape[1]) for layer in backbone.layers if len(layer.output.shape) == 4})
        raise ValueError(f"{backbone.name} has no {side}x{side} map (1/{stride} of the input); its maps: {sides}")
    return keras.Model(backbone.input, at_stride[-1].output)


def build_encoder(name: str = DEFAULT_ENCODER, input_size: int = 224, weights: str | None = None,
                  pooling: str = "moments", spatial_channels: int = 96, stride: int | None = None,
                  minimalistic: bool = False) -> keras.Model:
    """A keras.applications backbone taking 0..255 RGB, ending in a feature vector.

    ``pooling="avg"`` is the seed's global average pooling, which throws away where things
    are. ``"moments"`` (default) pools a 1x1-reduced map together with its x- and
    y-weighted copies (``MomentMap``), so relations like "left of" survive while the
    pooling still reads every position alike; the weighted map is where Grad-CAM looks.
    ``"moments_max"`` also max-pools that map: a mean scales with how much of the image the
    objects cover, a maximum does not, which is what counting small objects needs. ``"spatial"`` flattens the reduced
    map: it keeps the layout too, but gives each position its own decoder weights, and
    then deep feature maps no longer keep an object's evidence at its place (README: where
    Grad-CAM then points), so it is not the default.

    ``stride`` cuts the backbone after its last map at 1/stride of the input (default:
    the whole backbone, 1/32). ``weights`` is ``"imagenet"``, ``None``/``"none"`` (random) or
    the path of a local Keras weights file (see convert.weights). ``minimalistic`` selects
    the MobileNetV3 variant without hard-swish, squeeze-excite and 5x5 kernels (its int8
    graph runs in one XNNPACK pass).
    """
    try:
        factory = getattr(keras.applications, name)
    except AttributeError:
        raise ValueError(f"{name!r} is not a keras.applications model") from None
    image = keras.Input((input_size, input_size, 3), name="image")
    x = image
    mode = preprocessing_mode(name)
    if mode != "none":
        matrix, bias = preprocessing_affine(mode)
        affine = layers.Dense(3, name="input_scaling", trainable=False)
        x = affine(x)
        affine.set_weights([matrix, bias])
    options = {"minimalistic": True} if minimalistic else {}
    if minimalistic and not name.startswith("MobileNetV3"):
        raise ValueError(f"minimalistic is a MobileNetV3 option, not one of {name}")
    backbone = build_backbone(factory, name, weights, input_shape=(input_size, input_size, 3), **options)
    if stride:
        backbone = _cut_backbone(backbone, stride)
    backbone.name = "backbone"
    if not is_pretrained(weights):
        # keras.applications uses BatchNorm momentum 0.999, tuned for long ImageNet runs. From
        # scratch in a few thousand steps the moving statistics would lag far behind the
        # weights and inference-mode features would be garbage; 0.99 keeps them current.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = min(layer.momentum, 0.99)
    x = backbone(x)
    if pooling == "avg":
        features = layers.GlobalAveragePooling2D(name="features")(x)
    elif pooling in ("moments", "moments_max"):
        # linear 1x1 conv, then its ReLU: training losses on the map (train.py) read either
        x = layers.Conv2D(spatial_channels, 1, name="spatial_conv")(x)
        x = layers.ReLU(name="spatial_reduce")(x)
        x = MomentMap(name="moment_map")(x)
        if pooling == "moments":
            features = layers.GlobalAveragePooling2D(name="features")(x)
        else:
            features = layers.Concatenate(name="features")([layers.GlobalAveragePooling2D(name="mean_pool")(x),
                                                            layers.GlobalMaxPooling2D(name="max_pool")(x)])
    elif pooling == "spatial":
        x = layers.Conv2D(spatial_channels, 1, activation="relu", name="spatial_reduce")(x)
        features = layers.Flatten(name="features")(x)
    else:
        raise ValueError(f"pooling must be 'moments', 'moments_max', 'avg' or 'spatial', not {pooling!r}")
    return keras.Model(image, features, name="encoder")


def build_captioner(encoder: keras.Model, vocab_size: int, embedding_dim: int = 64,
                    units: int = 128, dropout: float = 0.2, merge_units: int | None = None) -> keras.Model:
    """The sequence-form captioner: (image, tokens) -> next-word logits at every position.

    ``units`` is the size of the LSTM and of the image projection (they are added);
    ``merge_units`` the hidden layer after the merge (default: ``units``).
    """
    image = keras.Input(encoder.input_shape[1:], name="image")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    features = encoder(image)
    f = layers.Dropout(dropout, name="feat_dropout")(features)
    f = layers.Dense(units, activation="relu", name="feat_dense")(f)
    f = layers.Reshape((1, units), name="feat_expand")(f)
    e = layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")(tokens)
    e = layers.Dropout(dropout, name="emb_dropout")(e)
    s = layers.LSTM(units, return_sequences=True, name="lstm")(e)
    m = layers.Add(name="merge")([f, s])
    m = layers.Dense(merge_units or units, activation="relu", name="merge_dense")(m)
    logits = layers.Dense(vocab_size, name="logits")(m)
    return keras.Model([image, tokens], logits, name="captioner")


def decoder_weights(captioner: keras.Model) -> dict[str, np.ndarray]:
    """The decoder's weights as plain arrays, in the layout of ``decoder.npz``."""
    fw, fb = captioner.get_layer("feat_dense").get_weights()
    (emb,) = captioner.get_layer("embedding").get_weights()
    kernel, recurrent, bias = captioner.get_layer("lstm").get_weights()
    mw, mb = captioner.get_layer("merge_dense").get_weights()
    ow, ob = captioner.get_layer("logits").get_weights()
    return {
        "feat_kernel": fw, "feat_bias": fb, "embedding": emb,
        "lstm_kernel": kernel, "lstm_recurrent": recurrent, "lstm_bias": bias,
        "merge_kernel": mw, "merge_bias": mb, "logits_kernel": ow, "logits_bias": ob,
    }


def load_captioner(path) -> keras.Model:
    """Load a bundle's ``captioner.keras`` without compiling it."""
    return keras.models.load_model(path, compile=False)
