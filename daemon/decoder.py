"""Numpy step decoder for the merge-LSTM captioner: greedy and beam search.

The Keras model re-reads the whole padded prefix for every word. Here the LSTM state is
carried from step to step, so each word costs one LSTM step and two small matrix products.
Pure numpy; the weights come from a bundle's ``decoder.npz`` (see convert.model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = 0


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large |x|."""
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def lstm_step(x, h, c, kernel, recurrent, bias):
    """One Keras-LSTM step (gate order i, f, c, o); returns the new (h, c)."""
    z = x @ kernel + h @ recurrent + bias
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def greedy_gate_weights(embedding, kernel, recurrent, bias):
    """The LSTM's weights for ``StepDecoder.greedy``: (each token's gate input, the recurrent kernel).

    The token's input ``embedding @ kernel + bias`` is a table made once. The i, f and o
    columns are halved (exactly: a power of two), so that ``0.5 * tanh(z) + 0.5`` is their
    sigmoid and a single ``tanh`` over all four gates also gives the cell input g.
    """
    units = recurrent.shape[0]
    scale = np.full(4 * units, 0.5, np.float32)
    scale[2 * units:3 * units] = 1.0
    return (embedding @ kernel + bias) * scale, recurrent * scale


@dataclass
class Caption:
    """A decoded caption: word tokens (no start/end), summed log-probability and per-word ones."""

    tokens: list[int]
    score: float
    word_logprobs: list[float]


WEIGHTS = ("feat_kernel", "feat_bias", "embedding", "lstm_kernel", "lstm_recurrent", "lstm_bias",
           "merge_kernel", "merge_bias", "logits_kernel", "logits_bias")


def check_shapes(shapes: dict[str, tuple]) -> None:
    """Raise ValueError unless the decoder weights are all there and their shapes fit together."""
    missing = [k for k in WEIGHTS if k not in shapes]
    if missing:
        raise ValueError(f"lacks the weights {', '.join(missing)}")
    try:
        features, units = shapes["feat_kernel"]
        vocab, width = shapes["embedding"]
        _, merged = shapes["merge_kernel"]
    except ValueError:
        raise ValueError("feat_kernel, embedding and merge_kernel must be matrices") from None
    expected = {"feat_kernel": (features, units), "feat_bias": (units,), "embedding": (vocab, width),
                "lstm_kernel": (width, 4 * units), "lstm_recurrent": (units, 4 * units), "lstm_bias": (4 * units,),
                "merge_kernel": (units, merged), "merge_bias": (merged,), "logits_kernel": (merged, vocab),
                "logits_bias": (vocab,)}
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise ValueError(f"weight {key} has shape {tuple(shapes[key])}, but the others need {shape}")


class StepDecoder:
    """Greedy and beam decoding from encoder features with the weights of ``decoder.npz``."""

    def __init__(self, weights, start: int, end: int):
        check_shapes({k: tuple(np.shape(weights[k])) for k in weights})
        w = {k: np.asarray(weights[k], np.float32) for k in WEIGHTS}
        self.feat_kernel, self.feat_bias = w["feat_kernel"], w["feat_bias"]
        self.embedding = w["embedding"]
        self.lstm = (w["lstm_kernel"], w["lstm_recurrent"], w["lstm_bias"])
        self.merge_kernel, self.merge_bias = w["merge_kernel"], w["merge_bias"]
        self.logits_kernel, self.logits_bias = w["logits_kernel"], w["logits_bias"]
        self.units = self.lstm[1].shape[0]
        self.feature_dim = self.feat_kernel.shape[0]
        self.start, self.end = start, end
        self.vocab_size = self.logits_bias.shape[0]
        self._greedy_gates = greedy_gate_weights(w["embedding"], *self.lstm)
        self._greedy_mask = np.zeros(self.vocab_size, np.float32)
        self._greedy_mask[[PAD, start]] = -np.inf

    @classmethod
    def load(cls, path, start: int, end: int) -> "StepDecoder":
        """Read a ``decoder.npz`` file."""
        with np.load(path) as data:
            return cls({k: data[k] for k in data.files}, start, end)

    def project(self, features: np.ndarray) -> np.ndarray:
        """The image branch of the merge: relu(features @ W + b)."""
        return np.maximum(features.astype(np.float32) @ self.feat_kernel + self.feat_bias, 0.0)

    def step(self, projected, tokens, h, c):
        """Feed one token per row; return next-word logits and the new (h, c)."""
        h, c = lstm_step(self.embedding[tokens], h, c, *self.lstm)
        merged = np.maximum((projected + h) @ self.merge_kernel + self.merge_bias, 0.0)
        return merged @ self.logits_kernel + self.logits_bias, h, c

    def teacher_forced_logits(self, features: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Logits after each of ``tokens`` (start token first), shape (len(tokens), vocab)."""
        projected = self.project(features[None])
        h = c = np.zeros((1, self.units), np.float32)
        out = []
        for t in tokens:
            logits, h, c = self.step(projected, np.array([t]), h, c)
            out.append(logits[0])
        return np.stack(out)

    def teacher_forced_rows(self, features: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Logits after each of ``tokens`` (start token first) for many feature rows at once, (N, len(tokens), vocab).

        Every row reads the same tokens, so the token's input to the LSTM is computed once
        per step and shared (a product of a few rows: as fast as one, where a large one
        can wait on the BLAS library's threads on a busy CPU).
        """
        kernel, recurrent, bias = self.lstm
        projected = self.project(np.asarray(features, np.float32))
        h = c = np.zeros((len(projected), self.units), np.float32)
        out = np.empty((len(projected), len(tokens), self.vocab_size), np.float32)
        for t, token in enumerate(tokens):
            z = h @ recurrent + (self.embedding[token] @ kernel + bias)
            i, f, g, o = np.split(z, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            merged = np.maximum((projected + h) @ self.merge_kernel + self.merge_bias, 0.0)
            out[:, t] = merged @ self.logits_kernel + self.logits_bias
        return out

    def greedy(self, features: np.ndarray, max_length: int) -> Caption:
        """Most likely word at each step until the end token or ``max_length`` words.

        The same step as ``step``, in fewer numpy calls (a caption of a small model costs
        call overheads, not arithmetic): the token's LSTM input comes from a table made once
        (``greedy_gate_weights``), and one ``tanh`` gives all four gates.
        """
        token_gates, recurrent = self._greedy_gates
        units = self.units
        projected = self.project(features[None])[0]
        h = c = np.zeros(units, np.float32)
        token, tokens, logps = self.start, [], []
        for step in range(max_length + 1):
            gates = np.tanh(token_gates[token] + h @ recurrent)
            sig = gates * 0.5 + 0.5  # sigmoid of the i, f, o gates (their inputs were halved)
            c = sig[units:2 * units] * c + sig[:units] * gates[2 * units:3 * units]
            h = sig[3 * units:] * np.tanh(c)
            merged = np.maximum((projected + h) @ self.merge_kernel + self.merge_bias, 0.0)
            shifted = merged @ self.logits_kernel + self.logits_bias
            shifted -= shifted.max()
            # After max_length words only the end token is left, as in beam search.
            token = self.end if step == max_length else int(np.argmax(shifted + self._greedy_mask))
            logps.append(float(shifted[token] - np.log(np.exp(shifted).sum())))
            if token == self.end:
                break
            tokens.append(token)
        return Caption(tokens, float(sum(logps)), logps[:len(tokens)])

    def beam(self, features: np.ndarray, max_length: int, width: int = 3) -> Caption:
        """Log-probability beam search; stops early once no open beam can beat the best finished one."""
        projected = self.project(features[None])
        h = c = np.zeros((1, self.units), np.float32)
        beams = [([], 0.0, [])]  # (tokens, summed log-prob, per-word log-probs)
        last = np.array([self.start])
        finished: list[Caption] = []
        for step in range(max_length + 1):
            logits, h, c = self.step(np.repeat(projected, len(beams), 0), last, h, c)
            logp = log_softmax(logits)
            logp[:, PAD] = logp[:, self.start] = -np.inf
            if step == max_length:  # out of room: only the end token is allowed
                keep = logp[:, self.end].copy()
                logp[:] = -np.inf
                logp[:, self.end] = keep
            totals = np.array([b[1] for b in beams])[:, None] + logp
            flat = np.argsort(totals, axis=None)[::-1][:2 * width]
            candidates, rows = [], []
            for idx in flat:
                row, token = divmod(int(idx), logp.shape[1])
                tokens, _, logps = beams[row]
                total = float(totals[row, token])
                if not np.isfinite(total):
                    continue
                if token == self.end:
                    finished.append(Caption(tokens, total, logps))
                elif len(candidates) < width:
                    candidates.append((tokens + [token], total, logps + [float(logp[row, token])]))
                    rows.append(row)
            best_done = max((f.score for f in finished), default=-np.inf)
            if not candidates or best_done >= max(cand[1] for cand in candidates):
                break
            beams = candidates
            h, c = h[rows], c[rows]
            last = np.array([cand[0][-1] for cand in candidates])
        if not finished:  # unreachable with a finite end log-prob; keep the best open beam
            tokens, total, logps = beams[0]
            return Caption(tokens, total, logps)
        return max(finished, key=lambda f: f.score)

    def beam_seed(self, features: np.ndarray, max_length: int, width: int = 3) -> Caption:
        """The seed project's ``beam_search_predictions``, for users who compare with its captions.

        Each beam is extended by its ``width`` most likely words; the ``width`` sequences
        with the largest *sum of raw word probabilities* (not log-probabilities) are kept;
        every beam runs to ``max_length`` words, through ``endseq`` (which is an ordinary
        word here); the best one is cut at its first ``endseq``. Summed probabilities favour
        sequences of many moderately likely words over a short, likely caption, and ending
        is never scored, which is why ``beam`` (log-probabilities, stops at ``endseq``) is
        the default. Padding and the start token (which a trained model never predicts)
        are excluded, as in ``beam``. ``score`` is the summed log-probability of the words
        kept and of the end token.
        """
        projected = self.project(features[None])
        h = c = np.zeros((1, self.units), np.float32)
        beams = [([], 0.0, [])]  # (tokens, summed probability, per-word log-probs)
        last = np.array([self.start])
        for _ in range(max_length):
            logits, h, c = self.step(np.repeat(projected, len(beams), 0), last, h, c)
            logp = log_softmax(logits)
            logp[:, PAD] = logp[:, self.start] = -np.inf
            probs = np.exp(logp)
            candidates = []  # (summed probability, beam row, word), in the seed's order
            for row, (_, total, _) in enumerate(beams):
                for token in np.argsort(probs[row], kind="stable")[-width:]:
                    candidates.append((total + float(probs[row, token]), row, int(token)))
            candidates = sorted(candidates, key=lambda cand: cand[0])[-width:]
            beams = [(beams[row][0] + [token], total, beams[row][2] + [float(logp[row, token])])
                     for total, row, token in candidates]
            rows = [row for _, row, _ in candidates]
            h, c = h[rows], c[rows]
            last = np.array([token for _, _, token in candidates])
        tokens, _, logps = beams[-1]
        if self.end in tokens:
            cut = tokens.index(self.end)
            return Caption(tokens[:cut], float(sum(logps[:cut + 1])), logps[:cut])
        return Caption(tokens, float(sum(logps)), logps)
