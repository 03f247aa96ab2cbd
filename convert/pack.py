"""``explaincam convert``: pack a captioner into a model bundle, its encoder quantized (format in daemon.bundle).

Two inputs:
- a training folder from ``explaincam train`` (``--model DIR``);
- a seed-format model (``--from-seed``): a keras.applications encoder by name with global
  average pooling, and a merge-LSTM decoder ``.h5`` taking ``[features, pre-padded prefix]``
  and returning the next-word softmax, with its ``vocab.txt``.

The bundle gets a full-integer int8 encoder (uint8 input, int8 ops only, calibrated on
generated scenes or the user's images), the decoder weights for the numpy step decoder,
the full-precision sequence-form ``captioner.keras``, the vocabulary, hashes and a report
of what was measured: float vs int8 caption agreement, feature cosine, sizes, latency,
the calibration used, and a health verdict (``convert.health``).

A seed model was trained on images that Keras' ``load_img`` resized with PIL nearest
neighbour, so its bundle records ``input.resize: nearest`` and everything that feeds its
encoder resizes that way (``daemon.captioner.resize_for_encoder``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

import keras

from convert.concepts import bottleneck_layer
from convert.explainer_export import EXPLAINER_FILE, export_in_subprocess, manifest_entry
from convert.feature_stats import CALIBRATION_SEED, new_bundle_feature_stats
from convert.health import health
from convert.memory import release_freed_memory
from convert.model import build_captioner, build_encoder, decoder_weights, load_captioner, preprocessing_mode
from convert.progress import Progress
from convert.quantize import QuantizeError, to_int8_tflite
from convert.weights import WeightsError, describe, is_pretrained, legacy_h5_layers
from daemon.bundle import load_bundle, write_manifest
from daemon.captioner import resize_for_encoder
from daemon.decoder import StepDecoder
from daemon.encoder import TFLiteEncoder
from daemon.imaging import read_rgb
from daemon.scenes import scene_at
from daemon.vocab import Vocabulary

REPORT_SEED = 4343  # scenes the converter's own report is measured on
DEFAULT_CALIBRATION = 100  # int8 calibration images: ranges settle by ~100; EfficientNetV2L takes ~6 s each on 2 cores
SEED_RESIZE = "nearest"  # the seed's Keras load_img(target_size=...) resizes with PIL nearest neighbour


class ConvertError(Exception):
    """The input model cannot be converted; the message says why."""


def default_gradcam_layer(captioner: keras.Model, pretrained: bool = True) -> str:
    """The encoder layer Grad-CAM reads.

    A moments head: its ``moment_map``, the map the features are the global average of,
    which is where Grad-CAM's spatially averaged gradients are exact. Otherwise, with
    ImageNet weights, the backbone's last feature map (Grad-CAM's usual layer). Otherwise,
    from scratch, the first rectified (ReLU) map at 1/8 of the input resolution (the last
    layer if there is none): deep maps of a backbone trained from scratch behind a
    flattened head keep an object's evidence at its place far less often than that map
    (README, "The shipped model and how it was made", has the figures).
    """
    encoder = captioner.get_layer("encoder")
    if "moment_map" in [layer.name for layer in encoder.layers]:
        return "moment_map"
    backbone = encoder.get_layer("backbone")
    if pretrained:
        return backbone.layers[-1].name
    stride_8 = int(backbone.input.shape[1]) // 8
    for layer in backbone.layers:
        rectified = isinstance(layer, keras.layers.ReLU) or getattr(layer, "activation", None) is keras.activations.relu
        if rectified and len(layer.output.shape) == 4 and layer.output.shape[1] == stride_8:
            return layer.name
    return backbone.layers[-1].name


def image_folder_batches(folder: str | Path, size: int, limit: int, resize: str = "area") -> list[np.ndarray]:
    """Up to ``limit`` readable images of a folder, RGB at ``size`` (resized by ``resize``), for calibration."""
    paths = sorted(p for p in Path(folder).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"))
    images = []
    for path in paths:
        try:
            images.append(resize_for_encoder(read_rgb(path), size, resize))
        except ValueError:
            continue
        if len(images) >= limit:
            break
    if not images:
        raise ConvertError(f"no readable images in {folder} for int8 calibration")
    return images


def float_features(encoder: keras.Model, images: list[np.ndarray]) -> np.ndarray:
    """Full-precision encoder features of RGB uint8 images.

    A million input pixels per batch (32 images at 96 px, 4 at 480): a large backbone's
    activations at 32 images of 480 px would take gigabytes more than its conversion.
    """
    height, width = images[0].shape[:2]
    batch_size = max(1, min(32, 2 ** 20 // (height * width)))
    return np.asarray(encoder.predict(np.stack(images).astype(np.float32), batch_size=batch_size, verbose=0))


def measure(bundle_dir: Path, encoder: keras.Model, images: list[np.ndarray],
            references: list[str] | None, progress=None) -> dict:
    """Float vs int8 caption agreement (and exact match when references are known)."""
    bundle = load_bundle(bundle_dir)
    vocab = Vocabulary.load(bundle.file("vocab"), **_special(bundle.manifest))
    decoder = StepDecoder.load(bundle.file("decoder"), vocab.start, vocab.end)
    int8 = TFLiteEncoder(bundle.file("encoder_int8"), threads=2)
    feats = float_features(encoder, images)
    agree = exact_int8 = exact_float = 0
    encode_ms = []
    cosine = []
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        q = int8.encode(image)
        encode_ms.append((time.perf_counter() - t0) * 1e3)
        cap_q = vocab.decode(decoder.greedy(q, bundle.max_length).tokens)
        cap_f = vocab.decode(decoder.greedy(feats[i], bundle.max_length).tokens)
        agree += cap_q == cap_f
        cosine.append(float(q @ feats[i] / (np.linalg.norm(q) * np.linalg.norm(feats[i]) + 1e-9)))
        if references is not None:
            exact_int8 += cap_q == references[i]
            exact_float += cap_f == references[i]
        if progress:
            progress(i + 1, len(images))
    n = len(images)
    report = {
        "images": n,
        "int8_float_agreement": round(agree / n, 4),
        "feature_cosine_mean": round(float(np.mean(cosine)), 4),
        "int8_encoder_ms_median": round(float(np.median(encode_ms)), 2),
    }
    if references is not None:
        report["exact_match_int8"] = round(exact_int8 / n, 4)
        report["exact_match_float"] = round(exact_float / n, 4)
    return report


def _special(manifest: dict) -> dict:
    tokens = manifest["special_tokens"]
    return {"start": tokens["start"], "end": tokens["end"]}


def write_bundle(out: str | Path, captioner: keras.Model, vocab: Vocabulary, *, name: str,
                 max_length: int, encoder_name: str, extra: dict | None = None,
                 calibration: list[np.ndarray], report_images: list[np.ndarray],
                 report_references: list[str] | None, resize: str = "area",
                 calibration_source: str = "generated scenes", verbose: bool = True, explainer: bool = True) -> dict:
    """Quantize, export and hash everything into the bundle folder ``out``; return the report.

    The bundle is assembled in ``out.partial``, which is removed if anything fails (or the
    user interrupts), and renamed to ``out`` at the end. ``explainer``: also export the
    LiteRT explainer graph (``convert.explainer_export``), first and in a process of its
    own: it fails alone (memory, an op without a builtin), the bundle is then written
    without it (the TensorFlow backend explains) and the report's ``explainer`` says why;
    and it runs before quantization, while this process is small (the quantizer leaves
    gigabytes of TensorFlow heap behind that no later step could use).
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        report = _assemble(tmp, captioner, vocab, name=name, max_length=max_length, encoder_name=encoder_name,
                           extra=extra, calibration=calibration, report_images=report_images,
                           report_references=report_references, resize=resize,
                           calibration_source=calibration_source, verbose=verbose, explainer=explainer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


def _assemble(tmp: Path, captioner: keras.Model, vocab: Vocabulary, *, name: str, max_length: int,
              encoder_name: str, extra: dict | None, calibration: list[np.ndarray], report_images: list[np.ndarray],
              report_references: list[str] | None, resize: str, calibration_source: str,
              verbose: bool, explainer: bool) -> dict:
    """Write every bundle file into ``tmp`` (see write_bundle) and return the report."""
    encoder = captioner.get_layer("encoder")
    size = int(encoder.input_shape[1])
    gradcam_layer = default_gradcam_layer(captioner, pretrained=any(
        isinstance(section, dict) and section.get("weights") not in (None, "none") for section in (extra or {}).values()))
    captioner.save(tmp / "captioner.keras")
    graph = _export_explainer(tmp, captioner, gradcam_layer, max_length, verbose) if explainer else None

    started = time.time()
    if verbose:
        print(f"quantizing the encoder to int8 on {len(calibration)} calibration images ...", flush=True)
    calibration_started = []

    def representative():  # called once the encoder is exported: the ETA counts calibration only
        calibration_started.append(time.time())
        calibration_progress = Progress("calibrating", verbose)
        for i, image in enumerate(calibration):
            yield image
            calibration_progress(i + 1, len(calibration))
        calibration_started.append(time.time())

    (tmp / "encoder_int8.tflite").write_bytes(to_int8_tflite(encoder, representative))
    release_freed_memory()  # the quantizer's gigabytes, before the float encoder runs for the report
    quantize_s = time.time() - started
    calibration_s = calibration_started[-1] - calibration_started[0]
    np.savez(tmp / "decoder.npz", **decoder_weights(captioner))
    vocab.save(tmp / "vocab.txt")
    files = {"captioner": "captioner.keras", "encoder_int8": "encoder_int8.tflite",
             "decoder": "decoder.npz", "vocab": "vocab.txt", "report": "report.json"}
    if graph and "error" not in graph:
        files["explainer"] = EXPLAINER_FILE
    manifest = {
        "model_name": name,
        "encoder": encoder_name,
        "input": {"size": size, "color": "RGB", "dtype": "uint8", "range": [0, 255],
                  "resize": resize, "preprocessing": preprocessing_mode(encoder_name),
                  "preprocessing_inside_model": True},
        "special_tokens": {"start": vocab.start_word, "end": vocab.end_word, "pad_id": 0},
        "max_length": int(max_length),
        "vocab_size": len(vocab),
        "feature_dim": int(encoder.output_shape[-1]),
        "gradcam_layer": gradcam_layer,
        "files": files,
        **(extra or {}),
    }
    if graph and "error" not in graph:
        manifest["explainer"] = manifest_entry(graph)
    (tmp / "report.json").write_text("{}")
    write_manifest(tmp, manifest)
    report = measure(tmp, encoder, report_images, report_references, Progress("measuring int8 vs float", verbose))
    report["health"] = health(report)
    report["quantize_seconds"] = round(quantize_s, 1)
    report["calibration"] = {"images": len(calibration), "source": calibration_source, "resize": resize,
                             "seconds": round(calibration_s, 1),
                             "images_per_second": round(len(calibration) / max(calibration_s, 1e-9), 3)}
    report["sizes_bytes"] = {f: (tmp / f).stat().st_size for f in files.values() if f != "report.json"}
    report["encoder_params"] = int(encoder.count_params())
    report["decoder_params"] = int(sum(v.size for v in decoder_weights(captioner).values()))
    report["feature_stats"] = new_bundle_feature_stats(tmp, files, calibration)  # out-of-distribution warning
    if graph:
        report["explainer"] = graph
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_manifest(tmp, manifest)
    if verbose and report["health"]["status"] != "ok":
        print(f"warning: this bundle looks broken: {'; '.join(report['health']['problems'])}", file=sys.stderr)
    return report


def _export_explainer(tmp: Path, captioner: keras.Model, gradcam_layer: str, max_length: int, verbose: bool) -> dict:
    """Export the LiteRT explainer graph of ``tmp/captioner.keras`` into ``tmp``; its entry, or {"error": why}."""
    if verbose:
        print("exporting the explainer graph (explainer_float.tflite) ...", flush=True)
    release_freed_memory()  # the export's process runs while this one waits: keep only what is in use
    graph = export_in_subprocess(tmp / "captioner.keras", tmp / EXPLAINER_FILE, gradcam_layer,
                                 bottleneck_layer(captioner), tokens=max_length + 1)
    if "error" in graph:
        print(f"warning: no explainer graph: {graph['error']}; the bundle explains with the TensorFlow backend; "
              f"add the graph later with `explaincam export-explainer --bundle BUNDLE`", flush=True)
    elif verbose:
        print(f"explainer graph: {graph['bytes'] / 2 ** 20:.0f} MB in {graph['export_seconds']:.0f} s, "
              f"{graph['peak_rss_bytes'] / 2 ** 30:.1f} GB peak RSS", flush=True)
    return graph


def calibration_images(size: int, count: int, image_dir: str | None, resize: str = "area") -> list[np.ndarray]:
    """Calibration images: the user's folder if given, else generated scenes."""
    if image_dir:
        return image_folder_batches(image_dir, size, count, resize)
    return [_resized(scene_at(CALIBRATION_SEED, i).image, size, resize) for i in range(count)]


def _resized(image: np.ndarray, size: int, resize: str = "area") -> np.ndarray:
    return resize_for_encoder(image, size, resize)


def report_set(size: int, count: int, image_dir: str | None,
               resize: str = "area") -> tuple[list[np.ndarray], list[str] | None]:
    """Images (and reference captions when known) the converter's report is measured on."""
    if image_dir:
        return image_folder_batches(image_dir, size, count, resize), None
    scenes = [scene_at(REPORT_SEED, i) for i in range(count)]
    return [_resized(s.image, size, resize) for s in scenes], [s.caption for s in scenes]


def convert_trained(model_dir: str | Path, out: str | Path, name: str | None = None,
                    calibration_count: int = DEFAULT_CALIBRATION, report_count: int = 200,
                    image_dir: str | None = None, verbose: bool = True, explainer: bool = True) -> dict:
    """Make a bundle from an ``explaincam train`` folder."""
    model_dir = Path(model_dir)
    for required in ("captioner.keras", "vocab.txt", "train.json"):
        if not (model_dir / required).is_file():
            raise ConvertError(f"{model_dir} is not a training folder: {required} is missing")
    summary = json.loads((model_dir / "train.json").read_text())
    captioner = load_captioner(model_dir / "captioner.keras")
    vocab = Vocabulary.load(model_dir / "vocab.txt")
    size = int(summary["input_size"])
    images, refs = report_set(size, report_count, image_dir if summary["source"].get("dataset") else None)
    return write_bundle(
        out, captioner, vocab, name=name or Path(out).name, max_length=summary["max_words"],
        encoder_name=summary["encoder"], extra={"training": {k: summary.get(k) for k in (
            "encoder", "weights", "pooling", "backbone_stride", "minimalistic", "background_penalty",
            "object_density", "training_images", "epochs", "source", "keras_backend", "seconds")}},
        calibration=calibration_images(size, calibration_count, image_dir),
        calibration_source=image_dir or "generated scenes",
        report_images=images, report_references=refs, verbose=verbose, explainer=explainer)


def _h5_layer_weights(path: Path) -> tuple[list[tuple[str, list[np.ndarray]]], dict]:
    """(layer name, weights) in order, and the model config, read straight from a Keras .h5.

    Reading the weights with h5py works for files written by Keras 2 (the seed's) and
    Keras 3 alike, where rebuilding the saved graph does not.
    """
    with h5py.File(path, "r") as fh:
        config = json.loads(fh.attrs.get("model_config", "{}") or "{}")
    return legacy_h5_layers(path), config


def _keras_layer_weights(path: Path) -> tuple[list[tuple[str, list[np.ndarray]]], dict]:
    """(layer name, weights) in order, and the model config, of a native .keras model."""
    model = keras.models.load_model(path, compile=False)
    return [(layer.name, layer.get_weights()) for layer in model.layers], {"config": model.get_config()}


def _input_lengths(config: dict) -> list[int]:
    """Last dimension of every input layer in a saved model config."""
    lengths = []
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") == "InputLayer":
            cfg = layer.get("config", {})
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            if shape:
                lengths.append(int(shape[-1]))
    return lengths


def seed_decoder_weights(decoder_path: str | Path, vocab_size: int) -> dict:
    """The pieces of a seed merge-LSTM decoder, found by weight shapes.

    Returns embedding, lstm, feat_dense, merge_dense and out_dense weights plus
    feature_dim and prefix_length (from the input layers of the saved config).
    """
    path = Path(decoder_path)
    if not path.is_file():
        raise ConvertError(f"seed decoder {path} does not exist")
    try:
        layers, config = (_keras_layer_weights if path.suffix == ".keras" else _h5_layer_weights)(path)
    except Exception as exc:  # h5py and keras raise many types for a bad file
        raise ConvertError(f"cannot read seed decoder {path}: {exc}") from None
    embeddings = [w for _, w in layers if len(w) == 1 and w[0].ndim == 2]
    lstms = [w for _, w in layers if len(w) == 3 and w[1].ndim == 2 and w[1].shape[1] == 4 * w[1].shape[0]]
    denses = [w for _, w in layers if len(w) == 2 and w[0].ndim == 2 and w[1].ndim == 1]
    if len(embeddings) != 1 or len(lstms) != 1 or len(denses) != 3:
        raise ConvertError(f"{path}: not a seed merge-LSTM decoder (expected one Embedding, one LSTM and "
                           f"three Dense layers; found {len(embeddings)}, {len(lstms)}, {len(denses)})")
    if embeddings[0][0].shape[0] != vocab_size:
        raise ConvertError(f"{path}: the embedding has {embeddings[0][0].shape[0]} rows but the vocabulary "
                           f"gives {vocab_size} token ids (words + padding)")
    units = lstms[0][1].shape[0]
    out = [d for d in denses if d[0].shape[1] == vocab_size]
    rest = [d for d in denses if d[0].shape[1] != vocab_size]
    merge = [d for d in rest if d[0].shape[0] == units]
    feat = [d for d in rest if d[0].shape[0] != units and d[0].shape[1] == units]
    if len(out) != 1 or len(merge) != 1 or len(feat) != 1:
        raise ConvertError(f"{path}: cannot tell the feature, merge and output Dense layers apart by shape")
    feature_dim = feat[0][0].shape[0]
    prefix = [n for n in _input_lengths(config) if n != feature_dim]
    return {"embedding": embeddings[0], "lstm": lstms[0], "feat_dense": feat[0], "merge_dense": merge[0],
            "out_dense": out[0], "feature_dim": int(feature_dim), "prefix_length": prefix[0] if prefix else None}


def seed_captioner(encoder_name: str, decoder_path: str | Path, vocab: Vocabulary,
                   weights: str | None = None, input_size: int | None = None) -> tuple[keras.Model, int | None]:
    """Rebuild a seed-format model (pooled encoder + merge-LSTM decoder) in sequence form.

    Returns the captioner and the seed's prefix length (None if the file does not say).
    """
    seed = seed_decoder_weights(decoder_path, len(vocab))
    try:
        encoder = build_encoder(encoder_name, input_size or _default_size(encoder_name), weights, pooling="avg")
    except WeightsError as exc:
        raise ConvertError(str(exc)) from None
    if int(encoder.output_shape[-1]) != seed["feature_dim"]:
        raise ConvertError(f"{encoder_name} gives {encoder.output_shape[-1]} features but the decoder "
                           f"expects {seed['feature_dim']}")
    captioner = build_captioner(encoder, len(vocab), seed["embedding"][0].shape[1], seed["lstm"][1].shape[0],
                                merge_units=seed["merge_dense"][0].shape[1])
    for name, key in (("feat_dense", "feat_dense"), ("embedding", "embedding"), ("lstm", "lstm"),
                      ("merge_dense", "merge_dense"), ("logits", "out_dense")):
        captioner.get_layer(name).set_weights(seed[key])
    return captioner, seed["prefix_length"]


def _default_size(encoder_name: str) -> int:
    """The input size keras.applications documents for a family (224 unless larger)."""
    sizes = {"EfficientNetV2L": 480, "EfficientNetV2M": 480, "EfficientNetV2S": 384,
             "InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299, "NASNetLarge": 331}
    return sizes.get(encoder_name, 224)


def convert_seed(encoder_name: str, decoder_path: str | Path, vocab_path: str | Path, out: str | Path,
                 weights: str | None = None, input_size: int | None = None, name: str | None = None,
                 max_length: int | None = None,
                 calibration_count: int = DEFAULT_CALIBRATION, report_count: int = 50, image_dir: str | None = None,
                 allow_random_encoder: bool = False, verbose: bool = True,
                 explainer: bool = True) -> dict:
    """Make a bundle from a seed-format model.

    A seed decoder only captions the features it was trained on, so the encoder needs its
    trained weights (``imagenet`` or a local file); random ones (``none``) are refused
    unless ``allow_random_encoder`` (pipeline tests, timing).
    """
    if not is_pretrained(weights) and not (weights == "none" and allow_random_encoder):
        raise ConvertError("a seed decoder needs the encoder weights it was trained with: give --weights imagenet "
                           "or --weights PATH (a local Keras weights file); --weights none "
                           "--allow-random-encoder builds a random encoder that captions nonsense (for tests)")
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise ConvertError(f"vocabulary {vocab_path} does not exist")
    vocab = Vocabulary.load(vocab_path)
    captioner, max_prefix = seed_captioner(encoder_name, decoder_path, vocab, weights, input_size)
    max_prefix = max_length or max_prefix
    if not max_prefix:
        raise ConvertError("the decoder file does not record its prefix length: give --max-length")
    size = int(captioner.get_layer("encoder").input_shape[1])
    images, _ = report_set(size, report_count, image_dir, SEED_RESIZE)
    return write_bundle(
        out, captioner, vocab, name=name or Path(out).name, max_length=max_prefix - 1,
        encoder_name=encoder_name, extra={"seed": {"decoder": Path(decoder_path).name, "prefix_length": max_prefix,
                                                   "weights": describe(weights)}},
        calibration=calibration_images(size, calibration_count, image_dir, SEED_RESIZE),
        calibration_source=image_dir or "generated scenes", resize=SEED_RESIZE,
        report_images=images, report_references=None, verbose=verbose, explainer=explainer)


def configure(parser) -> None:
    """Arguments of ``explaincam convert``."""
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--name", default=None, help="model name in the manifest (default: folder name)")
    parser.add_argument("--model", help="training folder from `explaincam train`")
    parser.add_argument("--from-seed", action="store_true", help="convert a seed-format model")
    parser.add_argument("--encoder", help="keras.applications encoder name (with --from-seed)")
    parser.add_argument("--decoder", help="seed decoder .h5/.keras (with --from-seed)")
    parser.add_argument("--vocab", help="seed vocab.txt (with --from-seed)")
    parser.add_argument("--weights", default=None, metavar="imagenet|none|PATH",
                        help="encoder weights for --from-seed (required): imagenet (downloads, or reads "
                             "~/.keras/models/<file>), a local Keras .h5/.weights.h5 file, or none (random, "
                             "only with --allow-random-encoder)")
    parser.add_argument("--allow-random-encoder", action="store_true",
                        help="with --weights none: convert a random encoder anyway (pipeline tests, timing)")
    parser.add_argument("--input-size", type=int, default=None, help="encoder input size (with --from-seed)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="seed prefix length (with --from-seed; default: read from the decoder file)")
    parser.add_argument("--images", default=None,
                        help="folder of your own images for int8 calibration (default: generated scenes)")
    parser.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION,
                        help=f"int8 calibration images (default {DEFAULT_CALIBRATION})")
    parser.add_argument("--no-explainer", action="store_true",
                        help="skip the LiteRT explainer graph (add it later with explaincam export-explainer)")
    parser.add_argument("--quiet", action="store_true")


def main(args) -> int:
    """Run the conversion and print the report."""
    try:
        if args.from_seed:
            missing = [f"--{k}" for k in ("encoder", "decoder", "vocab") if not getattr(args, k)]
            if missing:
                raise ConvertError(f"--from-seed needs {', '.join(missing)}")
            report = convert_seed(args.encoder, args.decoder, args.vocab, args.out, args.weights,
                                  args.input_size, args.name, args.max_length, args.calibration,
                                  image_dir=args.images, allow_random_encoder=args.allow_random_encoder,
                                  verbose=not args.quiet, explainer=not args.no_explainer)
        elif args.model:
            report = convert_trained(args.model, args.out, args.name, args.calibration,
                                     image_dir=args.images, verbose=not args.quiet,
                                     explainer=not args.no_explainer)
        else:
            raise ConvertError("give --model DIR (a training folder) or --from-seed")
    except (ConvertError, WeightsError) as exc:
        print(f"error: {exc}")
        return 2
    except QuantizeError as exc:
        print(f"error: the int8 quantization of the encoder failed: {exc}; no bundle was written")
        return 1
    print(json.dumps(report, indent=2))
    print(f"wrote bundle {args.out}")
    return 0
