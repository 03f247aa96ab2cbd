"""What is explained: small callables on one row of the sequence-form logits.

The captioner's input is ``[startseq, w0, w1, ...]`` (teacher forcing on the published
caption), so the logits at position t predict caption word t. A target maps the (T, V)
logits of one row to the scalar whose gradient the methods follow.
"""

from __future__ import annotations

from keras import ops


class WordLogProb:
    """Teacher-forced log-probability of caption word ``index`` (token ``token``)."""

    def __init__(self, index: int, token: int):
        self.index, self.token = int(index), int(token)

    def __call__(self, logits):
        """log_softmax(logits)[index, token] for one row's (T, V) logits."""
        return ops.log_softmax(logits[self.index], axis=-1)[self.token]

    def __repr__(self) -> str:
        return f"WordLogProb(index={self.index}, token={self.token})"


class CaptionLogProb:
    """Teacher-forced log-probability of the whole caption (sum over its words)."""

    def __init__(self, tokens: list[int]):
        self.tokens = [int(t) for t in tokens]

    def __call__(self, logits):
        """Sum over t of log_softmax(logits)[t, token_t] for one row's (T, V) logits."""
        logp = ops.log_softmax(logits[:len(self.tokens)], axis=-1)
        picked = ops.take_along_axis(logp, ops.convert_to_tensor(self.tokens, "int32")[:, None], axis=1)
        return ops.sum(picked)

    def __repr__(self) -> str:
        return f"CaptionLogProb({len(self.tokens)} words)"


def word_targets(tokens: list[int], indices: list[int]) -> list[WordLogProb]:
    """One WordLogProb per requested word index of a caption's word tokens."""
    return [WordLogProb(i, tokens[i]) for i in indices]


def teacher_tokens(start: int, tokens: list[int]) -> list[int]:
    """The model input for a caption's word tokens: start token, then all words but none after."""
    return [int(start)] + [int(t) for t in tokens]
