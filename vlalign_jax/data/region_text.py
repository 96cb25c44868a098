"""Region-text data for FG-CLIP 1 and 2: images with short and long captions, boxes, box texts and
per-box hard negatives, padded to static shapes.

`config.data.name` is `synthetic_shapes` (built in) or `finehard` (`data.train_path`, `data.image_root`).
Per example the pipeline yields (research/fgclip.md sections 3.8, 4.1, 4.3):
- images: FG-CLIP 1 (`image_mode="square"`): resized to a square (aspect not kept, as the reference's
  `PIL.resize`), CLIP mean/std, `pixels` [S, S, 3]. FG-CLIP 2 (`image_mode="naflex"`): SigLIP 2 NaFlex
  patches at one `max_num_patches` bucket (`pixel_values`, `pixel_attention_mask`, `spatial_shapes`);
  the reference picks a bucket per batch, which here would recompile per bucket, so the bucket is a
  config value. With `data.min_image_side` (released: 128) smaller images are first resized to a
  `data.small_image_size` square (512), as the reference does.
- texts: `short_tokens` [Ls] (the short caption), `long_tokens` [Ll], `region_tokens` [M, Ls] (each box's
  short or long description, drawn at random per step as the reference does), `negative_tokens`
  [M, K, Ls] with `negative_mask` [M, K].
- boxes: `boxes` [M, 4] xyxy normalised to [0, 1] and `box_mask` [M].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, to_normalized_array

IMAGE_MODES = ("square", "naflex")
REGION_SOURCES = ("synthetic_shapes", "finehard")


@dataclasses.dataclass(frozen=True)
class RegionTextData:
    """Sources plus everything needed to turn a record into fixed-shape arrays."""

    train: Any
    heldout: Any
    short_tokenizer: Callable[[Sequence[str]], np.ndarray]
    long_tokenizer: Callable[[Sequence[str]], np.ndarray]
    vocab_size: int
    image_mode: str
    image_size: int  # square side (square mode)
    patch_size: int  # NaFlex patch (naflex mode)
    max_num_patches: int  # NaFlex bucket (naflex mode)
    max_boxes: int
    num_negatives: int
    long_region_probability: float = 0.5  # chance a box is described by its long expression
    # NaFlex: an image with a side under `min_image_side` px is first resized to a square of
    # `small_image_size` px (FG-CLIP 2's `box_image_size` rule, 128 -> 512); 0 = off
    min_image_side: int = 0
    small_image_size: int = 512

    def image_arrays(self, image: Any) -> dict[str, np.ndarray]:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if self.image_mode == "square":
            if image.size != (self.image_size, self.image_size):
                image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            return {"pixels": to_normalized_array(image.convert("RGB"), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}
        from vlalign_jax.data.naflex import naflex_preprocess

        if self.min_image_side and min(image.size) < self.min_image_side:
            image = image.resize((self.small_image_size, self.small_image_size), Image.Resampling.BICUBIC)
        out = naflex_preprocess(image, self.patch_size, self.max_num_patches)
        return {"pixel_values": out["pixel_values"], "pixel_attention_mask": out["pixel_attention_mask"],
                "spatial_shapes": out["spatial_shapes"]}

    def preprocess(self, example: dict, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """One record -> fixed-shape arrays; `rng` None (evaluation) always takes the short texts."""
        m, k = self.max_boxes, self.num_negatives
        boxes, box_mask = np.zeros((m, 4), np.float32), np.zeros((m,), bool)
        n = min(int(np.sum(example["box_mask"])), m)
        boxes[:n], box_mask[:n] = np.asarray(example["boxes"], np.float32)[:n], True
        shorts, longs = list(example["region_short"])[:n], list(example["region_long"])[:n]
        use_long = rng.random(n) < self.long_region_probability if rng is not None else np.zeros(n, bool)
        region_texts = [longs[i] if use_long[i] else shorts[i] for i in range(n)] + [""] * (m - n)
        negatives, negative_mask = [[""] * k for _ in range(m)], np.zeros((m, k), bool)
        for i, (texts, valid) in enumerate(zip(example["region_negatives"][:n], example["negative_mask"][:n])):
            for j in range(min(k, len(texts))):
                negatives[i][j], negative_mask[i, j] = (texts[j], True) if valid[j] else ("", False)
        if not example["caption"].strip() or not example["long_caption"].strip():
            raise RecordError("empty caption")
        short = self.short_tokenizer([example["caption"], *region_texts, *(t for row in negatives for t in row)])
        return {**self.image_arrays(example["image"]),
                "short_tokens": short[0], "region_tokens": short[1:1 + m],
                "negative_tokens": short[1 + m:].reshape(m, k, -1), "negative_mask": negative_mask,
                "long_tokens": self.long_tokenizer([example["long_caption"]])[0],
                "boxes": boxes, "box_mask": box_mask}

    def train_preprocess(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.preprocess(self.standard(example), rng)

    def eval_preprocess(self, example: dict) -> dict[str, np.ndarray]:
        return self.preprocess(self.standard(example), None)

    def standard(self, example: dict) -> dict:
        """Synthetic and FineHARD records in one layout (normalised boxes, a negative mask per box)."""
        if "normalized_boxes" in example:  # FineHARD
            return {**example, "boxes": example["normalized_boxes"], "negative_mask": example["region_negative_mask"]}
        image = np.asarray(example["image"])
        height, width = image.shape[:2]
        count = int(np.sum(example["box_mask"]))
        boxes = np.asarray(example["boxes"], np.float32) / np.asarray([width, height, width, height], np.float32)
        return {**example, "boxes": boxes,
                "negative_mask": [[True] * len(texts) for texts in example["region_negatives"][:count]]}


def _tokenizers(data: ml_collections.ConfigDict, short_length: int, long_length: int, vocabulary):
    from vlalign_jax.data.image_text import make_tokenizer

    if data.tokenizer == "gemma":
        from vlalign_jax.data.gemma_tokenizer import GemmaTokenizer

        short = GemmaTokenizer(data.tokenizer_path, context_length=short_length)
        long = GemmaTokenizer(data.tokenizer_path, context_length=long_length)
        return short, long, short.vocab_size
    short, vocab_size = make_tokenizer(data, short_length, vocabulary)
    long, _ = make_tokenizer(data, long_length, vocabulary)
    return short, long, vocab_size


def region_text_data(data: ml_collections.ConfigDict, image_mode: str, image_size: int, patch_size: int,
                     max_num_patches: int, short_length: int, long_length: int) -> RegionTextData:
    """The sources and preprocessing `config.data` names, for the model's image and text sizes."""
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    max_boxes, num_negatives = data.max_boxes, data.num_region_negatives
    if data.name == "synthetic_shapes":
        from vlalign_jax.data.sources.synthetic import SyntheticShapes, SyntheticShapesConfig

        side = data.get("synthetic_image_size", image_size)
        if side <= 0:
            raise ValueError("data.synthetic_image_size must be set: NaFlex images have no fixed model size")
        shapes = SyntheticShapesConfig(image_size=side, max_objects=data.max_objects,
                                       num_region_negatives=num_negatives)
        fields = ("image", "caption", "long_caption", "boxes", "box_mask", "region_short", "region_long",
                  "region_negatives")
        train = SyntheticShapes("train", data.num_train, data.seed, shapes, fields)
        heldout = SyntheticShapes("heldout", data.num_heldout, data.seed, shapes, fields)
        vocabulary = SyntheticShapes.vocabulary()
    elif data.name == "finehard":
        from vlalign_jax.data.sources.finehard import FineHard

        def records(path: str):
            return FineHard(path, data.image_root, max_boxes=max_boxes, num_region_negatives=num_negatives) \
                if path else None

        train, heldout, vocabulary = records(data.train_path), records(data.get("heldout_path", "")), None
    else:
        raise ValueError(f"unknown data.name {data.name!r} for region-text training; available: {REGION_SOURCES}")
    short, long, vocab_size = _tokenizers(data, short_length, long_length, vocabulary)
    return RegionTextData(train, heldout, short, long, vocab_size, image_mode, image_size, patch_size,
                          max_num_patches, max_boxes, num_negatives, data.get("long_region_probability", 0.5),
                          data.get("min_image_side", 0), data.get("small_image_size", 512))
