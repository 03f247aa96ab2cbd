"""``explaincam train``: fit the captioner on generated scenes or a user's captioned images.

Writes a training folder that ``explaincam convert --model DIR`` turns into a bundle:
``captioner.keras`` (sequence form, see convert.model), ``vocab.txt`` and ``train.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

import keras

from convert import datasets
from convert.model import DEFAULT_ENCODER, build_captioner, build_encoder, preprocessing_mode
from convert.progress import Progress
from convert.weights import describe
from daemon.scenes import block_any, scene_vocabulary

VALIDATION_SEED_OFFSET = 7919  # validation scenes come from a stream training never sees


class _Batches(keras.utils.PyDataset):
    """Shuffled batches of ((image, input tokens), targets, mask) for teacher forcing.

    ``map_targets`` (generated scenes only) names the encoder-map targets that follow the
    caption targets, at the map's resolution ``map_side``: ``"background"`` (the cells
    outside the objects, for the background activity penalty) and ``"density"`` (one
    Gaussian per object centre in the channel of each word that describes it, for the object
    density loss).
    """

    def __init__(self, data: datasets.CaptionSet, rows, inputs, targets, batch_size, shuffle, seed=0,
                 map_side: int | None = None, map_targets: tuple[str, ...] = ()):
        super().__init__()
        self.data, self.rows, self.inputs, self.targets = data, rows, inputs, targets
        self.batch_size, self.shuffle = batch_size, shuffle
        self.map_side, self.map_targets = map_side, map_targets
        self.order = np.arange(len(rows))
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        images = self.data.images[self.rows[idx]].astype("float32")
        targets = self.targets[idx]
        weights = (targets > 0).astype("float32")
        if not self.map_targets:
            return (images, self.inputs[idx]), targets, weights
        rows = self.rows[idx]
        maps = []
        for name in self.map_targets:
            if name == "background":
                foreground = self.data.foreground[rows]
                background = ~block_any(foreground, foreground.shape[-1] // self.map_side)
                maps.append(background[..., None].astype("float32"))
            else:
                maps.append(datasets.object_density(self.data.centres[rows], self.data.attributes[rows],
                                                    images.shape[1], self.map_side))
        ones = np.ones(len(idx), "float32")
        return ((images, self.inputs[idx]), (targets, *maps),
                (weights, *(ones for _ in maps)))

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


def background_activity(background, head_map):
    """Per image: the mean activation of the encoder's reduced map over background cells."""
    return keras.ops.mean(background * head_map, axis=(1, 2, 3))


def object_density_error(density, pre_activation):
    """Per image: the squared error of the reduced map's first channels against the object density.

    Read before the map's ReLU, so a channel pushed below zero everywhere early in training
    still gets a gradient back; summed over cells, so a miscounted object weighs alike at
    every map resolution.
    """
    return keras.ops.sum((pre_activation[..., :density.shape[-1]] - density) ** 2, axis=(1, 2, 3))


MAP_LOSSES = {"background": background_activity, "density": object_density_error}
MAP_LAYERS = {"background": "spatial_reduce", "density": "spatial_conv"}  # the map each loss reads


def _with_head_map(captioner: keras.Model, map_targets: tuple[str, ...]) -> keras.Model:
    """The captioner with one more output per map target, the encoder map that target's loss reads (one pass)."""
    encoder = captioner.get_layer("encoder")
    maps = [encoder.get_layer(MAP_LAYERS[name]).output for name in map_targets]
    both = keras.Model(encoder.input, [*maps, encoder.output], name="encoder_map")
    decoder = keras.Model([captioner.get_layer("feat_dropout").input, captioner.inputs[1]], captioner.output,
                          name="caption")
    image, tokens = keras.Input(captioner.inputs[0].shape[1:]), keras.Input((None,), dtype="int32")
    *head_maps, features = both(image)
    named = [keras.layers.Identity(name=name)(head_map) for name, head_map in zip(map_targets, head_maps)]
    return keras.Model([image, tokens], [decoder([features, tokens]), *named])


def _build_training_variables(model: keras.Model, batch) -> None:
    """Create the compiled model's optimizer slots and metric variables before ``fit``.

    Keras on TensorFlow (without a distribution strategy) creates them, and the per-output
    loss trackers, inside the first traced train step, and TensorFlow then traces the whole
    step again. Made here (from one inference batch; ``fit`` resets the trackers' and metrics'
    state), the step is traced once: the same weights, less time per training. Other
    backends build them before tracing already.
    """
    if keras.backend.backend() != "tensorflow":
        return
    (x, y, sample_weight) = batch
    model.optimizer.build(model.trainable_variables)
    predictions = model(x, training=False)
    model.compute_loss(x, y, predictions, sample_weight, training=False)
    model.compute_metrics(x, y, predictions, sample_weight)


def train(out: str | Path, encoder: str = DEFAULT_ENCODER, weights: str | None = None,
          scenes: int = 12000, seed: int = 1, dataset: str | None = None, epochs: int = 10,
          batch_size: int = 32, input_size: int = 224, pooling: str = "moments",
          embedding_dim: int = 64, units: int = 128, learning_rate: float = 2e-3,
          min_word_count: int = 1, max_words: int | None = None, validation: int = 500,
          stride: int | None = None, minimalistic: bool = False, background_penalty: float = 0.0,
          object_density: float = 0.0, verbose: int = 1) -> dict:
    """Train a captioner and write it to ``out``; return the training summary.

    ``background_penalty`` > 0 (generated scenes, moments head) adds that weight times the
    mean activation of the encoder's reduced map outside the objects to the loss, so the
    model keeps its evidence on the objects (Ross et al.'s "right for the right reasons",
    on activations instead of input gradients). ``object_density`` > 0 adds that weight times
    the squared error of the reduced map's first channels, one per size, colour and shape
    word, against density maps of the centres of the objects each word describes
    (Lempitsky and Zisserman's counting by density): channels whose means count objects
    whatever their area, with every object word's evidence at its object.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    started = time.time()
    if dataset:
        data = datasets.flickr_set(dataset, input_size, progress=Progress("loading images", verbose))
        n_val = min(validation, max(1, len(data.images) // 10)) if len(data.images) > 1 else 0
        train_set = datasets.CaptionSet(data.images[n_val:], data.captions[n_val:])
        val_set = datasets.CaptionSet(data.images[:n_val], data.captions[:n_val])
        vocab = datasets.build_vocabulary(train_set.captions, min_word_count)
    else:
        train_set = datasets.scenes_set(scenes, seed, progress=Progress("generating scenes", verbose))
        val_set = datasets.scenes_set(validation, seed + VALIDATION_SEED_OFFSET)
        vocab = datasets.build_vocabulary([[" ".join(scene_vocabulary())]])
    if max_words is None:
        max_words = max(len(vocab.encode(c)) for caps in train_set.captions for c in caps)

    def new_captioner():
        return build_captioner(build_encoder(encoder, input_size, weights, pooling, stride=stride,
                                             minimalistic=minimalistic), len(vocab), embedding_dim, units)

    model = new_captioner()
    steps = math.ceil(sum(len(c) for c in train_set.captions) / batch_size) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.02)
    caption_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    map_weights = {name: weight for name, weight in (("background", background_penalty), ("density", object_density))
                   if weight > 0}
    if map_weights and (train_set.foreground is None or not pooling.startswith("moments")):
        raise ValueError("--background-penalty and --object-density need generated scenes (object masks) "
                         "and --pooling moments or moments_max")
    map_targets = tuple(map_weights)
    if map_targets:
        trained = _with_head_map(model, map_targets)
        map_side = int(trained.outputs[1].shape[1])
        trained.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0),
                        loss=[caption_loss, *(MAP_LOSSES[name] for name in map_targets)],
                        loss_weights=[1.0, *map_weights.values()],
                        weighted_metrics=[["accuracy"], *([] for _ in map_targets)])
    else:
        trained, map_side = model, None
        model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0), loss=caption_loss,
                      weighted_metrics=["accuracy"])
    train_batches = _Batches(train_set, *datasets.sequences(train_set.captions, vocab, max_words),
                             batch_size, shuffle=True, seed=seed, map_side=map_side, map_targets=map_targets)
    fit_kwargs = {}
    if len(val_set.images):
        fit_kwargs["validation_data"] = _Batches(
            val_set, *datasets.sequences(val_set.captions, vocab, max_words), batch_size, shuffle=False,
            map_side=map_side, map_targets=map_targets)
    _build_training_variables(trained, train_batches[0])
    history = trained.fit(train_batches, epochs=epochs, verbose=verbose, **fit_kwargs)
    if map_targets:
        # the multi-output graph left extra nodes on the captioner's layers, which its .keras
        # file cannot describe: save a fresh copy holding the trained weights instead
        fresh = new_captioner()
        fresh.set_weights(model.get_weights())
        model = fresh
    curves = {k.replace("caption_", "").replace("background_loss", "background_activity")
              .replace("density_loss", "object_density_error"): v for k, v in history.history.items()}

    model.save(out / "captioner.keras")
    vocab.save(out / "vocab.txt")
    summary = {
        "encoder": encoder,
        "weights": describe(weights),
        "input_size": input_size,
        "pooling": pooling,
        "backbone_stride": stride,
        "minimalistic": minimalistic,
        "background_penalty": background_penalty,
        "object_density": object_density,
        "preprocessing": preprocessing_mode(encoder),
        "max_words": int(max_words),
        "vocab_size": len(vocab),
        "training_images": int(len(train_set.images)),
        "epochs": epochs,
        "source": {"dataset": str(dataset)} if dataset else {"scenes": scenes, "seed": seed},
        "history": {k: [round(float(v), 5) for v in vals] for k, vals in curves.items()},
        "keras_backend": keras.backend.backend(),
        "seconds": round(time.time() - started, 1),
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary


def configure(parser) -> None:
    """Arguments of ``explaincam train``."""
    parser.add_argument("--out", required=True, help="training output folder (captioner.keras, vocab.txt, train.json)")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="keras.applications model name")
    parser.add_argument("--weights", default="none", metavar="imagenet|none|PATH",
                        help="initial encoder weights: none (from scratch, default), imagenet (downloads, or "
                             "reads ~/.keras/models/<file>) or a local Keras .h5/.weights.h5 file")
    parser.add_argument("--pooling", default="moments", choices=["moments", "moments_max", "avg", "spatial"],
                        help="encoder head: moments (mean + x/y moments per channel, keeps where things are), "
                             "moments_max (the same, also max-pooled), avg (the seed's global average "
                             "pooling) or spatial (flattened map)")
    parser.add_argument("--backbone-stride", type=int, default=None, choices=[8, 16, 32],
                        help="cut the backbone after its last map at 1/N of the input (default: whole backbone)")
    parser.add_argument("--minimalistic", action="store_true",
                        help="MobileNetV3 without hard-swish and squeeze-excite (fast int8 on XNNPACK)")
    parser.add_argument("--background-penalty", type=float, default=0.0,
                        help="weight of the encoder map's activity outside the objects (generated scenes)")
    parser.add_argument("--object-density", type=float, default=0.0,
                        help="weight of the encoder map's first channels against density maps of the object "
                             "centres, one per size, colour and shape word: the model counts objects rather "
                             "than their area, and each word's evidence sits at its object (generated scenes)")
    parser.add_argument("--scenes", type=int, default=12000, help="generated training scenes")
    parser.add_argument("--seed", type=int, default=1, help="scene stream and initialisation seed")
    parser.add_argument("--dataset", default=None, help="train on a Flickr8k/Flickr30k-style folder instead")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--units", type=int, default=128, help="LSTM and dense units")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--min-word-count", type=int, default=1, help="rarer words are dropped (datasets)")
    parser.add_argument("--validation", type=int, default=500,
                        help="validation scenes (generated scenes); with --dataset, a tenth of the images, "
                             "at most this many")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args) -> int:
    """Train and report where the result went."""
    if args.validation < 1:
        print("error: --validation must be at least 1")
        return 2
    try:
        summary = train(args.out, args.encoder, args.weights, args.scenes, args.seed, args.dataset,
                        args.epochs, args.batch_size, args.input_size, args.pooling,
                        args.embedding_dim, args.units, args.learning_rate, args.min_word_count,
                        validation=args.validation, stride=args.backbone_stride, minimalistic=args.minimalistic,
                        background_penalty=args.background_penalty, object_density=args.object_density,
                        verbose=0 if args.quiet else 1)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    last = {k: v[-1] for k, v in summary["history"].items()}
    print(f"trained {summary['encoder']} in {summary['seconds']:.0f}s: {last}; wrote {args.out}")
    return 0
