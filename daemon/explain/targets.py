"""What is explained: small named targets that become the backend's weight rows (numpy only).

The captioner's input is ``[startseq, w0, w1, ...]`` (teacher forcing on the published
caption), so the logits at position t predict caption word t. A backend scores row i as
``sum_t weights[i, t] * log p(word t)`` (``daemon.explain.backends``): a word target is a
one-hot row, the whole caption a row of ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WordLogProb:
    """Teacher-forced log-probability of caption word ``index``."""

    index: int

    def weights(self, length: int) -> np.ndarray:
        """One-hot (length,) row: only word ``index`` counts."""
        row = np.zeros(length, np.float32)
        row[self.index] = 1.0
        return row


@dataclass(frozen=True)
class CaptionLogProb:
    """Teacher-forced log-probability of the whole caption (sum over its words)."""

    def weights(self, length: int) -> np.ndarray:
        """A (length,) row of ones: every word counts."""
        return np.ones(length, np.float32)


def word_targets(indices) -> list[WordLogProb]:
    """One WordLogProb per requested word index."""
    return [WordLogProb(int(i)) for i in indices]


def weight_rows(targets: list, length: int) -> np.ndarray:
    """The (len(targets), length) weight rows of targets for a caption of ``length`` words."""
    return np.stack([t.weights(length) for t in targets]).astype(np.float32) if targets \
        else np.zeros((0, length), np.float32)


def teacher_tokens(start: int, tokens: list[int]) -> list[int]:
    """The model input for a caption's word tokens: start token, then all words but none after."""
    return [int(start)] + [int(t) for t in tokens]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64 for the small differences of a confident model."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def word_logprobs(logits: np.ndarray, teacher: list[int]) -> np.ndarray:
    """(N, L-1) log-probability of each caption word from (N, L, V) logits of the teacher rows ``teacher``."""
    words = np.asarray(teacher[1:], int)
    return log_softmax(logits[:, :len(words)])[:, np.arange(len(words)), words]
