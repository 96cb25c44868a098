"""Image-caption data for contrastive training: which source, which tokenizer, which preprocessing.

`config.data.name` selects the source:
- `synthetic_shapes`: built in, no download; images are already model-sized, so no augmentation.
- `csv`: open_clip's CSV/TSV tables (`data.train_path`, `data.heldout_path`, `data.image_root`,
  `data.csv_image_key`, `data.csv_caption_key`, `data.csv_separator`).
- `webdataset`: local tar shards (`data.train_shards`, `data.heldout_shards`, brace expansion).
- `degla_json`: DeGLA's captions with LLM-made hard negatives over COCO images (`data.train_path`,
  `data.heldout_path`, `data.image_root`).
With `num_negatives > 0` (DeGLA, NegCLIP) every example also carries `negative_tokens` [K, L]: the
synthetic set and `degla_json` provide the negative captions.
For the on-disk formats, training uses open_clip's RandomResizedCrop(scale=(0.9, 1)) transform with a
per-example rng from the pipeline, evaluation its resize + centre crop.
`config.data.tokenizer` is `words` (the synthetic dataset's closed vocabulary) or `clip` (BPE).
Preprocessing yields `pixels` float32 [H, W, 3] normalised with CLIP's mean/std and `tokens` int32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipEvalTransform, ClipTrainTransform

_MEAN = np.asarray(OPENAI_CLIP_MEAN, np.float32) * 255.0
_STD = np.asarray(OPENAI_CLIP_STD, np.float32) * 255.0
SOURCES = ("synthetic_shapes", "csv", "webdataset", "degla_json")


def normalize_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 normalised exactly like ToTensor + Normalize(CLIP mean, std)."""
    return ((np.asarray(image).astype(np.float32) - _MEAN) / _STD).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Unaugmented:
    """Model-sized uint8 images (the synthetic set): normalise only, train and eval alike."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return normalize_uint8(image)


@dataclasses.dataclass(frozen=True)
class ImageTextData:
    """Train and held-out sources (`heldout` may be None) with their preprocessing."""

    train: Any
    heldout: Any
    tokenizer: Callable[[list[str]], np.ndarray]
    vocab_size: int
    train_image: Callable[[Any, np.random.Generator], np.ndarray]
    eval_image: Callable[[Any], np.ndarray]
    num_negatives: int = 0

    def train_preprocess(self, example: dict, rng: np.random.Generator) -> dict:
        return {"pixels": self.train_image(example["image"], rng), **self.texts(example)}

    def eval_preprocess(self, example: dict) -> dict:
        return {"pixels": self.eval_image(example["image"]), **self.texts(example)}

    def texts(self, example: dict) -> dict:
        """`tokens` [L] of the caption and, with negatives, `negative_tokens` [K, L]."""
        captions = [example["caption"]]
        if self.num_negatives:
            negatives = list(example["negative_captions"])
            if len(negatives) < self.num_negatives:
                raise RecordError(f"{len(negatives)} negative captions, need {self.num_negatives}")
            captions += negatives[: self.num_negatives]
        if any(not text or not text.strip() for text in captions):
            raise RecordError("empty caption")
        tokens = self.tokenizer(captions)
        return {"tokens": tokens[0], "negative_tokens": tokens[1:]} if self.num_negatives else {"tokens": tokens[0]}


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


def _synthetic(data: ml_collections.ConfigDict, image_size: int, num_negatives: int
               ) -> tuple[Any, Any, list[str] | None]:
    from vlalign_jax.data.sources.synthetic import SyntheticShapes, SyntheticShapesConfig

    shapes = SyntheticShapesConfig(image_size=image_size, max_objects=data.get("max_objects", 3),
                                   num_negatives=num_negatives)
    fields = ("image", "caption", "negative_captions") if num_negatives else ("image", "caption")
    train = SyntheticShapes("train", data.num_train, data.seed, shapes, fields)
    heldout = SyntheticShapes("heldout", data.num_heldout, data.seed, shapes, fields)
    return train, heldout, SyntheticShapes.vocabulary()


def _csv(data: ml_collections.ConfigDict) -> tuple[Any, Any, None]:
    from vlalign_jax.data.sources.csv_captions import CsvImageText

    def table(path: str):
        return CsvImageText(path, data.get("image_root") or None, data.csv_image_key, data.csv_caption_key,
                            data.csv_separator) if path else None

    return table(data.train_path), table(data.get("heldout_path", "")), None


def _webdataset(data: ml_collections.ConfigDict) -> tuple[Any, Any, None]:
    from vlalign_jax.data.sources.webdataset import WebDatasetImageText

    def shards(pattern: str):
        return WebDatasetImageText(pattern, data.get("caption_field", "txt")) if pattern else None

    return shards(data.train_shards), shards(data.get("heldout_shards", "")), None


def _degla_json(data: ml_collections.ConfigDict, num_negatives: int) -> tuple[Any, Any, None]:
    from vlalign_jax.data.sources.degla_json import DeglaJson

    def records(path: str):
        return DeglaJson(path, data.image_root, num_negatives) if path else None

    return records(data.train_path), records(data.get("heldout_path", "")), None


def image_text_data(data: ml_collections.ConfigDict, image_size: int, context_length: int,
                    num_negatives: int = 0) -> ImageTextData:
    """Build the train and held-out sources named by `config.data` (with K negative captions each)."""
    if data.name == "synthetic_shapes":
        train, heldout, vocabulary = _synthetic(data, image_size, num_negatives)
        train_image, eval_image = _Unaugmented(), _Unaugmented()
    elif data.name == "degla_json":
        train, heldout, vocabulary = _degla_json(data, num_negatives or 4)
        train_image = ClipTrainTransform(image_size, tuple(data.get("train_crop_scale", (0.9, 1.0))))
        eval_image = ClipEvalTransform(image_size)
    elif data.name in ("csv", "webdataset"):
        if num_negatives:
            raise ValueError(f"data.name={data.name!r} has no negative captions; use degla_json or synthetic_shapes")
        train, heldout, vocabulary = (_csv if data.name == "csv" else _webdataset)(data)
        train_image = ClipTrainTransform(image_size, tuple(data.get("train_crop_scale", (0.9, 1.0))))
        eval_image = ClipEvalTransform(image_size)
    else:
        raise ValueError(f"unknown data.name {data.name!r}; available: {', '.join(SOURCES)}")
    tokenizer, vocab_size = make_tokenizer(data, context_length, vocabulary)
    return ImageTextData(train, heldout, tokenizer, vocab_size, train_image, eval_image, num_negatives)
