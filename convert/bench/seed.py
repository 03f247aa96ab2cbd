"""The seed-style baseline: the seed's step model format and its ``predict``-per-step beam search, timed.

Runs in the bench's TensorFlow child only (convert/bench/keras_task.py).
"""

from __future__ import annotations

import time

import keras
import numpy as np

from convert.bench.measure import BEAM_WIDTH, summarize
from daemon.bundle import Bundle
from daemon.decoder import StepDecoder
from daemon.vocab import Vocabulary

def seed_step_model(captioner, prefix_length: int):
    """The seed's model format, ``[features, pre-padded prefix] -> next-word softmax``, on the captioner's weights.

    The sequence-form captioner's layers are reused; its LSTM's weights go into an LSTM
    that returns only the last step (the padding is masked, as in the seed).
    """
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


def seed_pipeline(captioner, bundle: Bundle, frames: list[np.ndarray]) -> dict:
    """Seed-style captions (Keras ``predict`` encoder + seed-style beam 3) of ``frames``, timed per frame."""
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
