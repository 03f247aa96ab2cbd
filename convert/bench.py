"""``explaincam bench``: speed and memory of a bundle on this box, side by side with the seed-style pipeline.

Every claim is a ratio of two figures measured in the same run, because absolute times on a
shared or throttling box are noisy. What is measured where:

- this process (LiteRT and numpy only): the int8 and float TFLite encoders at 1 and N
  threads, the numpy step decoder (greedy, beam 3), end-to-end captions (int8 + greedy);
- a fresh TensorFlow process per thread count (TensorFlow fixes its thread pools when it
  starts): the Keras float encoder, the float TFLite conversion, the encoder's MACs, the
  seed-style pipeline (Keras ``predict`` encoder + a ``predict`` per beam per step on the
  pre-padded prefix, beam 3), and a tiny full-integer model of one large int8 convolution
  whose LiteRT rate, measured here, is the practical int8 peak of this CPU;
- per explainer backend (LiteRT, TensorFlow), side by side: a fresh process times each
  explanation method (first call and warm), and the capture child asks the real explainer
  service for an explanation with no explainer running (the cold answer: request sent ->
  answer received, gradcam + saliency, all words), keeps it busy, then times a warm answer
  and reads the explainer's peak RSS;
- a fresh capture process (no TensorFlow, 1 encoder thread): the real caption loop
  (``daemon.capture.CaptionLoop.process``, MQTT publisher never connected, no snapshot files)
  over pre-drawn scenes, idle and while each backend's explainer service is kept busy; the RSS of
  that process and of the explainer worker come from /proc.

A part that cannot run (no explainer installed, a failed conversion ...) is reported as
null with its reason under ``null_reasons``; the bench itself does not fail for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from daemon.bundle import Bundle, BundleError, load_bundle
from daemon.captioner import DEFAULT_BUNDLE, Captioner, resize_for_encoder
from daemon.decoder import StepDecoder
from daemon.encoder import EncoderError, TFLiteEncoder
from daemon.explain.backends import BackendError, choose_backend

BENCH_SCENES_SEED = 5150  # frames the bench runs on (training uses 1, calibration 4242, report 4343)
BENCH_FRAMES = 8
BEAM_WIDTH = 3
WARMUP_RUNS = 2
MIN_RUNS = 3
EXPLAINER_START_TIMEOUT_S = 180.0  # backend load (TensorFlow: import + model) of the explainer worker
BACKENDS = ("litert", "tensorflow")  # compared side by side
PEAK_CONV = (28, 28, 256, 256, 3)  # the int8 peak model: an H x W x Cin input, Cout filters of k x k
SIMD_FLAGS = ("neon", "asimd", "asimddp", "i8mm", "sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
              "amx_int8")
REPO_ROOT = Path(__file__).resolve().parent.parent


# -- timing and /proc helpers (no TensorFlow) ----------------------------------------------------

def summarize(times_ms: list[float]) -> dict:
    """Median, 95th percentile (ms) and run count of a list of timings."""
    values = np.asarray(times_ms, np.float64)
    return {"median": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "runs": int(values.size)}


def timed_loop(fn: Callable[[int], object], seconds: float, warmup: int = WARMUP_RUNS,
               min_runs: int = MIN_RUNS) -> dict:
    """Call ``fn(i)`` ``warmup`` times, then for ``seconds`` (at least ``min_runs`` calls); summary in ms."""
    for i in range(warmup):
        fn(i)
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        fn(len(times))
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def speed_ratio(slow: dict | None, fast: dict | None) -> float | None:
    """How many times faster ``fast`` is than ``slow`` (ratio of medians), None if either is missing."""
    if not slow or not fast:
        return None
    return round(slow["median"] / fast["median"], 3)


def read_proc_status(pid: int | str = "self") -> dict | None:
    """VmRSS and VmHWM (peak RSS) of a process in MB from /proc/PID/status; None where unreadable."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    if "VmRSS" not in fields:
        return None
    return {"rss": fields["VmRSS"], "hwm": fields.get("VmHWM")}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (from /proc/PID/stat); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict:
    """Core count, CPU model, clock (MHz, if reported) and the SIMD features that matter for int8."""
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip().lower(), value.strip())
    flags = set((info.get("flags") or info.get("features") or "").split())
    mhz = info.get("cpu mhz")
    return {"cores": os.cpu_count(),
            "model": info.get("model name") or info.get("hardware") or info.get("cpu part") or "unknown",
            "mhz": round(float(mhz)) if mhz else None,
            "simd": [f for f in SIMD_FLAGS if f in flags]}


def bench_frames(count: int, size: int | None = None) -> list[np.ndarray]:
    """The bench's RGB uint8 scene frames (resized to ``size`` when given)."""
    from daemon.scenes import scene_at  # numpy + OpenCV only

    frames = [scene_at(BENCH_SCENES_SEED, i).image for i in range(count)]
    return [resize_for_encoder(f, size) for f in frames] if size else frames


def tflite_graph(path: str | Path) -> dict:
    """Multiply-accumulates of a TFLite graph's conv, depthwise and dense ops, and its delegate partitions.

    ``delegate_partitions`` is how many pieces LiteRT's default (XNNPACK) delegate runs; 1
    means the whole graph is delegated, more means ops it cannot take run in between.
    """
    from daemon.encoder import load_interpreter

    interpreter = load_interpreter(path, 1)
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    counts = {"conv": 0, "depthwise": 0, "dense": 0}
    ops = interpreter._get_ops_details()  # the only way LiteRT's Python API lists ops
    for op in ops:
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out = shapes[op["outputs"][0]]
        weights = shapes[op["inputs"][1]]
        if op["op_name"] == "CONV_2D":  # filter (Cout, kh, kw, Cin / groups)
            counts["conv"] += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, Cout)
            counts["depthwise"] += int(np.prod(out)) * weights[1] * weights[2]
        else:  # weights (units, inputs)
            counts["dense"] += int(np.prod(out)) * weights[1]
    return {"macs": {"total": sum(counts.values()), **counts},
            "delegate_partitions": sum(op["op_name"] == "DELEGATE" for op in ops)}


# -- the seed-style decoder and the Keras side (imported by the TensorFlow child only) ------------

def keras_macs(model) -> dict:
    """Multiply-accumulates of a Keras model's Conv2D, DepthwiseConv2D and Dense layers, from their shapes.

    Nested models (the encoder's ``backbone``) are counted layer by layer. Activations,
    batch norm, pooling and additions are not multiply-accumulates and are left out.
    """
    import keras
    from keras import layers

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


def seed_step_model(captioner, prefix_length: int):
    """The seed's model format, ``[features, pre-padded prefix] -> next-word softmax``, on the captioner's weights.

    The sequence-form captioner's layers are reused; its LSTM's weights go into an LSTM
    that returns only the last step (the padding is masked, as in the seed).
    """
    import keras

    feat_dense = captioner.get_layer("feat_dense")
    sequence_lstm = captioner.get_layer("lstm")
    features = keras.Input(feat_dense.input.shape[1:], name="features")
    prefix = keras.Input((prefix_length,), dtype="int32", name="prefix")
    lstm = keras.layers.LSTM(sequence_lstm.units, name="lstm_last_step")
    state = lstm(captioner.get_layer("embedding")(prefix))
    lstm.set_weights(sequence_lstm.get_weights())
    merged = keras.layers.Add(name="merge_last_step")([feat_dense(features), state])
    logits = captioner.get_layer("logits")(captioner.get_layer("merge_dense")(merged))
    return keras.Model([features, prefix], keras.layers.Softmax(name="next_word")(logits), name="seed_step")


class SeedStyleDecoder(StepDecoder):
    """The seed's decoding cost inside the numpy decoder's search: one ``predict`` per beam per step.

    Each step runs the seed-format model on the whole pre-padded prefix instead of carrying
    the LSTM state. The prefix rides in the place of the LSTM state, so greedy and beam
    search are the very code of ``StepDecoder`` and both decoders must give the same caption.
    The search stops once no open beam can win, where a fixed-length seed loop would run
    every beam to the full prefix length: if anything, the baseline is flattered.
    """

    def __init__(self, step_model, prefix_length: int, start: int, end: int):
        self.model = step_model
        self.units = prefix_length  # the "state" is the pre-padded prefix
        self.start, self.end = start, end

    def project(self, features: np.ndarray) -> np.ndarray:
        """Features pass through; the seed model does its own projection."""
        return np.asarray(features, np.float32)

    def step(self, projected, tokens, h, c):
        """Append one token per row to its prefix and ``predict`` each row; log-probabilities and the prefixes."""
        prefixes = np.concatenate([h[:, 1:], np.asarray(tokens, np.float32)[:, None]], axis=1)
        probs = np.concatenate([self.model.predict([projected[i:i + 1], prefixes[i:i + 1].astype(np.int32)],
                                                   verbose=0) for i in range(len(prefixes))])
        return np.log(np.maximum(probs, 1e-30)), prefixes, prefixes


def _seed_pipeline(captioner, bundle: Bundle, frames: list[np.ndarray]) -> dict:
    """Seed-style captions (Keras ``predict`` encoder + seed-style beam 3) of ``frames``, timed per frame."""
    from daemon.vocab import Vocabulary

    special = bundle.manifest["special_tokens"]
    vocab = Vocabulary.load(bundle.file("vocab"), special["start"], special["end"])
    encoder = captioner.get_layer("encoder")
    seed = SeedStyleDecoder(seed_step_model(captioner, bundle.max_length + 1), bundle.max_length + 1,
                            vocab.start, vocab.end)
    ours = StepDecoder.load(bundle.file("decoder"), vocab.start, vocab.end)
    batches = [f[None].astype(np.float32) for f in frames]
    seed.beam(encoder.predict(batches[0], verbose=0)[0], bundle.max_length, BEAM_WIDTH)  # warm-up
    decode_ms, pipeline_ms, agree = [], [], 0
    for batch in batches:
        t0 = time.perf_counter()
        features = encoder.predict(batch, verbose=0)[0]
        t1 = time.perf_counter()
        tokens = seed.beam(features, bundle.max_length, BEAM_WIDTH).tokens
        t2 = time.perf_counter()
        decode_ms.append((t2 - t1) * 1e3)
        pipeline_ms.append((t2 - t0) * 1e3)
        agree += tokens == ours.beam(features, bundle.max_length, BEAM_WIDTH).tokens
    return {"decode": summarize(decode_ms), "pipeline": summarize(pipeline_ms),
            "agreement": round(agree / len(frames), 3), "prefix_length": bundle.max_length + 1}


def _explain_task(params: dict) -> dict:
    """Explain child: each method's time (ms) for all words of one frame's caption on one backend, first and warm.

    The first call of a method in a fresh process pays for setting up its kernels at new
    batch shapes; ``warm`` is the second call, what a busy explainer answers in.
    """
    from daemon.config import ExplainConfig
    from daemon.explain.explainer import Explainer
    from daemon.explain.registry import METHODS, ExplainOptions

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = ExplainConfig()
    options = ExplainOptions(batch_size=cfg.batch_size, smoothgrad_samples=cfg.smoothgrad_samples,
                             ig_steps=cfg.ig_steps)
    bundle = load_bundle(params["bundle"], verify=False)  # the parent verified it
    explainer = Explainer(bundle, options, cfg.gradcam_layer, params["backend"], params["threads"])
    frame = bench_frames(1, bundle.input_size)[0]
    tokens = params["explain_tokens"]
    first, warm = {}, {}
    for times in (first, warm):
        for name in METHODS:
            times[name] = explainer.explain(frame, tokens, None, [name]).timings_ms[f"{name}_ms"]
    return {"warm": warm, "first": first, "words": len(tokens), "rss": read_proc_status()}


def int8_peak_model(path: str | Path) -> int:
    """Write a full-integer TFLite model of one large int8 convolution (PEAK_CONV); its MACs.

    Its rate on LiteRT is what this CPU's int8 kernels can do at best: a big, regular
    convolution with every operand int8, no small layers, no memory-bound depthwise steps.
    """
    import keras

    from convert.quantize import to_int8_tflite

    h, w, c_in, c_out, k = PEAK_CONV
    inputs = keras.Input((h, w, c_in))
    model = keras.Model(inputs, keras.layers.Conv2D(c_out, k, padding="same", use_bias=False)(inputs))
    rng = np.random.default_rng(0)
    Path(path).write_bytes(to_int8_tflite(model, lambda: (rng.uniform(0, 255, (h, w, c_in)) for _ in range(4))))
    return h * w * c_in * c_out * k * k


def int8_rate(path: str | Path, threads: int, seconds: float) -> dict:
    """LiteRT timing of a TFLite model on a random uint8 input at ``threads`` threads."""
    from daemon.encoder import load_interpreter

    interpreter = load_interpreter(path, threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).integers(
        0, 255, detail["shape"], dtype=np.uint8).astype(detail["dtype"]))
    return timed_loop(lambda i: interpreter.invoke(), seconds)


def _attempt(fn: Callable[[], object]) -> dict:
    """``{"value": fn()}``, or ``{"error": reason}`` if it raised."""
    try:
        return {"value": fn()}
    except Exception as exc:  # a bench part that fails is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}


def _keras_task(params: dict) -> dict:
    """TensorFlow child: Keras encoder timings at ``threads``, and the optional parts ``params`` asks for."""
    threads = params["threads"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from convert.model import load_captioner

    bundle = load_bundle(params["bundle"], verify=False)  # the parent verified it
    captioner = load_captioner(bundle.file("captioner"))
    encoder = captioner.get_layer("encoder")
    frames = bench_frames(params["frames"], bundle.input_size)
    batches = [f[None].astype(np.float32) for f in frames]
    graph = tf.function(lambda x: encoder(x, training=False))
    seconds = params["seconds"]
    out = {
        "keras_float": _attempt(lambda: timed_loop(
            lambda i: encoder.predict(batches[i % len(batches)], verbose=0), seconds)),
        "keras_float_graph": _attempt(lambda: timed_loop(
            lambda i: graph(batches[i % len(batches)]).numpy(), seconds)),
    }
    if params.get("float_tflite"):
        from convert.quantize import to_float_tflite

        out["float_tflite"] = _attempt(lambda: Path(params["float_tflite"]).write_bytes(to_float_tflite(encoder)))
    if params.get("macs"):
        out["macs"] = _attempt(lambda: keras_macs(encoder))
    if params.get("seed_frames"):
        out["seed"] = _attempt(lambda: _seed_pipeline(captioner, bundle, frames[:params["seed_frames"]]))
    if params.get("int8_peak"):
        out["int8_peak_macs"] = _attempt(lambda: int8_peak_model(params["int8_peak"]))
    return out


# -- the capture child (no TensorFlow) -----------------------------------------------------------

class _RequestFeeder(threading.Thread):
    """Keeps an explain service supplied with requests for the latest frame; collects the answers."""

    def __init__(self, methods: list[str], outstanding: int = 2):
        super().__init__(name="bench-feeder", daemon=True)
        self.methods, self.outstanding = methods, outstanding
        self.service = None
        self.sent = 0
        self.answers: list[dict] = []
        self.answered = threading.Event()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    def publish(self, topic: str, payload, **_kwargs) -> bool:
        """The service's ``publish``: responses are kept, explanation images ignored."""
        if topic.endswith("/response"):
            with self._lock:
                self.answers.append(json.loads(payload))
            self.answered.set()
        return True

    def answer_to(self, request_id: str) -> dict | None:
        """The answer to one request, if it came."""
        with self._lock:
            return next((a for a in self.answers if a.get("id") == request_id), None)

    def ok_count(self) -> int:
        """Explanations answered ``ok`` so far."""
        with self._lock:
            return sum(a.get("status") == "ok" for a in self.answers)

    def feed(self, service) -> None:
        """Start sending requests to ``service``."""
        self.service = service
        self.start()

    def run(self) -> None:
        """Send a request whenever fewer than ``outstanding`` are unanswered."""
        while not self.stop_event.wait(0.02):
            with self._lock:
                waiting = self.sent - len(self.answers)
            if waiting < self.outstanding:
                self.sent += 1
                request = {"id": f"bench-{self.sent}", "frame": "latest", "methods": self.methods, "words": "all"}
                self.service.handle_request(json.dumps(request).encode())


def _explaining(service_for: Callable, caption_for: Callable, seconds: float) -> dict:
    """One backend's explainer service: cold answer, caption rate while it is kept busy, warm answer, its RSS."""
    feeder = _RequestFeeder(["gradcam", "saliency"])
    try:
        service = service_for(feeder.publish)
    except Exception as exc:  # the service cannot even be set up: captions were measured without it
        return {"error": f"no explainer service: {type(exc).__name__}: {exc}"}
    out: dict = {}
    try:
        feeder.feed(service)
        cold_start = time.monotonic()  # the loop waits meanwhile (the daemon's default rate is 2 captions/s)
        feeder.answered.wait(EXPLAINER_START_TIMEOUT_S)
        out["cold_answer_s"] = round(time.monotonic() - cold_start, 2)
        if feeder.ok_count() == 0:
            return {"error": f"the explainer gave no explanation within {EXPLAINER_START_TIMEOUT_S:.0f} s: "
                             f"{feeder.answers[0] if feeder.answers else 'no answer'}"}
        pid = service.worker_pid
        cpu_before, ok_before = cpu_seconds(pid) if pid else None, feeder.ok_count()
        done, elapsed = caption_for(seconds)
        if feeder.ok_count() == ok_before:  # the window must hold at least one whole explanation
            more, more_s = caption_for(EXPLAINER_START_TIMEOUT_S, lambda: feeder.ok_count() > ok_before)
            done, elapsed = done + more, elapsed + more_s
        cpu_after = cpu_seconds(pid) if pid else None
        out.update({"explaining_per_s": round(done / elapsed, 2), "explanations_done": feeder.ok_count() - ok_before,
                    "explainer_cpu_share": (round((cpu_after - cpu_before) / elapsed, 2)
                                            if cpu_before is not None and cpu_after is not None else None)})
        feeder.stop_event.set()
        feeder.join(5)
        wait_s = time.monotonic() + EXPLAINER_START_TIMEOUT_S
        while feeder.ok_count() + sum(a.get("status") != "ok" for a in feeder.answers) < feeder.sent \
                and time.monotonic() < wait_s:
            time.sleep(0.02)
        warm_start = time.monotonic()  # the explainer is loaded and idle: one request alone
        service.handle_request(json.dumps({"id": "bench-warm", "frame": "latest",
                                           "methods": ["gradcam", "saliency"], "words": "all"}).encode())
        while feeder.answer_to("bench-warm") is None and time.monotonic() - warm_start < EXPLAINER_START_TIMEOUT_S:
            time.sleep(0.005)
        out["warm_answer_s"] = round(time.monotonic() - warm_start, 3) if feeder.answer_to("bench-warm") else None
        out["explainer_rss"] = read_proc_status(pid) if pid else None
        if out["explainer_rss"] is None:
            out["explainer_rss_error"] = "the explainer process had ended before its memory could be read"
    finally:
        feeder.stop_event.set()
        service.stop()
    return out


def _capture_task(params: dict) -> dict:
    """Capture child: caption-loop rate idle and with each backend's explainer busy, and the RSS of both processes."""
    from daemon.capture import CaptionLoop
    from daemon.contract import CameraTopics
    from daemon.config import AppConfig
    from daemon.framecache import FrameCache
    from daemon.mqtt import MqttPublisher
    from daemon.notify import SystemdNotifier
    from daemon.sources import Frame, FrameGrabber, make_source

    from daemon.scenes import scene_at

    cfg = AppConfig.model_validate({"caption": {"rate": 0, "change_threshold": 0}})
    captioner = Captioner.from_path(params["bundle"], threads=1)
    topics = CameraTopics.for_camera(cfg.mqtt.topic_prefix, cfg.camera.name)
    publisher = MqttPublisher(cfg.mqtt, "explaincam-bench", topics.availability)  # never connected
    loop = CaptionLoop(cfg, captioner, FrameGrabber(make_source(cfg.camera.source)), FrameCache(cfg.caption.cache_size),
                       publisher, topics, SystemdNotifier(None))
    scenes = [scene_at(BENCH_SCENES_SEED, i) for i in range(params["frames"])]
    frames = [Frame(i + 1, s.image, time.time(), time.monotonic(), 0.0, s.caption) for i, s in enumerate(scenes)]

    def caption_for(seconds: float, until: Callable[[], bool] = lambda: False) -> tuple[int, float]:
        """Run the loop's per-frame work for ``seconds`` or until ``until()``; (captions, seconds taken)."""
        done, started = 0, time.monotonic()
        while time.monotonic() - started < seconds and not until():
            frame = dataclasses.replace(frames[done % len(frames)], grab_started=time.monotonic())
            done += loop.process(frame) is not None
        return done, time.monotonic() - started

    def service_for(backend: str) -> Callable:
        def make(publish):
            from daemon.explain.service import ExplainService

            return ExplainService(config=cfg.explain.model_copy(update={"backend": backend}),
                                  bundle_path=captioner.bundle.path, snapshot_dir=None, publish=publish,
                                  topics=topics,
                                  frame_cache=loop.cache, model_name=captioner.bundle.name)
        return make

    caption_for(min(1.0, params["seconds"]))  # warm-up
    idle = [caption_for(params["seconds"])]
    out: dict = {"capture_rss": read_proc_status(), "backends": {}}
    for backend in params["backends"]:
        out["backends"][backend] = _explaining(service_for(backend), caption_for, params["seconds"])
        idle.append(caption_for(params["seconds"]))  # again without an explainer: drift shows and averages out
    out["idle_per_s"] = round(sum(n for n, _ in idle) / sum(t for _, t in idle), 2)
    out["idle_windows_per_s"] = [round(n / t, 2) for n, t in idle]
    return out


_CHILD_TASKS = {"keras": _keras_task, "capture": _capture_task, "explain": _explain_task}


def _child_entry(task: str, params_json: str, out_path: str) -> None:
    """Entry point of a bench child process: run ``task``, write its result (or error) as JSON."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # lets ``finally`` stop the explainer
    try:
        result = _CHILD_TASKS[task](json.loads(params_json))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out_path).write_text(json.dumps(result))


def run_child(task: str, params: dict, timeout: float) -> dict:
    """Run a bench task in a fresh Python process; its result, or ``{"error": reason}``."""
    with tempfile.TemporaryDirectory(prefix="explaincam-bench-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        code = "import sys; from convert.bench import _child_entry; _child_entry(*sys.argv[1:])"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, task, json.dumps(params), str(out)],
                                    cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return {"error": f"the {task} measurement took longer than {timeout:.0f} s"}
        if out.is_file():
            return json.loads(out.read_text())
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"the {task} process ended with code {proc.returncode}: {' | '.join(tail)}"}


# -- the bench -----------------------------------------------------------------------------------

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


def run_bench(bundle: Bundle, seconds: float, threads: int, seed_frames: int,
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
        caption_ms = {**timed_loop(lambda i: captioner.caption(frames[i % len(frames)]), seconds), "threads": threads}

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

    seed = report.take("decode_ms.seed_beam3", keras[threads].get("seed"), keras[threads].get("error"))
    decode_ms["seed_beam3"] = seed["decode"] if seed else None
    macs = report.take("macs", keras[threads].get("macs"), keras[threads].get("error"))
    int8_graph = report.take("macs_tflite", _attempt(lambda: tflite_graph(bundle.file("encoder_int8"))))

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
                     "beam_width": BEAM_WIDTH},
        "encoder_ms": encoder_ms,
        "encoder_int8_vs_keras": ratio_by_threads("keras_float"),
        "encoder_int8_vs_keras_graph": ratio_by_threads("keras_float_graph"),
        "encoder_int8_vs_float_tflite": ratio_by_threads("float_tflite"),
        "decode_ms": decode_ms,
        "decoder_vs_seed": speed_ratio(decode_ms["seed_beam3"], decode_ms["numpy_beam3"]),
        "seed_agreement": seed["agreement"] if seed else None,
        "seed_prefix_length": seed["prefix_length"] if seed else None,
        "caption_ms": caption_ms,
        "seed_pipeline_ms": seed["pipeline"] if seed else None,
        "pipeline_vs_seed": speed_ratio(seed["pipeline"] if seed else None, caption_ms),
        "captions_per_s": idle,
        "captions_per_s_idle_windows": capture.get("idle_windows_per_s"),
        "capture_loop": "daemon.capture.CaptionLoop.process with the default config (a JPEG with the caption "
                        "drawn per frame) over pre-drawn scenes, 1 encoder thread, MQTT publisher not connected, "
                        "no snapshot files",
        "rss_mb": {"capture": capture.get("capture_rss")},
        "backends": backends,
        "explain_words": len(caption.tokens),
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


def _ms(stats: dict | None) -> str:
    """Median and p95 columns of a timing summary (n/a when missing)."""
    return f"{stats['median']:9.2f} {stats['p95']:9.2f}" if stats else f"{'n/a':>9} {'n/a':>9}"


def _x(value) -> str:
    """A ratio as ``12.3x`` or n/a."""
    return f"{value:.1f}x" if value is not None else "n/a"


def format_table(r: dict) -> str:
    """The bench result as a plain-text table."""
    m = r["machine"]
    threads = [k for k in r["encoder_ms"]["int8_litert"]]
    clock = f" @ {m['mhz']} MHz" if m["mhz"] else ""
    lines = [f"explaincam bench: bundle {r['bundle']['name']} ({r['bundle']['encoder']}) on {m['cores']} cores, "
             f"{m['model']}{clock}; SIMD: {', '.join(m['simd']) or 'none seen'}",
             "", f"{'encoder (ms)':<28}{'threads':>8} {'median':>9} {'p95':>9}"]
    for kind, label in (("int8_litert", "int8 LiteRT"), ("float_tflite", "float TFLite"),
                        ("keras_float", "Keras float (predict)"), ("keras_float_graph", "Keras float (tf.function)")):
        for n in threads:
            lines.append(f"{label:<28}{n:>8} {_ms(r['encoder_ms'][kind].get(n))}")
    for n in threads:
        lines.append(f"int8 vs Keras predict / tf.function / float TFLite at {n} thread(s): "
                     f"{_x(r['encoder_int8_vs_keras'][n])} / {_x(r['encoder_int8_vs_keras_graph'][n])} / "
                     f"{_x(r['encoder_int8_vs_float_tflite'][n])}")
    lines += ["", f"{'decoder (ms per caption)':<37} {'median':>9} {'p95':>9}"]
    for kind, label in (("numpy_greedy", "numpy step decoder, greedy"), ("numpy_beam3", "numpy step decoder, beam 3"),
                        ("seed_beam3", "seed-style predict per step, beam 3")):
        lines.append(f"{label:<37} {_ms(r['decode_ms'][kind])}")
    lines.append(f"decoder_vs_seed {_x(r['decoder_vs_seed'])}; seed-style and numpy beams agree on "
                 f"{r['seed_agreement'] if r['seed_agreement'] is not None else 'n/a'} of frames")
    lines += ["", f"{'pipeline (ms per frame)':<37} {'median':>9} {'p95':>9}",
              f"{'int8 + numpy greedy (' + str(r['caption_ms']['threads']) + ' threads)':<37} {_ms(r['caption_ms'])}",
              f"{'seed-style (Keras predict + beam 3)':<37} {_ms(r['seed_pipeline_ms'])}",
              f"pipeline_vs_seed {_x(r['pipeline_vs_seed'])}", ""]
    lines.append(f"capture loop, 1 thread: {r['captions_per_s']} captions/s idle; RSS capture: "
                 + (f"{r['rss_mb']['capture']['rss']} MB (peak {r['rss_mb']['capture']['hwm']} MB)"
                    if r["rss_mb"]["capture"] else "n/a"))
    lines += ["", f"explainer backends, all {r['explain_words']} words of one frame "
                  f"(cold/warm answer: gradcam + saliency, request sent -> answer received)",
              f"  {'':<30}" + "".join(f"{name:>14}" for name in r["backends"])]

    def row(label: str, value) -> str:
        return f"  {label:<30}" + "".join(f"{'n/a' if b is None or value(b) is None else value(b):>14}"
                                          for b in r["backends"].values())

    lines += [row("explainer peak RSS (MB)", lambda b: b["explainer_rss_mb"] and b["explainer_rss_mb"]["hwm"]),
              row("cold answer (s)", lambda b: b["cold_answer_s"]),
              row("warm answer (s)", lambda b: b["warm_answer_s"]),
              row("captions/s while explaining", lambda b: b["captions_per_s_explaining"]),
              row("explain_slowdown", lambda b: b["explain_slowdown"])]
    methods = next((list(b["explain_ms"]) for b in r["backends"].values() if b and b["explain_ms"]), [])
    for name in methods:
        lines.append(row(f"{name} (ms, warm / first)", lambda b: b["explain_ms"] and
                         f"{b['explain_ms'][name]:.0f}/{b['explain_ms_first_call'][name]:.0f}"))
    if r["macs"]:
        gops = ", ".join(f"{v} GOPS at {n} thread(s)" for n, v in r["encoder_gops"].items())
        lines += ["", f"encoder: {r['macs'] / 1e6:.1f} M MACs (TFLite graph: "
                      f"{r['macs_tflite'] / 1e6 if r['macs_tflite'] else float('nan'):.1f} M, "
                      f"{r['int8_delegate_partitions']} XNNPACK partition(s)); int8 achieves {gops}"]
    if r["int8_peak_gops"]:
        lines.append(f"practical int8 peak ({r['int8_peak_model']}): "
                     + ", ".join(f"{v} GOPS at {n} thread(s)" for n, v in r["int8_peak_gops"].items())
                     + "; encoder / peak: " + ", ".join(f"{v} at {n}" for n, v in
                                                        (r["encoder_vs_int8_peak"] or {}).items()))
    if r["null_reasons"]:
        lines += ["", "not measured:"] + [f"  {k}: {why}" for k, why in r["null_reasons"].items()]
    lines.append(f"\n({r['elapsed_s']} s)")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``explaincam bench``."""
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle folder")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed loop (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="the configured thread count (default 2, "
                        "the daemon's model.threads); everything is also measured at 1 thread")
    parser.add_argument("--seed-frames", type=int, default=5, help="frames the slow seed-style pipeline runs (default 5)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")


def main(args: argparse.Namespace) -> int:
    """Run the bench; print the table (or JSON). Exit 2 if the bundle cannot be loaded."""
    if args.seconds <= 0 or args.threads < 1 or args.seed_frames < 1:
        print("error: --seconds must be positive, --threads and --seed-frames at least 1", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.bundle)
        result = run_bench(bundle, args.seconds, args.threads, args.seed_frames,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (BundleError, EncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
