"""``explaincam concepts``: discover a bundle's ACE concepts and write its concept bank.

ACE (Ghorbani et al., 2019), after the reference implementation (tensorflow/tcav ``ace``):

1. every discovery image is cut into multi-resolution SLIC superpixels (compactness 20;
   15 and 50 segments by default, see ``daemon.explain.segments.N_SEGMENTS``); each segment is
   put on the average image value in a square box around it and resized to the encoder
   input (``daemon.explain.segments.extract_patch``);
2. each patch is embedded by the bottleneck layer's activations, averaged over space;
3. k-means groups the embeddings; a cluster whose members come from fewer than
   ``--min-images`` images is dropped; of the others the ``--members`` patches nearest the
   centre are the concept's exemplars, and the 95th percentile of the members' distances
   is the radius beyond which a frame's segment gets no concept;
4. a CAV per concept: a linear classifier (SGD, hinge loss, as TCAV) separating the
   exemplars from a random set of patches, once per random set; the stored CAV is the
   renormalised mean of those unit vectors;
5. per (concept, frequent caption word): the TCAV score, the share of the discovery images
   whose caption holds the word where the directional derivative of the word's
   teacher-forced log-probability along the CAV is positive, with a two-sided t-test of the
   scores over the random sets against those of random-vs-random CAVs; and the word's lift
   given the concept, which ranks concepts per frame (see ``daemon.explain.ace``).

One bank serves every word of the vocabulary (ACE discovers per class), hence more clusters
than ACE's 25 and fewer exemplars than its 40: a colour-and-shape kind of object is
1/20 of the objects.

The bank (``concepts.npz``, format in ``daemon.explain.concept_bank``) and a gallery
(``concepts.png``) go into the bundle, named in the manifest and hashed. When the
discovery images are generated scenes (or a scenes folder), each exemplar records which
object (colour, shape) covers over half of it, or "background"; that is what the concept
labels and the purity check use.

The bottleneck is, unless ``--layer`` says otherwise, the encoder's reduced map
(``spatial_reduce``) where the head has one, else the last layer of the backbone: the
most semantic map, as ACE and TCAV use late layers. The reduced map is the one the decoder
reads, position by position, and in a model trained with ``--object-density`` its first
channels are the object words themselves. With such a model, removing a word's top
concept beats removing random segments more often with the bank at the reduced map than at
the backbone's last layer, whose concepts more often cover only part of an object (README,
"Concepts (ACE)", has the figures).
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import ttest_ind
from sklearn.cluster import KMeans
from sklearn.linear_model import SGDClassifier

from convert.model import load_captioner
from convert.progress import Progress
from convert.scenes import read_scenes
from daemon.bundle import BundleError, load_bundle, write_manifest
from daemon.explain.concept_bank import BACKGROUND, ConceptBank, embed, provenance_label, word_gradients
from daemon.explain.backends.tensorflow import TensorFlowBackend, default_bottleneck_layer
from daemon.explain.explainer import Explainer
from daemon.explain.segments import N_SEGMENTS, extract_patch, segment, thumbnail
from daemon.explain.targets import teacher_tokens
from daemon.files import write_atomically
from daemon.imaging import encode_png, read_rgb
from daemon.scenes import scene_at

DEFAULT_SEED = 5050  # scene stream of the discovery set (training uses 1, tests others)
RANDOM_SETS = 10  # random counterparts per concept (ACE uses 20-50; 10 keeps it minutes on 2 cores)
SIGNIFICANCE = 0.01  # p-value under which a concept is significant for a word (ACE's threshold)


@dataclass
class DiscoveryImage:
    """One discovery image at model input size, its caption tokens and (scenes only) its objects."""

    image: np.ndarray  # (S, S, 3) uint8 RGB
    tokens: list[int]
    objects: list | None = None  # SceneObject or their JSON records


def object_masks(objects: list, shape: tuple[int, int]) -> list[tuple[str, str, np.ndarray]]:
    """(colour, shape, mask) of each scene object (SceneObject or JSON record)."""
    out = []
    for obj in objects:
        rec = obj if isinstance(obj, dict) else {"colour": obj.colour, "shape": obj.shape, "polygon": obj.polygon}
        mask = np.zeros(shape, np.uint8)
        cv2.fillPoly(mask, [np.asarray(rec["polygon"], np.int32)], 1)
        out.append((rec["colour"], rec["shape"], mask.astype(bool)))
    return out


def provenance(mask: np.ndarray, objects: list[tuple[str, str, np.ndarray]]) -> tuple[str, str]:
    """(colour, shape) of the object covering most of a segment when it covers over half of it, else background."""
    area = max(int(mask.sum()), 1)
    best, share = None, 0.0
    for colour, shape, obj in objects:
        s = int((mask & obj).sum()) / area
        if s > share:
            best, share = (colour, shape), s
    return best if best is not None and share > 0.5 else (BACKGROUND, BACKGROUND)


def scenes_discovery(count: int, seed: int, vocab, size: int) -> list[DiscoveryImage]:
    """Generated scenes ``0..count-1`` of the stream ``seed`` with their true captions and objects."""
    items = []
    for i in range(count):
        scene = scene_at(seed, i)
        if scene.image.shape[:2] != (size, size):
            raise SystemExit(f"error: scenes are {scene.image.shape[0]} px, the bundle takes {size} px")
        items.append(DiscoveryImage(scene.image, vocab.encode(scene.caption), scene.objects))
    return items


def folder_discovery(folder: str | Path, explainer) -> list[DiscoveryImage]:
    """The images of a folder; captions (and objects) from its captions.jsonl when it is a scenes folder,
    else the float model's own captions."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder")
    if (folder / "captions.jsonl").is_file():
        return [DiscoveryImage(explainer.prepare(read_rgb(r["path"])).astype(np.uint8),
                               explainer.vocab.encode(r["caption"]), r["objects"])
                for r in read_scenes(folder)]
    items = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")):
        image = explainer.prepare(read_rgb(path)).astype(np.uint8)
        items.append(DiscoveryImage(image, explainer.float_caption(image)))
    if not items:
        raise SystemExit(f"error: {folder} holds no images")
    return items


def train_cav(positives: np.ndarray, negatives: np.ndarray, seed: int) -> np.ndarray:
    """Unit CAV: the normal of a linear classifier (SGD, as TCAV) from negatives towards positives."""
    x = np.concatenate([positives, negatives])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed).fit(x, y)
    cav = clf.coef_[0]
    return cav / max(np.linalg.norm(cav), 1e-12)


def tcav_scores(derivative_grads: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """Share of rows whose gradient has a positive dot product with each CAV: (rows, C) x (R, C) -> (R,)."""
    return (derivative_grads @ cavs.T > 0).mean(axis=0)


def t_test(scores: np.ndarray, random_scores: np.ndarray) -> float:
    """Two-sided t-test p-value of concept vs random TCAV scores (both constant: 1.0 if equal, else 0.0)."""
    if np.ptp(scores) == 0 and np.ptp(random_scores) == 0:
        return 1.0 if scores[0] == random_scores[0] else 0.0
    with warnings.catch_warnings():  # nearly constant scores: scipy warns of precision loss, p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(scores, random_scores).pvalue)


@dataclass
class Segments:
    """Every discovery segment: pooled activations, image, thumbnail and provenance."""

    acts: np.ndarray  # (N, C)
    image: np.ndarray  # (N,) index of the discovery image
    thumbs: np.ndarray  # (N, THUMB, THUMB, 3) uint8
    colour: np.ndarray  # (N,) provenance: object colour, "background", or "" (no ground truth)
    shape: np.ndarray  # (N,)


def discover_segments(backend, items: list[DiscoveryImage], n_segments, progress) -> Segments:
    """Segment every discovery image, make the ACE patches and embed them at the backend's bottleneck."""
    size = items[0].image.shape[0]
    acts, image, thumbs, colour, shape = [], [], [], [], []
    for n, item in enumerate(items):
        masks = segment(item.image, n_segments)
        patches = np.stack([extract_patch(item.image, m, size) for m in masks])
        acts.append(embed(backend, patches))
        image += [n] * len(masks)
        thumbs += [thumbnail(p) for p in patches]
        objects = object_masks(item.objects, item.image.shape[:2]) if item.objects is not None else None
        for c, s in (provenance(m, objects) if objects is not None else ("", "") for m in masks):
            colour.append(c)
            shape.append(s)
        progress(n + 1, len(items))
    return Segments(np.concatenate(acts), np.array(image), np.array(thumbs), np.array(colour), np.array(shape))


def association(concept_images: list[set], captions: list[set], words: list[int]) -> np.ndarray:
    """Lift of each word given each concept: P(word in caption | concept in image) / P(word in caption).

    (K, W); add-one smoothed, so a concept seen in few images stays near 1.
    """
    n = len(captions)
    lift = np.ones((len(concept_images), len(words)), np.float32)
    for w, t in enumerate(words):
        with_word = {i for i, caption in enumerate(captions) if t in caption}
        base = len(with_word) / n
        for k, images in enumerate(concept_images):
            lift[k, w] = (len(images & with_word) + base) / (len(images) + 1) / base
    return lift


def build_bank(backend, vocab, items: list[DiscoveryImage], clusters: int = 60, members: int = 20,
               min_images: int = 10, random_sets: int = RANDOM_SETS, seed: int = 0, batch_size: int = 32,
               n_segments=N_SEGMENTS, source: str = "", log=None) -> ConceptBank:
    """Discover concepts in ``items`` at the backend's bottleneck layer and score them for words."""
    verbose, log = log is not None, log or (lambda msg: None)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()

    # 1-2: segments -> patches -> pooled bottleneck activations
    seg = discover_segments(backend, items, n_segments, Progress("segments", verbose))
    log(f"{len(seg.acts)} segments from {len(items)} images, {seg.acts.shape[1]} channels at {backend.bottleneck_layer} "
        f"({time.perf_counter() - started:.0f} s)")

    # 3: k-means; keep concepts seen in enough images; exemplars nearest the centre
    started = time.perf_counter()
    km = KMeans(n_clusters=min(clusters, len(seg.acts)), n_init=2, random_state=seed).fit(seg.acts)
    distance = np.linalg.norm(seg.acts - km.cluster_centers_[km.labels_], axis=1)
    kept = []  # (cluster, exemplar indices, its images, radius)
    for c in range(km.n_clusters):
        idx = np.flatnonzero(km.labels_ == c)
        images = set(seg.image[idx].tolist())
        if len(images) >= min_images and len(idx) >= members:
            kept.append((c, idx[np.argsort(distance[idx])[:members]], images, float(np.percentile(distance[idx], 95))))
    kept.sort(key=lambda t: -len(t[2]))
    log(f"{len(kept)} of {km.n_clusters} clusters kept as concepts (seen in >= {min_images} images; "
        f"{time.perf_counter() - started:.0f} s)")
    if not kept:
        raise SystemExit("error: no concept is seen in enough images; use more images or a lower --min-images")
    exemplars = [ex for _, ex, _, _ in kept]

    # 4: CAVs, concept vs each random set and random set 0 vs each other random set
    pools = [rng.choice(len(seg.acts), members, replace=False) for _ in range(random_sets + 1)]
    concept_cavs = np.array([[train_cav(seg.acts[ex], seg.acts[pools[r]], seed + r)
                              for r in range(1, random_sets + 1)] for ex in exemplars])  # (K, R, C)
    random_cavs = np.array([train_cav(seg.acts[pools[0]], seg.acts[pools[r]], seed + r)
                            for r in range(1, random_sets + 1)])

    # 5: directional derivatives of each frequent word's log-prob, one row per (image, word)
    started = time.perf_counter()
    special = {vocab.start, vocab.end}
    captions = [set(item.tokens) - special for item in items]
    words = sorted((t for t in set().union(*captions) if sum(t in c for c in captions) >= min_images),
                   key=lambda t: vocab.words[t - 1])
    rows = [(n, t) for t in words for n, caption in enumerate(captions) if t in caption]
    grads = np.zeros((len(rows), seg.acts.shape[1]), np.float32)
    progress = Progress("gradients", verbose)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        g = word_gradients(backend, np.stack([items[n].image for n, _ in chunk]).astype(np.float32),
                           [teacher_tokens(vocab.start, items[n].tokens) for n, _ in chunk],
                           [items[n].tokens.index(t) for n, t in chunk])
        grads[s:s + len(chunk)] = g.mean(axis=(1, 2))  # channel means, as ACE's CAVs live on pooled activations
        progress(s + len(chunk), len(rows))
    row_word = np.array([t for _, t in rows])
    tcav = np.zeros((len(kept), len(words)), np.float32)
    tcav_p = np.ones_like(tcav)
    random_tcav = np.zeros(len(words), np.float32)
    for w, t in enumerate(words):
        g = grads[row_word == t]
        random_scores = tcav_scores(g, random_cavs)
        random_tcav[w] = random_scores.mean()
        for k in range(len(kept)):
            scores = tcav_scores(g, concept_cavs[k])
            tcav[k, w] = scores.mean()
            tcav_p[k, w] = t_test(scores, random_scores)
    log(f"TCAV of {len(kept)} concepts for {len(words)} words from {len(rows)} derivatives "
        f"({time.perf_counter() - started:.0f} s)")

    cavs = concept_cavs.mean(axis=1)
    cavs /= np.maximum(np.linalg.norm(cavs, axis=1, keepdims=True), 1e-12)
    labels = [provenance_label(seg.colour[ex], seg.shape[ex]) or f"concept {k}" for k, ex in enumerate(exemplars)]
    return ConceptBank(
        layer=backend.bottleneck_layer, centres=km.cluster_centers_[[c for c, *_ in kept]].astype(np.float32),
        radius=np.array([r for *_, r in kept], np.float32), cavs=cavs.astype(np.float32),
        words=[vocab.words[t - 1] for t in words], tcav=tcav, tcav_p=tcav_p, significant=tcav_p < SIGNIFICANCE,
        association=association([images for _, _, images, _ in kept], captions, words),
        labels=labels, thumbnails=seg.thumbs[np.array(exemplars)],
        exemplar_colour=seg.colour[np.array(exemplars)], exemplar_shape=seg.shape[np.array(exemplars)],
        image_count=np.array([len(images) for _, _, images, _ in kept]), n_segments=tuple(n_segments),
        random_tcav=random_tcav, source=source)


def gallery(bank: ConceptBank, shown: int = 12, tile: int = 48) -> np.ndarray:
    """One labelled row of exemplar patches per concept (RGB uint8)."""
    label_width, rows = 260, []
    for k in range(len(bank)):
        text = np.full((tile, label_width, 3), 32, np.uint8)
        cv2.putText(text, f"c{k}: {bank.labels[k]}"[:34], (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        best = int(np.argmax(bank.tcav[k])) if bank.words else -1
        detail = f"{bank.image_count[k]} images" + (f", top {bank.words[best]} {bank.tcav[k, best]:.2f}"
                                                   f"{'*' if bank.significant[k, best] else ''}" if best >= 0 else "")
        cv2.putText(text, detail[:40], (4, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (200, 200, 200), 1, cv2.LINE_AA)
        thumbs = [cv2.resize(t, (tile, tile), interpolation=cv2.INTER_NEAREST) for t in bank.thumbnails[k, :shown]]
        thumbs += [np.zeros((tile, tile, 3), np.uint8)] * (shown - len(thumbs))
        rows.append(np.hstack([text] + thumbs))
        rows.append(np.full((2, rows[-1].shape[1], 3), 80, np.uint8))
    return np.vstack(rows)


def write_bank(bank: ConceptBank, bundle, out: Path | None = None) -> tuple[Path, Path]:
    """Write ``concepts.npz`` and ``concepts.png`` into the bundle (manifest updated and re-hashed) or into ``out``."""
    folder = Path(out) if out is not None else bundle.path
    folder.mkdir(parents=True, exist_ok=True)
    npz, png = folder / "concepts.npz", folder / "concepts.png"
    bank.save(npz)
    write_atomically(png, encode_png(gallery(bank)))
    if out is None:
        manifest = dict(bundle.manifest)
        manifest["files"] = dict(manifest["files"], concepts=npz.name, concepts_gallery=png.name)
        write_manifest(bundle.path, manifest)
    return npz, png


def bottleneck_layer(captioner) -> str:
    """The default bottleneck: the encoder's reduced map if its head has one, else the backbone's last layer."""
    return default_bottleneck_layer(captioner)


def configure(parser) -> None:
    """Arguments of ``explaincam concepts``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="discovery images: a scenes folder (captions.jsonl) or any image folder")
    source.add_argument("--scenes", type=int, help="discover on this many generated scenes")
    parser.add_argument("--bundle", required=True, help="model bundle folder (needs captioner.keras)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"scene stream of --scenes, and the k-means / random-set seed (default {DEFAULT_SEED})")
    parser.add_argument("--clusters", type=int, default=60,
                        help="k-means clusters (ACE uses 25 per class; one bank for every word needs more)")
    parser.add_argument("--members", type=int, default=20, help="exemplars kept nearest each centre (ACE: 40)")
    parser.add_argument("--min-images", type=int, default=10,
                        help="drop concepts seen in fewer images (a word, too, needs this many captions)")
    parser.add_argument("--segments", type=int, nargs="+", default=list(N_SEGMENTS), metavar="N",
                        help=f"SLIC resolutions, coarse first (default: {' '.join(map(str, N_SEGMENTS))})")
    parser.add_argument("--random-sets", type=int, default=RANDOM_SETS, help="random counterparts per CAV")
    parser.add_argument("--layer", default=None, help="bottleneck layer of the encoder (default: its reduced map "
                                                      "spatial_reduce, else the backbone's last layer)")
    parser.add_argument("--out-of-bundle", nargs="?", const="concepts", default=None, metavar="DIR",
                        help="write concepts.npz/.png to DIR (default ./concepts) and leave the bundle untouched")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def main(args) -> int:
    """Build the concept bank, write it and print a summary."""
    if args.scenes is not None and args.scenes < 1:
        raise SystemExit("error: --scenes must be at least 1")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    try:
        bundle = load_bundle(args.bundle)
        if not bundle.has("captioner"):
            raise BundleError(f"{bundle.path}: the bundle has no captioner.keras; concepts are built with it")
        captioner = load_captioner(bundle.file("captioner"))
        backend = TensorFlowBackend(bundle, bottleneck_layer=args.layer or bottleneck_layer(captioner),
                                    captioner=captioner)
        explainer = Explainer(bundle, backend=backend)
    except (BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.scenes is not None:
        items = scenes_discovery(args.scenes, args.seed, explainer.vocab, explainer.size)
        source = f"scenes:seed={args.seed}:count={args.scenes}"
    else:
        items = folder_discovery(args.images, explainer)
        source = f"images:{Path(args.images).resolve()}"
    bank = build_bank(backend, explainer.vocab, items, args.clusters, args.members, args.min_images,
                      args.random_sets, args.seed, explainer.options.batch_size, args.segments, source, log)
    npz, png = write_bank(bank, explainer.bundle, None if args.out_of_bundle is None else Path(args.out_of_bundle))
    seconds = time.perf_counter() - started
    print(f"{len(bank)} concepts, TCAV for {len(bank.words)} words, in {seconds:.0f} s: {npz} and {png}")
    for k in range(len(bank)):
        significant = [w for w, s in zip(bank.words, bank.significant[k]) if s]
        print(f"  c{k:<3}{bank.labels[k]:<32}{bank.image_count[k]:>5} images  significant for: "
              f"{' '.join(significant) or '-'}")
    purity = bank.word_purity()
    if purity:
        print("purity (best concept's share of exemplars from that kind of object):")
        for value, (share, k) in sorted(purity.items()):
            print(f"  {value:<10}{share:.2f} (c{k})")
    return 0
