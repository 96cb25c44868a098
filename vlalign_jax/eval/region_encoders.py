"""Region, text, image and dense-map encoders of an FG-CLIP model, for the callables that
`fine_grained` and `dense_maps` take (research/fgclip.md 1.3-1.4 and 6.1).

As the reference evaluations do (`v1.0:fgclip/eval/fgovd_eval.py`, `shareg4v_retrieval.py`):
- images are resized to the model's square input size with no crop (PIL bicubic), then scaled to
  [0, 1] and normalised with CLIP's mean/std (`CLIPImageProcessor` leaves a square image as it is);
- a box (x1, y1, x2, y2) in pixels of the original image becomes (x1/W, y1/H, x2/W, y2/H), which
  `pool_regions` scales to feature-map cells and pools with RoIAlign (1x1, aligned, adaptive
  sampling) over `encode_image_dense`, i.e. `get_image_box_roi_features`; region vectors come back
  L2-normalised (zero for a box with no area);
- texts use the CLIP BPE tokenizer: "short" and "box" at 77 tokens on the short walk (FG-CLIP 1
  reads box captions with short positions and `text_projection`), "long" at 248 tokens on the
  long walk.

Nothing here is specific to FG-CLIP 1 beyond those defaults: any flax module with `encode_image`,
`encode_text(ids, walk)` and `encode_image_dense(pixels) -> [B, h, w, D]` works, with `walks`
naming its walk and token length per task walk and `preprocess` / `tokenizer` replaceable (FG-CLIP 2
would pass its NaFlex preprocessing, its tokenizer and {"box": ("box", 64), ...}). The module is a
static argument of the jitted functions, so it must hash by value, as flax modules do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from PIL import Image

from vlalign_jax.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, to_normalized_array
from vlalign_jax.ops.region_pooling import pool_regions

Preprocess = Callable[[Image.Image], np.ndarray]  # PIL image -> [S, S, 3] float32
Tokenizer = Callable[[Sequence[str], int], np.ndarray]  # texts, length -> [n, length] int32
TASK_WALKS = ("short", "box", "long")


def load_region_model(path: str | Path, family: str | None = None) -> tuple[nn.Module, Any]:
    """(model, params) of a model with dense features, from a checkpoint (any converter family; FG-CLIP 1
    Hugging Face folders load as `FGCLIP`) or a `vlalign train` workdir of an FG-CLIP run."""
    from vlalign_jax.eval.encoders import load_model

    model, params = load_model(path, family)
    if not hasattr(model, "encode_image_dense"):
        raise ValueError(f"{path} holds a {type(model).__name__}, which has no dense features; region and "
                         "dense evaluations need FG-CLIP (an FG-CLIP folder, run or --family fgclip)")
    return model, params


def square_resize_preprocess(image_size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                             std: Sequence[float] = OPENAI_CLIP_STD) -> Preprocess:
    """The reference's eval preprocessing: bicubic resize to image_size x image_size (aspect ratio not
    kept, nothing cropped), RGB, (x / 255 - mean) / std."""

    def preprocess(image: Image.Image) -> np.ndarray:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return to_normalized_array(image, tuple(mean), tuple(std))

    return preprocess


def normalized_boxes(boxes_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """[n, 4] pixel boxes of a width x height image -> fractions of the image (x by width, y by height)."""
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    return boxes / np.asarray([width, height, width, height], np.float32)


def _bucket(n: int, cap: int | None = None) -> int:
    """Rows to pad n to: a power of two (at least 8), so few shapes are ever compiled."""
    size = max(8, 1 << max(0, n - 1).bit_length())
    return min(size, cap) if cap else size


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]) if rows > len(x) else x


def _unit(x: Any) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# Jitted once per module: flax modules hash by their fields, so encoders built again for an equal
# model reuse the compiled functions.
@functools.partial(jax.jit, static_argnums=0)
def _dense(model: Any, params: Any, pixels: jax.Array) -> jax.Array:
    return model.apply({"params": params}, pixels, method="encode_image_dense")  # [B, h, w, D]


@functools.partial(jax.jit, static_argnums=0)
def _regions(model: Any, params: Any, pixels: jax.Array, boxes: jax.Array, mask: jax.Array) -> jax.Array:
    return pool_regions(_dense(model, params, pixels), boxes, mask)  # [B, M, D] unit (0 where masked)


@functools.partial(jax.jit, static_argnums=0)
def _image(model: Any, params: Any, pixels: jax.Array) -> jax.Array:
    return model.apply({"params": params}, pixels, method="encode_image")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _text(model: Any, params: Any, ids: jax.Array, walk: str) -> jax.Array:
    return model.apply({"params": params}, ids, walk, method="encode_text")


@dataclasses.dataclass(frozen=True)
class RegionEncoders:
    """The callables of `fine_grained` (regions, texts, images) and `dense_maps` (dense)."""

    encode_regions: Callable[[Image.Image, np.ndarray], np.ndarray]  # image, [n, 4] xyxy px -> [n, D] unit
    encode_texts: Callable[[list[str], str], np.ndarray]  # texts, task walk -> [n, D] unit
    encode_images: Callable[[list[Image.Image]], np.ndarray]  # images -> [n, D] unit
    encode_dense: Callable[[Image.Image], np.ndarray]  # image -> [h, w, D], not normalised
    image_size: int


def default_walks(model: Any) -> dict[str, tuple[str, int]]:
    """FG-CLIP 1: short and box captions on the short walk at the text context length (77), long
    captions on the long walk at `long_context_length` (248)."""
    config = model.config
    short = ("short", config.text.context_length)
    return {"short": short, "box": short, "long": ("long", config.long_context_length)}


def region_encoders(model: Any, params: Any, *, batch_size: int = 64, image_size: int | None = None,
                    walks: Mapping[str, tuple[str, int]] | None = None, preprocess: Preprocess | None = None,
                    tokenizer: Tokenizer | None = None, vocab_path: str | None = None) -> RegionEncoders:
    """Encoders of `model` with `params` (see the module docs for the defaults and what can be replaced)."""
    image_size = image_size or model.config.vision.image_size
    walks = dict(walks or default_walks(model))
    preprocess = preprocess or square_resize_preprocess(image_size)
    if tokenizer is None:
        from vlalign_jax.data.tokenizers import ClipTokenizer

        clip_tokenizer = ClipTokenizer(vocab_path)
        vocab_size = getattr(getattr(getattr(model, "config", None), "text", None), "vocab_size", None)
        if vocab_size is not None and clip_tokenizer.vocab_size != vocab_size:
            raise ValueError(f"the model's text vocabulary has {vocab_size} entries, the CLIP tokenizer "
                             f"{clip_tokenizer.vocab_size}: pass the model's own tokenizer")
        tokenizer = lambda texts, length: clip_tokenizer(list(texts), length)
    params = jax.device_put(params)  # once, not on every call

    def encode_dense(image: Image.Image) -> np.ndarray:
        return np.asarray(_dense(model, params, preprocess(image.convert("RGB"))[None])[0], np.float32)

    def encode_regions(image: Image.Image, boxes_xyxy: np.ndarray) -> np.ndarray:
        boxes = normalized_boxes(boxes_xyxy, *image.size)
        rows = _bucket(len(boxes))
        mask = np.arange(rows) < len(boxes)
        pooled = _regions(model, params, preprocess(image.convert("RGB"))[None], _pad_rows(boxes, rows)[None],
                          mask[None])
        return np.asarray(pooled[0, :len(boxes)], np.float32)

    def encode_texts(texts: list[str], walk: str = "short") -> np.ndarray:
        if walk not in walks:
            raise ValueError(f"unknown text walk {walk!r}; this model's walks: {sorted(walks)}")
        model_walk, length = walks[walk]
        ids = np.asarray(tokenizer(list(texts), length), np.int32)
        parts = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            out = _text(model, params, _pad_rows(chunk, _bucket(len(chunk), batch_size)), model_walk)
            parts.append(np.asarray(out[:len(chunk)]))
        return _unit(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)

    def encode_images(images: list[Image.Image]) -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = np.stack([preprocess(image.convert("RGB")) for image in images[start:start + batch_size]])
            out = _image(model, params, _pad_rows(chunk, _bucket(len(chunk), batch_size)))
            parts.append(np.asarray(out[:len(chunk)]))
        return _unit(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)

    return RegionEncoders(encode_regions, encode_texts, encode_images, encode_dense, image_size)
