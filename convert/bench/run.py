"""``run_bench``: every part of ``explaincam bench`` in order, side by side in one run, as one JSON-able dict."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from convert.bench.child import EXPLAINER_START_TIMEOUT_S, run_child
from convert.bench.measure import (BEAM_WIDTH, BENCH_FRAMES, PEAK_CONV, attempt, bench_frames, cpu_info, int8_rate,
                           speed_ratio, tflite_graph, timed_loop, timed_side_by_side)
from daemon.bundle import Bundle
from daemon.captioner import Captioner
from daemon.encoder import TFLiteEncoder
from daemon.familiarity import REJUDGE_S, frame_descriptor
from daemon.explain.backends import BackendError, choose_backend

BACKENDS = ("litert", "tensorflow")  # compared side by side
INT8_CAPTION_WORDS = 8  # occlusion and RISE are timed on a caption this long (the shipped bundle's longest)
AGREEMENT_SCENES = 10  # held-out scenes of the float-vs-int8 agreement figures
# the caption end to end is timed on a camera's stream: each scene held for this many frames
# (a second at the default 10 fps), captioned as the capture loop does (familiarity judged on a new caption)
SCENE_HOLD_FRAMES = 10


class _Report:
    """Why each null in the result is null."""

    def __init__(self):
        self.null_reasons: dict[str, str] = {}

    def take(self, key: str, part: dict | None, reason: str | None = None):
        """The value of an ``_attempt``-style part; on error record why ``key`` is null and return None."""
        if part and "value" in part:
            return part["value"]
        self.null_reasons[key] = (part or {}).get("error") or reason or "not measured"
        return None


HISTORY_EVENTS = 100_000  # events in the store the history bench queries
HISTORY_QUERIES = 200
HISTORY_EXPLAIN_REQUESTS = 8  # user's explain requests timed with background explanations on, and as many off


def run_history_bench(bundle_path: Path, seconds: float, events: int = HISTORY_EVENTS) -> dict:
    """The timeline's figures (convert/bench/history_task.py) from a child process, or ``{"error": why}``."""
    params = {"bundle": str(Path(bundle_path).resolve()), "frames": BENCH_FRAMES, "seconds": seconds,
              "events": events, "queries": HISTORY_QUERIES, "explain_requests": HISTORY_EXPLAIN_REQUESTS}
    return run_child("history", params, 600 + 12 * seconds)


def run_bench(bundle: Bundle, seconds: float, threads: int, seed_frames: int, history_events: int = HISTORY_EVENTS,
              log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Measure everything ``explaincam bench`` reports; a JSON-able dict."""
    started = time.monotonic()

    def note(message: str) -> None:
        log(f"[{time.monotonic() - started:5.0f} s] {message}")

    report = _Report()
    thread_counts = sorted({1, threads})
    frames = bench_frames(BENCH_FRAMES, bundle.input_size)
    child_timeout = 120 + 20 * seconds + 60 * seed_frames
    base = {"bundle": str(bundle.path.resolve()), "seconds": seconds, "frames": BENCH_FRAMES}

    encoder_ms: dict[str, dict] = {"int8_litert": {}, "float_tflite": {}, "keras_float": {}, "keras_float_graph": {}}
    invoke_ms: dict[str, dict] = {}  # the int8 interpreter's invoke alone: what encode() adds is the call path
    keras: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="explaincam-bench-") as tmp:
        float_path, peak_path = Path(tmp) / "encoder_float.tflite", Path(tmp) / "int8_peak.tflite"
        captioner = Captioner(bundle, threads)
        caption = captioner.caption(frames[0])
        for n in thread_counts:
            note(f"Keras float encoder at {n} thread(s){', float TFLite conversion, int8 peak model' if n == 1 else ''}"
                 f"{', seed-style pipeline' if n == threads else ''} ...")
            keras[n] = run_child("keras", {**base, "frames": max(BENCH_FRAMES, seed_frames), "threads": n,
                                           "float_tflite": str(float_path) if n == 1 else None,
                                           "int8_peak": str(peak_path) if n == 1 else None,
                                           "macs": n == threads, "seed_frames": seed_frames if n == threads else 0},
                                 child_timeout + (300 if n == 1 else 0))  # 1 thread also converts two models
            for kind in ("keras_float", "keras_float_graph"):
                encoder_ms[kind][str(n)] = report.take(f"encoder_ms.{kind}.{n}", keras[n].get(kind), keras[n].get("error"))
        report.take("encoder_ms.float_tflite", keras[1].get("float_tflite"), keras[1].get("error"))
        note("int8 and float TFLite encoders ...")
        for n in thread_counts:
            int8 = TFLiteEncoder(bundle.file("encoder_int8"), n)
            encoder_ms["int8_litert"][str(n)] = timed_loop(lambda i: int8.encode(frames[i % len(frames)]), seconds)
            invoke_ms[str(n)] = timed_loop(lambda i: int8.interpreter.invoke(), seconds)
            if float_path.is_file():
                flt = TFLiteEncoder(float_path, n)
                encoder_ms["float_tflite"][str(n)] = timed_loop(lambda i: flt.encode(frames[i % len(frames)]), seconds)
            else:
                encoder_ms["float_tflite"][str(n)] = None
        peak_macs = report.take("int8_peak_gops", keras[1].get("int8_peak_macs"), keras[1].get("error"))
        peak_ms = {str(n): int8_rate(peak_path, n, seconds) for n in thread_counts} if peak_macs else {}
        note("numpy step decoder and end-to-end captions ...")
        int8 = TFLiteEncoder(bundle.file("encoder_int8"), 1)
        features = [int8.encode(f) for f in frames]
        decoder, max_length = captioner.decoder, bundle.max_length
        decode_ms = {
            "numpy_greedy": timed_loop(lambda i: decoder.greedy(features[i % len(features)], max_length), seconds),
            "numpy_beam3": timed_loop(lambda i: decoder.beam(features[i % len(features)], max_length, BEAM_WIDTH),
                                      seconds),
        }
        # the caption end to end beside its parts, round after round (see timed_side_by_side); the
        # caption as the capture loop makes it, on a stream of scenes each held for SCENE_HOLD_FRAMES
        stream = Captioner(bundle, threads, familiarity_rejudge_s=REJUDGE_S)
        judged = []

        def stream_caption(i: int) -> None:
            judged.append("familiarity_ms" in stream.caption(frames[(i // SCENE_HOLD_FRAMES) % len(frames)]).timings)

        stats = captioner.feature_stats
        parts = {"encoder": lambda i: captioner.encoder.encode(frames[i % len(frames)]),
                 "decoder": lambda i: decoder.greedy(features[i % len(features)], max_length),
                 "caption": stream_caption}
        if stats is not None:
            parts["familiarity"] = lambda i: stats.judge(frame_descriptor(frames[i % len(frames)],
                                                                          features[i % len(features)]))
        caption_parts_ms = timed_side_by_side(parts, seconds)
        # the caption alone in its own loop, as the capture loop calls it: pipeline_vs_seed's figure
        # (interleaved with its parts it measured up to 2.4 x slower on a busy box than the capture loop's rate)
        caption_ms = {**timed_loop(stream_caption, seconds), "threads": threads}
        familiarity_ms = caption_parts_ms.pop("familiarity", None) or report.take(
            "familiarity_ms", None, "the bundle has no feature_stats.npz")
        familiarity_judged_share = round(sum(judged) / len(judged), 3) if stats is not None else None

    note("explanation methods on each backend ...")
    usable = []
    explain: dict[str, dict | None] = {}
    for backend in BACKENDS:
        try:
            choose_backend(bundle, backend)
        except BackendError as exc:  # e.g. no explainer graph, or TensorFlow not installed: skipped, said why
            report.null_reasons[f"backends.{backend}"] = str(exc)
            note(f"backend {backend} skipped: {exc}")
            continue
        usable.append(backend)
        times = run_child("explain", {**base, "backend": backend, "threads": threads, "explain_tokens": caption.tokens},
                          EXPLAINER_START_TIMEOUT_S + 60 * seconds + 300)
        explain[backend] = None if "error" in times else times
        if "error" in times:
            report.null_reasons[f"backends.{backend}.explain_ms"] = times["error"]

    note("occlusion and RISE on the int8 model, no TensorFlow ...")
    # LiteRT only: the float maps of the agreement figures without TensorFlow in the process
    int8 = run_child("int8", {**base, "backend": "litert", "threads": threads,
                              "words": INT8_CAPTION_WORDS, "agreement_scenes": AGREEMENT_SCENES}, 600 + 60 * seconds)
    if "error" in int8:
        report.null_reasons["int8_explain"] = int8["error"]
        int8 = None
    elif "agreement_error" in int8:
        report.null_reasons["int8_explain.agreement_with_int8_occlusion"] = int8["agreement_error"]

    seed = report.take("decode_ms.seed_beam3", keras[threads].get("seed"), keras[threads].get("error"))
    decode_ms["seed_beam3"] = seed["decode"] if seed else None
    macs = report.take("macs", keras[threads].get("macs"), keras[threads].get("error"))
    int8_graph = report.take("macs_tflite", attempt(lambda: tflite_graph(bundle.file("encoder_int8"))))

    note(f"the timeline: captions/s with history off / on, two hours of the demo stream, {history_events:,} stored "
         "events ...")
    history = run_history_bench(bundle.path, seconds, history_events)
    if "error" in history:
        report.null_reasons["history"] = history["error"]

    note(f"capture loop idle and with the explainer busy ({', '.join(usable) or 'no backend'}) ...")
    capture = run_child("capture", {**base, "frames": BENCH_FRAMES, "backends": usable},
                        60 + 6 * seconds + 2 * len(usable) * (EXPLAINER_START_TIMEOUT_S + 4 * seconds))
    if "error" in capture:
        for key in ("captions_per_s", "rss_mb.capture"):
            report.null_reasons[key] = capture["error"]
    idle = capture.get("idle_per_s")
    backends: dict[str, dict | None] = {name: None for name in BACKENDS}
    for name in usable:
        served = (capture.get("backends") or {}).get(name) or {"error": capture.get("error", "not measured")}
        if "error" in served:
            report.null_reasons[f"backends.{name}.service"] = served["error"]
        elif served.get("explainer_rss") is None:
            report.null_reasons[f"backends.{name}.explainer_rss_mb"] = served.get("explainer_rss_error", "not readable")
        busy = served.get("explaining_per_s")
        times = explain.get(name)
        backends[name] = {
            "explainer_rss_mb": served.get("explainer_rss"),
            "cold_answer_s": served.get("cold_answer_s"),
            "warm_answer_s": served.get("warm_answer_s"),
            "explain_ms": times["warm"] if times else None,
            "explain_ms_first_call": times["first"] if times else None,
            "captions_per_s_explaining": busy,
            "explain_slowdown": round(busy / idle, 3) if idle and busy else None,
            "explainer_cpu_share": served.get("explainer_cpu_share"),
            "explanations_done": served.get("explanations_done"),
        }

    def ratio_by_threads(slow: str) -> dict:
        return {str(n): speed_ratio(encoder_ms[slow].get(str(n)), encoder_ms["int8_litert"][str(n)])
                for n in thread_counts}

    int8_ms = {n: encoder_ms["int8_litert"][str(n)]["median"] for n in thread_counts}
    result = {
        "bundle": {"name": bundle.name, "path": str(bundle.path), "encoder": bundle.manifest.get("encoder")},
        "machine": cpu_info(),
        "settings": {"seconds": seconds, "threads": threads, "seed_frames": seed_frames, "frames": BENCH_FRAMES,
                     "beam_width": BEAM_WIDTH, "scene_hold_frames": SCENE_HOLD_FRAMES},
        "encoder_ms": encoder_ms,
        "encoder_int8_vs_keras": ratio_by_threads("keras_float"),
        "encoder_int8_vs_keras_graph": ratio_by_threads("keras_float_graph"),
        "encoder_int8_vs_float_tflite": ratio_by_threads("float_tflite"),
        "decode_ms": decode_ms,
        "decoder_vs_seed": speed_ratio(decode_ms["seed_beam3"], decode_ms["numpy_beam3"]),
        "seed_agreement": seed["agreement"] if seed else None,
        "seed_prefix_length": seed["prefix_length"] if seed else None,
        "familiarity_ms": familiarity_ms,
        "familiarity_judged_share": familiarity_judged_share,
        "caption_ms": caption_ms,
        "caption_parts_ms": caption_parts_ms,
        "caption_vs_encoder_decoder": round(caption_parts_ms["caption"]["median"] / (
            caption_parts_ms["encoder"]["median"] + caption_parts_ms["decoder"]["median"]), 3),
        "encoder_invoke_ms": invoke_ms,
        "encoder_call_overhead": {n: round(encoder_ms["int8_litert"][n]["median"] / ms["median"], 3)
                                  for n, ms in invoke_ms.items()},
        "seed_pipeline_ms": seed["pipeline"] if seed else None,
        "pipeline_vs_seed": speed_ratio(seed["pipeline"] if seed else None, caption_ms),
        "captions_per_s": idle,
        "captions_per_s_idle_windows": capture.get("idle_windows_per_s"),
        "capture_loop": "daemon.capture.CaptionLoop.process with the default config (a JPEG with the caption "
                        "drawn per frame) over pre-drawn scenes, 1 encoder thread, MQTT publisher not connected, "
                        "no snapshot files",
        "rss_mb": {"capture": capture.get("capture_rss")},
        "history": None if "error" in history else history,
        "backends": backends,
        "explain_words": len(caption.tokens),
        "int8_explain": int8,
        "macs": macs["total"] if macs else None,
        "macs_by_kind": macs,
        "macs_tflite": int8_graph["macs"]["total"] if int8_graph else None,
        "int8_delegate_partitions": int8_graph["delegate_partitions"] if int8_graph else None,
        "encoder_gops": ({str(n): round(2 * macs["total"] / (int8_ms[n] * 1e-3) / 1e9, 2) for n in thread_counts}
                         if macs else None),
        "int8_peak_gops": ({n: round(2 * peak_macs / (ms["median"] * 1e-3) / 1e9, 2) for n, ms in peak_ms.items()}
                           if peak_macs else None),
        "int8_peak_model": "one {0}x{1}x{2} -> {3} int8 convolution, {4}x{4} kernel, on LiteRT".format(*PEAK_CONV),
        "null_reasons": report.null_reasons,
        "elapsed_s": None,
    }
    if result["encoder_gops"] and result["int8_peak_gops"]:
        result["encoder_vs_int8_peak"] = {n: round(result["encoder_gops"][n] / peak, 3)
                                          for n, peak in result["int8_peak_gops"].items()}
    else:
        result["encoder_vs_int8_peak"] = None
    if result["captions_per_s"] is None and "captions_per_s" not in report.null_reasons:
        report.null_reasons["captions_per_s"] = "not measured"
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result
