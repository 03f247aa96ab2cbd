"""``explaincam explain IMAGE``: caption one image as the daemon would, then explain that caption.

The caption comes from the int8 runtime (what the daemon publishes); the explanation is of
that caption under the float model, in this process, through the explainer process's
answer pipeline (``daemon.explain.explainer.answer``). Output: a summary (or ``--json``: the
MQTT response object) and, with ``--out``, response.json, one heatmap PNG per word and
method and grid.png.
"""

from __future__ import annotations

import argparse
import json
import sys

from daemon.bundle import BundleError
from daemon.captioner import DEFAULT_BUNDLE, Captioner
from daemon.encoder import EncoderError
from daemon.explain.backends import BackendError
from daemon.explain.explainer import Explainer, answer
from daemon.explain.requests import parse_words, save_explanation, summary_lines
from daemon.explain_settings import BACKEND_CHOICES, DEFAULT_METHODS, METHODS, ExplainOptions
from daemon.imaging import read_rgb


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam explain``."""
    defaults = ExplainOptions()
    parser.add_argument("image", help="image file")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle folder")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS,
                        metavar="METHOD", help=f"methods: {', '.join(METHODS)} "
                                               f"(default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--words", default="all", help="'all' (default) or word indices, e.g. 0,2")
    parser.add_argument("--out", default=None, help="folder for response.json, heatmaps and grid.png")
    parser.add_argument("--json", action="store_true", help="print the response JSON instead of a summary")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="what runs the float model (default auto: LiteRT when the bundle has its explainer "
                             "graph, else TensorFlow)")
    parser.add_argument("--gradcam-layer", default=None, help="backbone layer for Grad-CAM (default: the bundle's)")
    parser.add_argument("--smoothgrad-samples", type=int, default=defaults.smoothgrad_samples,
                        help="noisy copies per word for smoothgrad")
    parser.add_argument("--ig-steps", type=int, default=defaults.ig_steps,
                        help="path steps per word for integrated_gradients")
    parser.add_argument("--occlusion-steps", type=int, default=defaults.occlusion_steps,
                        help="occlusion patch positions per axis (steps^2 frames through the int8 encoder)")
    parser.add_argument("--rise-masks", type=int, default=defaults.rise_masks, help="random masks for rise")


def main(args: argparse.Namespace) -> int:
    """Caption, explain, print and save."""
    try:
        words = parse_words(args.words)
        frame = read_rgb(args.image)
        captioner = Captioner.from_path(args.bundle)
    except (ValueError, BundleError, EncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    caption = captioner.caption(frame)
    indices = list(range(len(caption.tokens))) if words == "all" else words
    bad = [i for i in indices if not 0 <= i < len(caption.tokens)]
    if bad:
        print(f"error: word index {bad[0]} is out of range: {caption.caption!r} has {len(caption.tokens)} words",
              file=sys.stderr)
        return 2
    options = ExplainOptions(smoothgrad_samples=args.smoothgrad_samples, ig_steps=args.ig_steps,
                             occlusion_steps=args.occlusion_steps, rise_masks=args.rise_masks)
    try:
        explainer = Explainer(captioner.bundle, options, args.gradcam_layer, args.backend)
        payload, grid = answer(explainer, frame, caption.tokens, indices, args.methods, args.image,
                               caption=caption.caption, timings_ms=caption.timings)
    except (BundleError, BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(payload.get("unavailable", {})) == len(args.methods):
        print("error: " + "; ".join(payload["unavailable"].values()), file=sys.stderr)
        return 2
    if args.out:
        save_explanation(args.out, payload, grid)
    if args.json:
        print(json.dumps(payload))
    else:
        print("\n".join(summary_lines(payload)))
        if args.out:
            print(f"saved to {args.out}")
    return 0
