"""FG-CLIP 2's text tokenizer: the SigLIP 2 Gemma tokenizer, applied as FG-CLIP 2 applies it.

FG-CLIP 2 (360CVGroup/FG-CLIP, `fgclip2/train/train_fgclip2.py`, `fgclip2/eval/*.py`, README) loads
the checkpoint folder's tokenizer with `AutoTokenizer.from_pretrained` and tokenizes every text as

    tokenizer([t.lower() for t in texts], padding="max_length", max_length=L, truncation=True)

with L = 64 for short captions and box (region) texts and L = 196 for long captions. Everything else
comes from the folder's own files, and so it does here: the vocabulary (256k Gemma pieces, `<pad>` 0,
`<eos>` 1, `<bos>` 2, `<unk>` 3), BPE with byte fallback, and which special tokens are added (SigLIP 2's
`tokenizer_config.json` says `add_bos_token: false, add_eos_token: true`: no BOS, one EOS after the
text, kept when a text is truncated). Rows are padded with `<pad>` after the text: the text tower
pools the last position, which FG-CLIP 2 and SigLIP 2 train with as a pad whenever the text is
shorter than L, so the padding side is pinned to "right" whatever the folder says (pass
`padding_side=None` to keep the folder's setting).

Training feeds `input_ids` only; the eval scripts pass the tokenizer's whole output, which adds an
`attention_mask` (1 on text and special tokens, 0 on padding): `encode` returns both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

SHORT_LENGTH = 64  # short captions, class prompts ("a photo of ..."), walk_type "short"
BOX_LENGTH = 64  # region texts, walk_type "box"
LONG_LENGTH = 196  # long captions, walk_type "long"


def _auto_tokenizer() -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError(
            "The FG-CLIP 2 (Gemma) tokenizer needs Hugging Face transformers and tokenizers: "
            "`pip install 'vlalign-jax[text]'` (transformers and tokenizers)."
        ) from e
    return AutoTokenizer


class GemmaTokenizer:
    """Lower-cased text to `[batch, context_length]` int32 Gemma ids, padded with `pad_id` on the right.

    `path` is a local folder with the tokenizer files of an FG-CLIP 2 / SigLIP 2 checkpoint
    (`tokenizer.json`, `tokenizer_config.json`, ...); nothing is downloaded.
    """

    def __init__(self, path: str | os.PathLike, context_length: int = SHORT_LENGTH, lowercase: bool = True,
                 padding_side: str | None = "right"):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Gemma tokenizer folder not found: {path}")
        self._tokenizer = _auto_tokenizer().from_pretrained(os.fspath(path), local_files_only=True,
                                                            trust_remote_code=False)  # never prompt or run folder code
        if padding_side is not None:
            self._tokenizer.padding_side = padding_side
        if self._tokenizer.pad_token_id is None:
            raise ValueError(f"{path}: the tokenizer has no pad token, so rows cannot be padded")
        self.context_length = context_length
        self.lowercase = lowercase

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (256000 for the Gemma vocabulary)."""
        return len(self._tokenizer)

    @property
    def pad_id(self) -> int:
        return int(self._tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int | None:
        return self._tokenizer.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self._tokenizer.bos_token_id

    def encode(self, texts: str | Sequence[str], context_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(input_ids, attention_mask)`, both int32 `[batch, context_length]`; a string is a batch of one."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [t.lower() if self.lowercase else t for t in texts]
        length = self.context_length if context_length is None else context_length
        if not texts:
            empty = np.zeros((0, length), dtype=np.int32)
            return empty, empty.copy()
        out = self._tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                              return_attention_mask=True)
        ids = np.asarray(out["input_ids"], dtype=np.int32)
        mask = np.asarray(out["attention_mask"], dtype=np.int32)
        if ids.shape != (len(texts), length):  # e.g. max_length below the number of special tokens
            raise ValueError(f"tokenizer gave shape {ids.shape}, expected {(len(texts), length)}")
        return ids, mask

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids `[batch, context_length]` int32, as FG-CLIP 2's training feeds them."""
        return self.encode(texts, context_length)[0]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
