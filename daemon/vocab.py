"""The caption vocabulary: ``vocab.txt`` holds one word per line; line k is token k+1.

Token 0 is padding (the seed's Keras Tokenizer numbering). Captions are wrapped in the
start and end tokens named in the bundle manifest (``startseq`` / ``endseq`` by default).
"""

from __future__ import annotations

import re
from pathlib import Path

PAD = 0
_WORD = re.compile(r"[a-z0-9]+")


def normalise_caption(text: str) -> list[str]:
    """Lower-case words of a caption, punctuation dropped."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Maps words to token ids and back."""

    def __init__(self, words: list[str], start: str = "startseq", end: str = "endseq"):
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        for special in (start, end):
            if special not in words:
                raise ValueError(f"vocabulary lacks the special token {special!r}")
        self.words = list(words)
        self.index = {w: i + 1 for i, w in enumerate(self.words)}
        self.start_word, self.end_word = start, end
        self.start, self.end = self.index[start], self.index[end]

    @classmethod
    def load(cls, path: str | Path, start: str = "startseq", end: str = "endseq") -> "Vocabulary":
        """Read a ``vocab.txt`` file."""
        words = [w.strip() for w in Path(path).read_text().splitlines() if w.strip()]
        return cls(words, start, end)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as ``vocab.txt``."""
        Path(path).write_text("\n".join(self.words) + "\n")

    def __len__(self) -> int:
        """Number of token ids, padding included."""
        return len(self.words) + 1

    def encode(self, caption: str) -> list[int]:
        """Token ids of a caption's known words, without start and end tokens."""
        return [self.index[w] for w in normalise_caption(caption) if w in self.index]

    def decode(self, tokens) -> str:
        """Caption text of token ids, special tokens and padding left out."""
        skip = {PAD, self.start, self.end}
        return " ".join(self.words[t - 1] for t in tokens if t not in skip)
