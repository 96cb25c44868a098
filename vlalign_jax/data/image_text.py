"""Image-caption data for contrastive training: which source, which tokenizer, which preprocessing.

`config.data.name` selects the source (`synthetic_shapes` is built in and needs no download);
`config.data.tokenizer` is `words` (the synthetic dataset's closed vocabulary) or `clip` (BPE).
Preprocessing yields `pixels` float32 [H, W, 3] normalised with CLIP's mean/std and `tokens` int32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np

from vlalign_jax.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

_MEAN = np.asarray(OPENAI_CLIP_MEAN, np.float32) * 255.0
_STD = np.asarray(OPENAI_CLIP_STD, np.float32) * 255.0


@dataclasses.dataclass(frozen=True)
class ImageTextData:
    train: Any
    heldout: Any
    tokenizer: Callable[[list[str]], np.ndarray]
    vocab_size: int

    def preprocess(self, example: dict) -> dict:
        return {"pixels": normalize_uint8(example["image"]), "tokens": self.tokenizer([example["caption"]])[0]}


def normalize_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 normalised exactly like ToTensor + Normalize(CLIP mean, std)."""
    return ((image.astype(np.float32) - _MEAN) / _STD).astype(np.float32)


def make_tokenizer(data: ml_collections.ConfigDict, context_length: int, vocabulary: list[str] | None):
    if data.tokenizer == "words":
        from vlalign_jax.data.word_tokenizer import WordTokenizer
        if vocabulary is None:
            raise ValueError(f"data.tokenizer='words' needs a source with a closed vocabulary; {data.name} has none")
        tokenizer = WordTokenizer(vocabulary, context_length)
        return tokenizer, tokenizer.vocab_size
    if data.tokenizer == "clip":
        from vlalign_jax.data.tokenizers import ClipTokenizer
        tokenizer = ClipTokenizer(data.get("vocab_path") or None, context_length)
        return tokenizer, tokenizer.vocab_size
    raise ValueError(f"unknown data.tokenizer {data.tokenizer!r}; expected 'words' or 'clip'")


def image_text_data(data: ml_collections.ConfigDict, image_size: int, context_length: int) -> ImageTextData:
    """Build the train and held-out sources named by `config.data`."""
    if data.name != "synthetic_shapes":
        raise ValueError(f"unknown data.name {data.name!r}; available: synthetic_shapes")
    from vlalign_jax.data.sources.synthetic import SyntheticShapes, SyntheticShapesConfig

    shapes = SyntheticShapesConfig(image_size=image_size, max_objects=data.get("max_objects", 3))
    fields = ("image", "caption")
    train = SyntheticShapes("train", data.num_train, data.seed, shapes, fields)
    heldout = SyntheticShapes("heldout", data.num_heldout, data.seed, shapes, fields)
    tokenizer, vocab_size = make_tokenizer(data, context_length, SyntheticShapes.vocabulary())
    return ImageTextData(train, heldout, tokenizer, vocab_size)
