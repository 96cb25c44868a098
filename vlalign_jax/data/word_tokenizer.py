"""A closed-vocabulary word tokenizer, for the synthetic dataset's small, known vocabulary.

Ids follow CLIP's conventions so the same text tower and pooling work unchanged: 0 pads, the start
token is 1 and the end token is the largest id (CLIP pools at argmax(token_ids)). Lowercases, splits
on whitespace and detaches `.` and `,`; an unknown word is an error naming it.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

PAD_ID, SOT_ID = 0, 1
_WORD = re.compile(r"[a-z0-9']+|[.,]")


class WordTokenizer:
    def __init__(self, vocabulary: Sequence[str], context_length: int = 32):
        words = sorted(set(vocabulary) | {".", ","})
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.eot_token_id = len(words) + 2
        self.vocab_size = len(words) + 3
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        out = []
        for word in _WORD.findall(text.lower()):
            if word not in self.ids:
                raise ValueError(f"word {word!r} of {text!r} is not in the tokenizer's vocabulary")
            out.append(self.ids[word])
        return out

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int32 [batch, context_length]: start, words, end, zero padding; long texts keep the end token."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text), self.eot_token_id][:length]
            ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out
