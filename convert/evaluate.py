"""``explaincam evaluate``: caption metrics of a bundle on a scenes folder or a
Flickr-style folder (``--dataset``), and with ``--explanations`` (scenes) the faithfulness
of every explanation method.

Captions: ``caption_scores`` (pycocoevalcap's BLEU-1..4, ROUGE-L, CIDEr and, with Java,
METEOR, against all reference captions of each image; see convert.captionscore), for
scenes also ``exact_match`` (int8 greedy caption == ground truth) and ``bleu4`` (the
same as ``caption_scores.bleu4``), ``int8_float_agreement`` (int8 vs float-encoder
features, same numpy decoder), ``bundle_health`` (the converter's verdict in
report.json, re-checked with this run's agreement; see convert.health) and counts.

Explanations (methods explain the *ground-truth* caption, teacher-forced, so that word
positions line up with the scene's object records): for every object word (a word in some
object's ``token_indices``),

- ``pointing_game``: share of words whose heatmap peak lies in the union mask of the
  objects the word names;
- ``deletion_auc`` / ``insertion_auc``: area under the word's probability as pixels are
  deleted (replaced by the image's mean colour) or inserted (into a strongly blurred copy)
  in heatmap order, 20 steps; ``random`` is the same with a random pixel order;
  ``deletion_auc_int8`` / ``insertion_auc_int8``: the same curves of the int8 captioner
  (int8 encoder + numpy step decoder), the model that publishes the captions;
- ``agreement_with_int8_occlusion``: per float (gradient) method the mean over words of
  the Pearson correlation of its map with the int8 occlusion map of the same word (``_min``:
  the lowest), so a user sees how well the float twin stands in for the int8 model;
- ``gradient_stability``: per gradient method, for words flagged ``below_resolution``
  (p > 0.9999) and the others, the Pearson of each map with the map of an equivalent
  computation that rounds differently (convert.stability);
- ``randomization_similarity``: mean Spearman rank correlation between each map and the
  map of the same method on the model whose top layers were re-initialised, cascading
  from the top (Adebayo et al., 2018): the decoder head, then the encoder head, then the
  backbone's last resolution stage, then the backbone down to the Grad-CAM layer (every
  layer between the explained map and the words). The figure is the last stage's;
  ``randomization_cascade`` has every stage. Low means the maps depend on what the model
  learned. The int8 methods (occlusion, RISE) explain an int8 quantization of each stage's
  randomized model (calibrated on 16 scenes), as the converter quantizes the trained one; at
  the decoder stage the encoder is still the trained one, so they run the bundle's own int8 encoder.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from convert import faithfulness as ff
from convert.stability import StabilityTotals
from convert.captionscore import coco_scores
from convert.datasets import IMAGE_FOLDERS, read_flickr_captions
from convert.health import bundle_health
from convert.progress import Progress
from convert.scenes import read_scenes
from daemon.bundle import BundleError
from daemon.captioner import Captioner
from daemon.explain.backends import BackendError
from daemon.explain.explainer import Explainer
from daemon.explain.perturbation import Int8Scorer
from daemon.explain.targets import teacher_tokens
from daemon.explain_settings import BACKEND_CHOICES, INT8_METHODS, MAP_METHODS, ExplainOptions
from daemon.imaging import read_rgb
from daemon.scenes import COLOURS, PLURALS, SHAPES, objects_mask

DELETION_STEPS = 20
RANDOMIZED_CALIBRATION = 16  # calibration scenes of each int8 quantization of the randomized model
ACE_WORDS = {*COLOURS, *SHAPES, *PLURALS.values()}  # ace_removal_win_rate: the objects' colour and shape words
DECODER_HEAD = ("logits", "merge_dense", "lstm", "embedding", "feat_dense")


def _glorot(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Glorot-uniform values (Keras' default kernel initialiser) for a kernel of this shape."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def randomization_stages(captioner, gradcam_layer: str) -> list[tuple[str, list]]:
    """The cascade of the randomization test: (stage name, its layers with weights), top first."""
    encoder = captioner.get_layer("encoder")
    backbone = encoder.get_layer("backbone")
    weighted = [layer for layer in backbone.layers if layer.weights]
    last_stage = tuple(backbone.output.shape[1:3])
    top = [layer for layer in weighted if tuple(layer.output.shape[1:3]) == last_stage]
    names = [layer.name for layer in backbone.layers]
    # a Grad-CAM layer in the encoder head has the whole backbone below it: nothing more to add
    start = names.index(gradcam_layer) if gradcam_layer in names else len(names)
    above = [layer for layer in weighted if names.index(layer.name) > start and layer not in top]
    stages = [("decoder", [captioner.get_layer(name) for name in DECODER_HEAD]),
              # fixed operations of the head (a non-trainable pooling kernel) are not learned: kept
              ("encoder_head", [layer for layer in reversed(encoder.layers[encoder.layers.index(backbone) + 1:])
                                if layer.trainable_weights]),
              ("backbone_top", list(reversed(top))),
              ("backbone_to_gradcam_layer", list(reversed(above)))]
    return [(name, layers) for name, layers in stages if layers]


def reinitialise(layers: list, rng: np.random.Generator) -> list[str]:
    """Re-initialise layers in place: kernels Glorot-uniform, biases zero, batch-norm kept."""
    from keras import layers as keras_layers  # only the randomization test needs Keras (evaluate runs on LiteRT)

    names = []
    for layer in layers:
        if isinstance(layer, keras_layers.BatchNormalization):
            continue
        layer.set_weights([_glorot(w.shape, rng) if w.ndim >= 2 else np.zeros_like(w) for w in layer.get_weights()])
        names.append(layer.name)
    return names


def randomization_test(explainer, scenes: list, methods: list[str], seed: int = 0, progress=None) -> dict:
    """Spearman similarity of the trained maps to the maps after each cascade stage.

    The re-initialised copy runs on the TensorFlow backend whichever backend made the
    trained maps (re-initialising needs the Keras weights). ``scenes`` holds (image, tokens, words, Explanation of the trained model). Returns
    ``{"stages": {stage: {method: mean}}, "layers": {stage: [names]}}``.
    """
    # only the randomization test needs TensorFlow (evaluate runs on LiteRT)
    from convert.model import load_captioner
    from daemon.explain.backends.tensorflow import TensorFlowBackend

    copy = load_captioner(explainer.bundle.file("captioner"))
    backend = TensorFlowBackend(explainer.bundle, gradcam_layer=explainer.layer, captioner=copy,
                                batch_size=explainer.options.batch_size)
    randomized = Explainer(explainer.bundle, explainer.options, backend=backend)
    rng = np.random.default_rng(seed)
    stages = randomization_stages(copy, explainer.layer)
    result = {"stages": {}, "layers": {}}
    for s, (stage, layers) in enumerate(stages):
        result["layers"][stage] = reinitialise(layers, rng)  # cumulative: earlier stages stay random
        if any(m in INT8_METHODS for m in methods):  # the int8 methods explain a quantized copy of it
            randomized._int8 = quantized_scorer(copy, explainer, requantize=stage != "decoder")
        similarity = defaultdict(list)
        for n, (image, tokens, words, trained) in enumerate(scenes):
            after = randomized.explain(image, tokens, words, methods)
            for method in methods:
                for k in range(len(words)):
                    similarity[method].append(ff.spearman(trained.maps[method][k], after.maps[method][k]))
            if progress:
                progress(s * len(scenes) + n + 1, len(stages) * len(scenes))
        result["stages"][stage] = {m: round(float(np.mean(similarity[m])), 4) if similarity[m] else None
                                   for m in methods}
    return result


def quantized_scorer(captioner, explainer, requantize: bool = True) -> Int8Scorer:
    """An Int8Scorer of a (randomized) Keras captioner: its decoder weights for the step decoder, and its
    encoder quantized to int8 as the converter does, calibrated on RANDOMIZED_CALIBRATION scenes; without
    ``requantize`` (only the decoder was re-initialised) the bundle's own int8 encoder, the one that runs."""
    import tempfile

    from convert.model import decoder_weights
    from convert.pack import calibration_images
    from convert.quantize import to_int8_tflite
    from daemon.decoder import StepDecoder

    decoder = StepDecoder(decoder_weights(captioner), explainer.vocab.start, explainer.vocab.end)
    if not requantize:
        return Int8Scorer(explainer.bundle.file("encoder_int8"), decoder, explainer.threads,
                          explainer.options.batch_size)
    calibration = calibration_images(explainer.size, RANDOMIZED_CALIBRATION, None, explainer.bundle.resize)
    flatbuffer = to_int8_tflite(captioner.get_layer("encoder"), lambda: iter(calibration))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder_int8.tflite"
        path.write_bytes(flatbuffer)
        return Int8Scorer(path, decoder, explainer.threads, explainer.options.batch_size)


class _Totals:
    """Running sums of the explanation metrics."""

    def __init__(self, methods: list[str]):
        self.methods = methods
        self.hits = Counter()
        self.words = 0
        self.deletion, self.insertion = defaultdict(list), defaultdict(list)
        self.deletion_int8, self.insertion_int8 = defaultdict(list), defaultdict(list)
        self.agreement = defaultdict(list)  # float method -> Pearson of its map with the int8 occlusion map
        self.explain_ms = defaultdict(list)
        self.stability = None  # StabilityTotals of the gradient heatmap methods

    def report(self) -> dict:
        """The metrics as JSON-ready numbers (means over words; explain times per frame)."""
        def mean(values):
            return round(float(np.mean(values)), 4) if values else None

        keys = self.methods + ["random"]
        return {
            "pointing_game": {m: round(self.hits[m] / self.words, 4) if self.words else None for m in self.methods},
            "deletion_auc": {m: mean(self.deletion[m]) for m in keys},
            "insertion_auc": {m: mean(self.insertion[m]) for m in keys},
            "deletion_auc_int8": {m: mean(self.deletion_int8[m]) for m in keys},
            "insertion_auc_int8": {m: mean(self.insertion_int8[m]) for m in keys},
            "agreement_with_int8_occlusion": {m: mean(v) for m, v in self.agreement.items()},
            "agreement_with_int8_occlusion_min": {m: round(float(np.min(v)), 4) for m, v in self.agreement.items()},
            "gradient_stability": self.stability.report() if self.stability else {},
            "explain_ms_per_frame": {m: round(float(np.mean(self.explain_ms[m])), 1) for m in self.methods},
        }


def _word_score(probabilities, index: int):
    """Callback: probability of word ``index`` for a batch of images, from all words' ``probabilities``."""
    return lambda images: probabilities(images)[:, index]


def explain_scene(explainer, image: np.ndarray, tokens: list[int], objects: list, totals: _Totals,
                  rng: np.random.Generator):
    """Add one scene's pointing and deletion/insertion results to ``totals``.

    Returns (object word indices, the Explanation), or None when no word names an object.
    """
    words = sorted({i for obj in objects for i in obj["token_indices"] if i < len(tokens)})
    if not words:
        return None
    x = explainer.prepare(image)
    explanation = explainer.explain(image, tokens, words, totals.methods)
    for method in totals.methods:
        totals.explain_ms[method].append(explanation.timings_ms[f"{method}_ms"])
    if totals.stability is not None:
        totals.stability.add(image, tokens, words, explanation)
    int8 = explainer.int8_scorer()
    teacher = teacher_tokens(explainer.vocab.start, tokens)
    models = (("", lambda images: np.exp(explainer.word_logprobs(images, tokens))),
              ("_int8", lambda images: np.exp(int8.word_logprobs(images, teacher))))
    # the random ordering does not depend on the word: one series scores every word at once
    order = ff.random_order(x.shape[0] * x.shape[1], rng)
    for curve, key in ((ff.deletion_curve, "deletion"), (ff.insertion_curve, "insertion")):
        for suffix, probabilities in models:
            scores = curve(probabilities, x, order, DELETION_STEPS)
            for i in words:
                getattr(totals, key + suffix)["random"].append(ff.auc(scores[:, i]))
    for k, i in enumerate(words):
        mask = objects_mask(objects, i, x.shape[:2])
        totals.words += 1
        for method in totals.methods:
            heat = explanation.maps[method][k]
            totals.hits[method] += ff.pointing_hit(explanation.peaks[method][k], mask)
            ranked = ff.importance_order(heat, rng)
            for suffix, probabilities in models:
                score = _word_score(probabilities, i)
                getattr(totals, "deletion" + suffix)[method].append(
                    ff.auc(ff.deletion_curve(score, x, ranked, DELETION_STEPS)))
                getattr(totals, "insertion" + suffix)[method].append(
                    ff.auc(ff.insertion_curve(score, x, ranked, DELETION_STEPS)))
            if "occlusion" in totals.methods and method not in INT8_METHODS:
                totals.agreement[method].append(ff.pearson(heat, explanation.maps["occlusion"][k]))
    return words, explanation


def evaluate(bundle_path: str | Path, scenes_dir: str | Path, limit: int | None = None,
             explanations: bool = False, methods: list[str] | None = None,
             randomization_limit: int | None = None, options: ExplainOptions | None = None,
             seed: int = 0, gradcam_layer: str | None = None, progress=None, backend: str = "auto") -> dict:
    """All metrics of a bundle on a scenes folder, as a JSON-ready dict; explanations on ``backend``."""
    records = read_scenes(scenes_dir)[:limit] if limit else read_scenes(scenes_dir)
    captioner = Captioner.from_path(bundle_path, threads=2)
    explainer = Explainer(captioner.bundle, options, gradcam_layer, backend)
    if explainer.backend is None:  # the float model's figures (and the gradient methods) need one
        raise BackendError(explainer.backend_problem)
    methods = list(methods or MAP_METHODS)
    kept = []  # scenes for the randomization test
    totals = _Totals(methods)
    totals.stability = StabilityTotals(explainer, [m for m in methods if m not in INT8_METHODS])
    rng = np.random.default_rng(seed)
    references, hypotheses = [], []
    exact = exact_float = agree = skipped = 0
    # ACE (daemon.explain.ace): removal test of each object colour/shape word's top concept
    ace_wins: list[bool] = []
    concepts = explainer.resources("ace") if explanations and explainer.bundle.has("concepts") else None
    for n, record in enumerate(records):
        image = captioner.resize(read_rgb(record["path"]))
        result = captioner.caption(image)
        float_tokens = explainer.float_caption(image)
        truth = record["caption"].split()
        references.append(truth)
        hypotheses.append(result.words)
        exact += result.words == truth
        exact_float += explainer.vocab.decode(float_tokens).split() == truth
        agree += float_tokens == result.tokens
        if explanations:
            tokens = explainer.vocab.encode(record["caption"])
            if len(tokens) != len(truth):  # a word outside the vocabulary: positions would not line up
                skipped += 1
            else:
                explained = explain_scene(explainer, image, tokens, record["objects"], totals, rng)
                if concepts is not None:
                    words = sorted({i for obj in record["objects"] for i in obj["token_indices"]
                                    if i < len(truth) and truth[i] in ACE_WORDS})
                    ace_wins += concepts.word_removal_wins(image, tokens, words, seed=seed + n)
                if explained and (randomization_limit is None or len(kept) < randomization_limit):
                    kept.append((image, tokens, *explained))
        if progress:
            progress(n + 1, len(records))
    count = len(records)
    report = {
        "bundle": str(bundle_path), "scenes": str(scenes_dir),
        "exact_match": round(exact / count, 4) if count else None,
        "exact_match_float": round(exact_float / count, 4) if count else None,
        "int8_float_agreement": round(agree / count, 4) if count else None,
        "counts": {"scenes": count},
    }
    if count:
        report["caption_scores"] = coco_scores({str(i): [" ".join(r)] for i, r in enumerate(references)},
                                               {str(i): " ".join(h) for i, h in enumerate(hypotheses)})
        report["bleu4"] = report["caption_scores"]["bleu4"]
        report["bundle_health"] = bundle_health(captioner.bundle, report["int8_float_agreement"])
    if explanations:
        report.update(totals.report())
        cascade = randomization_test(explainer, kept, methods, seed, Progress("randomization test", bool(progress)))
        last = list(cascade["stages"].values())[-1]
        known = [v for v in last.values() if v is not None]
        report["randomization_similarity"] = {**last, "mean": round(float(np.mean(known)), 4) if known else None}
        report["randomization_cascade"] = cascade["stages"]
        report["ace_removal_win_rate"] = round(float(np.mean(ace_wins)), 4) if ace_wins else None
        report["counts"].update(object_words=totals.words, skipped_scenes=skipped, randomization_scenes=len(kept),
                                ace_words=len(ace_wins))
        report["settings"] = {"backend": explainer.backend.name, "gradcam_layer": explainer.layer, "deletion_steps": DELETION_STEPS,
                              "deletion_substrate": "mean colour", "insertion_substrate": "gaussian blur, sigma 10% of side",
                              "randomized_layers": cascade["layers"], **vars(explainer.options)}
    return report


def evaluate_dataset(bundle_path: str | Path, folder: str | Path, limit: int | None = None,
                     progress=None) -> dict:
    """Caption scores of a bundle on a Flickr8k/Flickr30k-style folder, against all references."""
    folder = Path(folder)
    by_image = read_flickr_captions(folder)
    image_dir = next((folder / d for d in IMAGE_FOLDERS if (folder / d).is_dir()), folder)
    names = sorted(by_image)[:limit] if limit else sorted(by_image)
    captioner = Captioner.from_path(bundle_path, threads=2)
    explainer = Explainer(captioner.bundle)
    hypotheses, agree = {}, 0
    for n, name in enumerate(names):
        image = captioner.resize(read_rgb(image_dir / name))
        result = captioner.caption(image)
        hypotheses[name] = result.caption
        agree += explainer.float_caption(image) == result.tokens
        if progress:
            progress(n + 1, len(names))
    agreement = round(agree / len(names), 4) if names else None
    return {"bundle": str(bundle_path), "dataset": str(folder),
            "caption_scores": coco_scores({name: by_image[name] for name in names}, hypotheses),
            "int8_float_agreement": agreement,
            "bundle_health": bundle_health(captioner.bundle, agreement),
            "counts": {"images": len(names), "references": sum(len(by_image[name]) for name in names)},
            "examples": [{"image": name, "caption": hypotheses[name], "references": by_image[name]}
                         for name in names[:5]]}


def configure(parser) -> None:
    """Arguments of ``explaincam evaluate``."""
    defaults = ExplainOptions()
    parser.add_argument("--bundle", required=True, help="model bundle folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenes", help="folder written by `explaincam scenes`")
    source.add_argument("--dataset", help="Flickr8k/Flickr30k-style folder (captions.txt, Flickr8k.token.txt or "
                                          "results.csv + images): caption scores against all references")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N scenes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--explanations", action="store_true",
                        help="also measure the explanations (pointing game, deletion/insertion, randomization)")
    parser.add_argument("--methods", nargs="+", choices=list(MAP_METHODS), default=list(MAP_METHODS),
                        metavar="METHOD", help="heatmap methods to measure (default: all; ACE is measured by its "
                                               "removal test when the bundle has a concept bank)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="what runs the float model (default auto: LiteRT when the bundle has its explainer "
                             "graph, else TensorFlow)")
    parser.add_argument("--randomization-limit", type=int, default=None,
                        help="run the randomization test on the first N scenes only (default: all)")
    parser.add_argument("--smoothgrad-samples", type=int, default=defaults.smoothgrad_samples)
    parser.add_argument("--ig-steps", type=int, default=defaults.ig_steps)
    parser.add_argument("--occlusion-steps", type=int, default=defaults.occlusion_steps)
    parser.add_argument("--rise-masks", type=int, default=defaults.rise_masks)
    parser.add_argument("--seed", type=int, default=0, help="seed of random orderings and re-initialised weights")
    parser.add_argument("--gradcam-layer", default=None,
                        help="backbone layer for gradcam/gradcampp (default: the bundle manifest's)")


def _print_table(report: dict) -> None:
    """A readable version of the report."""
    scores = report.get("caption_scores", {})
    health = report.get("bundle_health", {})
    if "scenes" in report["counts"]:
        print(f"scenes: {report['counts']['scenes']}  exact match: {report['exact_match']}  "
              f"int8/float agreement: {report['int8_float_agreement']}")
    else:
        print(f"images: {report['counts']['images']} ({report['counts']['references']} references)  "
              f"int8/float agreement: {report['int8_float_agreement']}")
    print("  ".join(f"{k}: {v}" for k, v in scores.items() if k != "notes"))
    if health.get("status") == "broken":
        print(f"WARNING: the bundle looks broken: {'; '.join(health['problems'])}")
    if "pointing_game" not in report:
        return
    print(f"object words: {report['counts']['object_words']}")
    print(f"{'method':<22}{'pointing':>9}{'deletion':>10}{'insertion':>10}{'random sim':>11}{'ms/frame':>10}")
    for m in report["pointing_game"]:
        print(f"{m:<22}{report['pointing_game'][m]:>9}{report['deletion_auc'][m]:>10}{report['insertion_auc'][m]:>10}"
              f"{str(report['randomization_similarity'][m]):>11}{report['explain_ms_per_frame'][m]:>10}")
    print(f"{'random order':<22}{'':>9}{report['deletion_auc']['random']:>10}{report['insertion_auc']['random']:>10}")
    print("on the int8 model (deletion / insertion AUC): " + "  ".join(
        f"{m} {report['deletion_auc_int8'][m]} / {report['insertion_auc_int8'][m]}" for m in report["deletion_auc_int8"]))
    if report["agreement_with_int8_occlusion"]:
        print("agreement with the int8 occlusion map (mean / min Pearson per word): " + "  ".join(
            f"{m} {v} / {report['agreement_with_int8_occlusion_min'][m]}"
            for m, v in report["agreement_with_int8_occlusion"].items()))
    for m, split in report["gradient_stability"].items():
        print(f"stability of {m} under an equivalent computation (min Pearson, share >= 0.99): " + "  ".join(
            f"{flag} ({v['words']} words) {v.get('min_pearson')}, {v.get('share_stable')}" for flag, v in split.items()))
    print(f"randomization similarity, mean: {report['randomization_similarity']['mean']}; by cascade stage:")
    for stage, values in report["randomization_cascade"].items():
        print(f"  {stage:<28}" + "  ".join(f"{m} {v}" for m, v in values.items()))
    print(f"ACE removal win rate: {report['ace_removal_win_rate']} ({report['counts']['ace_words']} words)")


def main(args) -> int:
    """Evaluate and print the report."""
    if args.dataset and args.explanations:
        print("error: --explanations needs --scenes (object masks); a dataset gets caption scores", file=sys.stderr)
        return 2
    if args.scenes and not Path(args.scenes, "captions.jsonl").is_file():
        print(f"error: {args.scenes} is not a scenes folder (no captions.jsonl); "
              "make one with `explaincam scenes --out DIR`", file=sys.stderr)
        return 2
    started = time.monotonic()
    options = ExplainOptions(smoothgrad_samples=args.smoothgrad_samples, ig_steps=args.ig_steps, seed=args.seed,
                             occlusion_steps=args.occlusion_steps, rise_masks=args.rise_masks)
    try:
        if args.dataset:
            report = evaluate_dataset(args.bundle, args.dataset, args.limit, Progress("evaluating"))
        else:
            report = evaluate(args.bundle, args.scenes, args.limit, args.explanations, args.methods,
                              args.randomization_limit, options, args.seed, args.gradcam_layer,
                              Progress("evaluating"), args.backend)
    except (BundleError, BackendError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0
