"""CLIP's byte-level BPE text tokenizer (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision", Sec. 2.4), returning numpy ids.

It reproduces open_clip's `SimpleTokenizer` with its default `clean='lower'` id for id, so
checkpoints converted from PyTorch see exactly the token ids they were trained on, without torch
in the input pipeline. The vocabulary comes from the standard merges file
`bpe_simple_vocab_16e6.txt.gz`.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
# CLIP's 49408 ids are 2 * 256 byte symbols + 48894 merges + 2 special tokens. The merges file
# lists many more merges (262144) than CLIP used, after a version header line.
NUM_MERGES = 48894
BPE_CACHE_SIZE = 1 << 17

# Split cleaned text into words: a special token, an English contraction suffix, a run of letters,
# a single digit (so numbers never merge across digits), or a run of other non-space characters.
# IGNORECASE is kept from CLIP although the text is already lowercased: it makes U+0345 (combining
# ypogegrammeni, which case-folds to a letter) match no branch, so CLIP silently drops it.
_WORD_PATTERN = regex.compile(
    rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


def _printable_bytes() -> list[int]:
    """The bytes that stand for themselves in the BPE alphabet: visible Latin-1 characters."""
    return [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]


def _byte_alphabet() -> dict[int, str]:
    """Map each byte to one visible character, in CLIP's vocabulary order.

    BPE runs on strings, and whitespace or control characters would break its space-separated
    merges, so every other byte is shifted to the code points from 256 upwards in byte order. The
    dict lists the printable bytes first and the shifted ones after, which is the order CLIP gives
    the first 256 vocabulary entries.
    """
    printable = _printable_bytes()
    shifted = [b for b in range(256) if b not in set(printable)]
    alphabet = {b: chr(b) for b in printable}
    alphabet.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return alphabet


def clean_text(text: str) -> str:
    """open_clip's default ('lower') text cleaning, applied before splitting into words.

    ftfy repairs mojibake, html entities are unescaped twice because web captions are often
    double-escaped (`&amp;amp;`), and whitespace runs are whatever `str.split` splits on.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _find_open_clip_vocab() -> Path:
    """Find the merges file inside an installed open_clip, without importing it (or torch)."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec and spec.submodule_search_locations) or ():
        candidate = Path(location) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"No CLIP BPE vocabulary given and no {VOCAB_FILENAME} found in an installed open_clip "
        "package: pass vocab_path=<path to bpe_simple_vocab_16e6.txt(.gz)> or "
        "`pip install open_clip_torch`."
    )


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges CLIP uses, in priority order, from a gzipped or plain merges file."""
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1 : 1 + NUM_MERGES]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) < NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(
            f"{path} is not a CLIP merges file: need {NUM_MERGES} 'a b' lines after the header"
        )
    return merges


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of `pair`, scanning left to right."""
    first, second = pair
    merged, i = [], 0
    while i < len(symbols):
        if symbols[i] == first and i + 1 < len(symbols) and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class ClipTokenizer:
    """CLIP's tokenizer: cleaned, lowercased text to `[batch, context_length]` int32 ids.

    Each row is the start token, the BPE ids, the end token, then zeros. CLIP pools the text tower
    at the end token, found as the largest id in the row, so a row that is too long is cut and its
    last position overwritten with the end token, as open_clip does.
    """

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = 77):
        path = Path(vocab_path) if vocab_path is not None else _find_open_clip_vocab()
        merges = _read_merges(path)
        self._byte_to_symbol = _byte_alphabet()
        self._symbol_to_byte = {s: b for b, s in self._byte_to_symbol.items()}
        base = list(self._byte_to_symbol.values())
        word_ends = [s + END_OF_WORD for s in base]
        vocab = base + word_ends + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self._encoder = {token: i for i, token in enumerate(vocab)}
        self._decoder = dict(enumerate(vocab))
        self._merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._special_ids = {t: self._encoder[t] for t in (SOT_TOKEN, EOT_TOKEN)}
        self.context_length = context_length
        self._cache_words()

    def _cache_words(self) -> None:
        # Per instance, so the cache dies with the tokenizer; captions repeat words heavily.
        self._word_ids = functools.lru_cache(maxsize=BPE_CACHE_SIZE)(self._bpe_word)

    def __getstate__(self) -> dict:
        """Pickle without the cache (grain's worker processes get a copy of the tokenizer)."""
        return {k: v for k, v in self.__dict__.items() if k != "_word_ids"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache_words()

    @property
    def vocab_size(self) -> int:
        return len(self._encoder)

    @property
    def sot_token_id(self) -> int:
        return self._special_ids[SOT_TOKEN]

    @property
    def eot_token_id(self) -> int:
        return self._special_ids[EOT_TOKEN]

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word: its UTF-8 bytes, merged greedily by merge priority."""
        if word in self._special_ids:
            return (self._special_ids[word],)
        chars = [self._byte_to_symbol[b] for b in word.encode("utf-8")]
        symbols = chars[:-1] + [chars[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:])
            ranked = [(self._merge_ranks[p], p) for p in pairs if p in self._merge_ranks]
            if not ranked:
                break
            symbols = _merge_pair(symbols, min(ranked)[1])
        return tuple(self._encoder[s] for s in symbols)

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` after cleaning, without start/end tokens or padding."""
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, every id included (strip padding first); word ends become spaces.

        Invalid UTF-8 from a cut multi-byte character decodes to U+FFFD rather than failing.
        """
        symbols = "".join(self._decoder[int(i)] for i in ids)
        text = bytes(self._symbol_to_byte[c] for c in symbols).decode("utf-8", errors="replace")
        return text.replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids `[batch, context_length]` int32; a single string gives a batch of one."""
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else context_length
        if length < 2:
            raise ValueError(f"context_length must fit start and end tokens, got {length}")
        out = np.zeros((len(texts), length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: length - 1] + [self.eot_token_id]
            out[row, : len(ids)] = ids
        return out
