"""Region, text, image and dense-map encoders of an FG-CLIP 1 or 2 model, for the callables that
`fine_grained` and `dense_maps` take (research/fgclip.md 1.3-1.4, 2.2-2.4 and 6.1), and the choice
of the tokenizer a checkpoint or training run goes with.

FG-CLIP 1, as its reference evaluations (`v1.0:fgclip/eval/fgovd_eval.py`, `shareg4v_retrieval.py`):
- images are resized to the model's square input size with no crop (PIL bicubic), then scaled to
  [0, 1] and normalised with CLIP's mean/std (`CLIPImageProcessor` leaves a square image as it is);
- region vectors: RoIAlign (1x1, aligned, adaptive sampling) over `encode_image_dense` [h, w, D];
- texts: "short" and "box" at 77 tokens on the short walk (FG-CLIP 1 reads box captions with short
  positions and `text_projection`), "long" at 248 tokens on the long walk.

FG-CLIP 2, as `main:fgclip2/eval/*` (a SigLIP 2 NaFlex model):
- images go through NaFlex preprocessing (`data.naflex`, PIL bilinear as FG-CLIP 2's image processor):
  the aspect ratio is kept, each side rounded up to whole patches, at most `max_num_patches`
  patches; by default the budget is picked per image by FG-CLIP 2's eval rule (`pick_naflex_bucket`:
  128 ... 1024 by the native patch count). Batches are padded to their largest budget: padded patches
  are masked keys, so they change nothing;
- dense maps: `get_image_dense_features` rows < h*w, reshaped to the image's own (h, w) grid;
  region vectors: RoIAlign on that grid (`pool_token_regions`), x scaled by w and y by h;
- texts: walks short / box at the text context length (64) and long at `long_context_length` (196).
  With the Gemma tokenizer the padding mask goes in too, as the released eval scripts pass the
  tokenizer's whole output (`**tokenizer(...)`); training feeds ids only, which is what the word
  and CLIP tokenizers give here.

Both: a box (x1, y1, x2, y2) in pixels of the original image becomes (x1/W, y1/H, x2/W, y2/H); region
vectors come back L2-normalised (zero for a box with no area), texts and images too. The dense map
pairs with "short" text on FG-CLIP 1 (its region captions' space) and with "box" text on FG-CLIP 2
(its dense head is trained against box captions; issue #44): `RegionEncoders.dense_walk`.

`model_family` is the one place that looks at the model's type; everything else keys off its answer.
The module is a static argument of the jitted functions, so it must hash by value, as flax modules
do; batch rows are padded to powers of two, so few shapes are compiled.
"""

from __future__ import annotations

import argparse
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
from vlalign_jax.eval.workdirs import run_config
from vlalign_jax.ops.region_pooling import pool_regions, pool_token_regions

Preprocess = Callable[[Image.Image], np.ndarray]  # PIL image -> [S, S, 3] float32 (square-input models)
Tokenizer = Callable[[Sequence[str], int], np.ndarray]  # texts, length -> [n, length] int32
Inputs = tuple[np.ndarray, ...]  # one image's model inputs: (pixels,) or NaFlex (values, mask, shapes)
TASK_WALKS = ("short", "box", "long")
DENSE_WALKS = {"fgclip": "short", "fgclip2": "box"}  # the text walk each family's dense features pair with
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def model_family(model: Any) -> str:
    """"fgclip2" for FG-CLIP 2 (NaFlex images, Gemma text), else "fgclip" (square images, FG-CLIP 1's API)."""
    from vlalign_jax.models.fgclip2 import Fgclip2Config

    return "fgclip2" if isinstance(getattr(model, "config", None), Fgclip2Config) else "fgclip"


def load_region_model(path: str | Path, family: str | None = None) -> tuple[nn.Module, Any]:
    """(model, params) of a model with dense features, from a checkpoint (any converter family; FG-CLIP
    Hugging Face folders load as `FGCLIP` / `FGCLIP2`) or a `vlalign train` workdir of an FG-CLIP run."""
    from vlalign_jax.eval.encoders import load_model

    model, params = load_model(path, family)
    if not any(hasattr(model, name) for name in ("encode_image_dense", "get_image_dense_features")):
        raise ValueError(f"{path} holds a {type(model).__name__}, which has no dense features; region and "
                         "dense evaluations need FG-CLIP 1 or 2 (an FG-CLIP folder, run or --family fgclip)")
    return model, params


# ----------------------------------------------------------------------------- tokenizers

def load_tokenizer(checkpoint: str | Path | None, model: Any, choice: str = "auto",
                   vocab_path: str | None = None, family: str | None = None) -> Tokenizer:
    """The tokenizer `model` reads, its vocabulary size checked against the model's.

    `choice`: "clip" (CLIP BPE, `vocab_path` or open_clip's file), "words" (the synthetic shapes'
    closed vocabulary), "gemma:PATH" (a SigLIP 2 / FG-CLIP 2 tokenizer folder; bare "gemma" means the
    checkpoint's folder) or "auto": a training workdir's `data.tokenizer` (with its `vocab_path` or
    `tokenizer_path`), else for FG-CLIP 2 the Gemma tokenizer in the checkpoint folder, else CLIP BPE.
    """
    from vlalign_jax.data.gemma_tokenizer import GemmaTokenizer
    from vlalign_jax.data.sources.synthetic import SyntheticShapes
    from vlalign_jax.data.tokenizers import ClipTokenizer
    from vlalign_jax.data.word_tokenizer import WordTokenizer

    kind, _, where = choice.partition(":")
    source = f"--tokenizer {choice}"
    if kind == "auto":
        run = run_config(checkpoint, family) if checkpoint is not None else None
        if run is not None:
            data = run.get("data", {})
            kind, source = data.get("tokenizer", "clip"), f"{checkpoint}/config.json (data.tokenizer)"
            if kind == "words" and data.get("name") != "synthetic_shapes":
                raise ValueError(f"{checkpoint}: data.tokenizer='words' is only known for synthetic_shapes, "
                                 f"not {data.get('name')!r}; pass --tokenizer")
            where = data.get("tokenizer_path", "") if kind == "gemma" else data.get("vocab_path", "")
            if kind == "gemma" and not where:
                raise ValueError(f"{checkpoint}/config.json says data.tokenizer='gemma' but names no "
                                 "data.tokenizer_path; pass --tokenizer gemma:PATH")
        elif model_family(model) == "fgclip2":
            if checkpoint is None or not any((Path(checkpoint) / name).exists() for name in TOKENIZER_FILES):
                where_from = f"{checkpoint} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})" \
                    if checkpoint is not None else "no checkpoint folder was given to find them in"
                raise ValueError(f"FG-CLIP 2 reads Gemma token ids, but {where_from}; pass --tokenizer gemma:PATH "
                                 "(a SigLIP 2 / FG-CLIP 2 folder), or tokenizer=load_tokenizer(PATH, model)")
            kind, source = "gemma", f"the tokenizer files in {checkpoint}"
        else:
            kind, source = "clip", "CLIP BPE (FG-CLIP 1's tokenizer)"
    if kind == "clip":
        tokenizer = ClipTokenizer(where or vocab_path or None)
    elif kind == "words":
        tokenizer = WordTokenizer(SyntheticShapes.vocabulary())
    elif kind == "gemma":
        if not (where or checkpoint):
            raise ValueError("the Gemma tokenizer needs its folder: gemma:PATH")
        tokenizer = GemmaTokenizer(where or checkpoint)
    else:
        raise ValueError(f"unknown tokenizer {choice!r}; expected auto, clip, words or gemma:PATH")
    vocab_size = model.config.text.vocab_size
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"the {kind} tokenizer from {source} has {tokenizer.vocab_size} ids, the model's text "
                         f"vocabulary {vocab_size}: this is not the model's tokenizer; pass the right one "
                         "with --tokenizer clip | words | gemma:PATH")
    return tokenizer


# ----------------------------------------------------------------------------- preprocessing

def square_resize_preprocess(image_size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                             std: Sequence[float] = OPENAI_CLIP_STD) -> Preprocess:
    """The reference's eval preprocessing: bicubic resize to image_size x image_size (aspect ratio not
    kept, nothing cropped), RGB, (x / 255 - mean) / std."""

    def preprocess(image: Image.Image) -> np.ndarray:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return to_normalized_array(image, tuple(mean), tuple(std))

    return preprocess


def naflex_inputs(patch_size: int, max_num_patches: int | None = None) -> Callable[[Image.Image], Inputs]:
    """RGB image -> (pixel_values [N, p*p*3], pixel_attention_mask [N], spatial_shapes [2]) with FG-CLIP 2's
    image processor (PIL bilinear); N = `max_num_patches`, or per image by `pick_naflex_bucket` if None."""
    from vlalign_jax.data.naflex import naflex_preprocess, pick_naflex_bucket

    def inputs(image: Image.Image) -> Inputs:
        budget = max_num_patches or pick_naflex_bucket(image.height, image.width, patch_size)
        out = naflex_preprocess(image, patch_size, budget, resize_backend="pil")
        return out["pixel_values"], out["pixel_attention_mask"], out["spatial_shapes"]

    return inputs


def normalized_boxes(boxes_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """[n, 4] pixel boxes of a width x height image -> fractions of the image (x by width, y by height)."""
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    return boxes / np.asarray([width, height, width, height], np.float32)


def _bucket(n: int, cap: int | None = None) -> int:
    """Rows to pad n to: a power of two (at least 8), so few shapes are ever compiled."""
    size = max(8, 1 << max(0, n - 1).bit_length())
    return min(size, cap) if cap else size


def pad_rows(x: np.ndarray, rows: int, edge: bool = False) -> np.ndarray:
    """x padded along axis 0 to `rows`, with zeros or (edge) copies of its last row."""
    missing = rows - len(x)
    if missing <= 0:
        return x
    fill = np.repeat(x[-1:], missing, axis=0) if edge and len(x) else np.zeros((missing, *x.shape[1:]), x.dtype)
    return np.concatenate([x, fill])


def stack_inputs(inputs: Sequence[Inputs], rows: int) -> Inputs:
    """Per-image inputs -> batched fields: each field padded along its first axis to the largest in the
    batch (NaFlex patches of several budgets; padding is masked), rows padded with copies of the last."""
    fields = []
    for field in zip(*inputs):
        length = max(len(x) for x in field)
        fields.append(pad_rows(np.stack([pad_rows(x, length) for x in field]), rows, edge=True))
    return tuple(fields)


def unit_rows(x: Any) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- jitted model calls
# Jitted once per module: flax modules hash by their fields, so encoders built again for an equal
# model reuse the compiled functions. `inputs` is a tuple of batched image fields.

@functools.partial(jax.jit, static_argnums=0)
def _square_dense(model: Any, params: Any, inputs: tuple) -> jax.Array:
    return model.apply({"params": params}, *inputs, method="encode_image_dense")  # [B, h, w, D]


@functools.partial(jax.jit, static_argnums=0)
def _square_regions(model: Any, params: Any, inputs: tuple, boxes: jax.Array, mask: jax.Array) -> jax.Array:
    return pool_regions(_square_dense(model, params, inputs), boxes, mask)  # [B, M, D] unit (0 where masked)


@functools.partial(jax.jit, static_argnums=0)
def _square_image(model: Any, params: Any, inputs: tuple) -> jax.Array:
    return model.apply({"params": params}, *inputs, method="encode_image")


@functools.partial(jax.jit, static_argnums=(0, 4))
def _square_text(model: Any, params: Any, ids: jax.Array, mask: None, walk: str) -> jax.Array:
    return model.apply({"params": params}, ids, walk, method="encode_text")  # FG-CLIP 1 takes no mask


@functools.partial(jax.jit, static_argnums=0)
def _naflex_dense(model: Any, params: Any, inputs: tuple) -> jax.Array:
    return model.apply({"params": params}, *inputs, method="get_image_dense_features")  # [B, N, D]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _naflex_regions_within(model: Any, params: Any, inputs: tuple, boxes: jax.Array, mask: jax.Array,
                           max_grid: tuple[int, int]) -> jax.Array:
    return pool_token_regions(_naflex_dense(model, params, inputs), inputs[2], boxes, mask, max_grid)


def _naflex_regions(model: Any, params: Any, inputs: Inputs, boxes: np.ndarray, mask: np.ndarray) -> jax.Array:
    """RoIAlign bounded by the batch's largest grid, rounded up to powers of two: the default bound
    (max_num_patches per side) costs ~300x more (2 s and 2 GB for 128 boxes at 1024 patches on a CPU)."""
    rows, cols = (int(v) for v in np.max(inputs[2], axis=0))  # spatial_shapes, known on the host
    return _naflex_regions_within(model, params, inputs, boxes, mask, (_bucket(rows), _bucket(cols)))


@functools.partial(jax.jit, static_argnums=0)
def _naflex_image(model: Any, params: Any, inputs: tuple) -> jax.Array:
    return model.apply({"params": params}, *inputs, method="get_image_features")


@functools.partial(jax.jit, static_argnums=(0, 4))
def _naflex_text(model: Any, params: Any, ids: jax.Array, mask: jax.Array | None, walk: str) -> jax.Array:
    return model.apply({"params": params}, ids, walk, mask, method="get_text_features")


def _square_grid(dense: np.ndarray, inputs: Inputs) -> np.ndarray:
    return dense  # already [h, w, D]


def _naflex_grid(dense: np.ndarray, inputs: Inputs) -> np.ndarray:
    rows, cols = (int(v) for v in inputs[2])  # spatial_shapes
    return dense[:rows * cols].reshape(rows, cols, -1)  # the first h*w tokens, row-major


@dataclasses.dataclass(frozen=True)
class _Calls:
    """One family's model calls: jitted (model, params, ...) functions and its dense output -> [h, w, D]."""

    dense: Callable
    regions: Callable
    image: Callable
    text: Callable
    grid: Callable[[np.ndarray, Inputs], np.ndarray]


CALLS = {"fgclip": _Calls(_square_dense, _square_regions, _square_image, _square_text, _square_grid),
         "fgclip2": _Calls(_naflex_dense, _naflex_regions, _naflex_image, _naflex_text, _naflex_grid)}


# ----------------------------------------------------------------------------- encoders

@dataclasses.dataclass(frozen=True)
class RegionEncoders:
    """The callables of `fine_grained` (regions, texts, images) and `dense_maps` (dense)."""

    encode_regions: Callable[[Image.Image, np.ndarray], np.ndarray]  # image, [n, 4] xyxy px -> [n, D] unit
    encode_texts: Callable[[list[str], str], np.ndarray]  # texts, task walk -> [n, D] unit
    encode_images: Callable[[list[Image.Image]], np.ndarray]  # images -> [n, D] unit
    encode_dense: Callable[[Image.Image], np.ndarray]  # image -> [h, w, D] on its own grid, not normalised
    image_size: int | None  # the square input side; None for NaFlex models (FG-CLIP 2)
    dense_walk: str = "short"  # the task walk the dense features pair with


def default_walks(model: Any) -> dict[str, tuple[str, int]]:
    """Model walk and token length per task walk. FG-CLIP 1: short and box captions on the short walk at
    the text context length (77), long on the long walk (248). FG-CLIP 2: short, box (both 64) and long
    (196) on their own walks."""
    config = model.config
    short = ("short", config.text.context_length)
    box = ("box", config.text.context_length) if model_family(model) == "fgclip2" else short
    return {"short": short, "box": box, "long": ("long", config.long_context_length)}


def region_encoders(model: Any, params: Any, *, batch_size: int = 64, image_size: int | None = None,
                    walks: Mapping[str, tuple[str, int]] | None = None, preprocess: Preprocess | None = None,
                    tokenizer: Tokenizer | None = None, vocab_path: str | None = None,
                    max_num_patches: int | None = None, text_attention_mask: bool | None = None) -> RegionEncoders:
    """Encoders of `model` with `params` (see the module docs for the defaults).

    Square-input models (FG-CLIP 1) take `image_size` / `preprocess`; NaFlex models (FG-CLIP 2) take
    `max_num_patches` (None: FG-CLIP 2's per-image budget). `tokenizer` defaults to CLIP BPE for FG-CLIP 1
    (`vocab_path`); FG-CLIP 2 needs its own (`load_tokenizer`). `text_attention_mask` (FG-CLIP 2 only):
    pass the tokenizer's padding mask; None = when the tokenizer gives one (Gemma).
    """
    family = model_family(model)
    calls = CALLS[family]
    walks = dict(walks or default_walks(model))
    if family == "fgclip2":
        if image_size is not None or preprocess is not None:
            raise ValueError("FG-CLIP 2 takes NaFlex inputs: set max_num_patches, not image_size / preprocess")
        image_inputs = naflex_inputs(model.config.vision.patch_size, max_num_patches)
        if tokenizer is None:
            tokenizer = load_tokenizer(None, model)  # raises: FG-CLIP 2's tokenizer lives with the checkpoint
        from vlalign_jax.data.gemma_tokenizer import GemmaTokenizer

        text_mask = isinstance(tokenizer, GemmaTokenizer) if text_attention_mask is None else text_attention_mask
    else:
        if max_num_patches is not None or text_attention_mask:
            raise ValueError(f"{type(model).__name__} takes square images and no text mask: max_num_patches and "
                             "text_attention_mask are for FG-CLIP 2")
        image_size = image_size or model.config.vision.image_size
        square = preprocess or square_resize_preprocess(image_size)
        image_inputs = lambda image: (square(image),)
        tokenizer = tokenizer or load_tokenizer(None, model, vocab_path=vocab_path)
        text_mask = False
    params = jax.device_put(params)  # once, not on every call

    def one_image(image: Image.Image) -> Inputs:
        return image_inputs(image.convert("RGB"))

    def encode_dense(image: Image.Image) -> np.ndarray:
        inputs = one_image(image)
        dense = calls.dense(model, params, stack_inputs([inputs], 1))
        return calls.grid(np.asarray(dense[0], np.float32), inputs)

    def encode_regions(image: Image.Image, boxes_xyxy: np.ndarray) -> np.ndarray:
        boxes = normalized_boxes(boxes_xyxy, *image.size)
        rows = _bucket(len(boxes))
        mask = np.arange(rows) < len(boxes)
        pooled = calls.regions(model, params, stack_inputs([one_image(image)], 1), pad_rows(boxes, rows)[None],
                               mask[None])
        return np.asarray(pooled[0, :len(boxes)], np.float32)

    def encode_texts(texts: list[str], walk: str = "short") -> np.ndarray:
        if walk not in walks:
            raise ValueError(f"unknown text walk {walk!r}; this model's walks: {sorted(walks)}")
        model_walk, length = walks[walk]
        if text_mask:
            ids, masks = (np.asarray(x, np.int32) for x in tokenizer.encode(list(texts), length))
        else:
            ids, masks = np.asarray(tokenizer(list(texts), length), np.int32), None
        parts = []
        for start in range(0, len(ids), batch_size):
            count = len(ids[start:start + batch_size])
            pad = lambda x: pad_rows(x[start:start + batch_size], _bucket(count, batch_size), edge=True)
            out = calls.text(model, params, pad(ids), None if masks is None else pad(masks), model_walk)
            parts.append(np.asarray(out[:count]))
        return unit_rows(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)

    def encode_images(images: list[Image.Image]) -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = [one_image(image) for image in images[start:start + batch_size]]
            out = calls.image(model, params, stack_inputs(chunk, _bucket(len(chunk), batch_size)))
            parts.append(np.asarray(out[:len(chunk)]))
        return unit_rows(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)

    return RegionEncoders(encode_regions, encode_texts, encode_images, encode_dense, image_size, DENSE_WALKS[family])


# ----------------------------------------------------------------------------- command line

def _patch_budget(text: str) -> int | str:
    if text == "dynamic":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--max-num-patches must be positive or 'dynamic', got {text}")
    return value


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """--tokenizer and --max-num-patches, shared by `vlalign fine-grained` and `vlalign dense`."""
    parser.add_argument("--tokenizer", default="auto",
                        help="auto (default: a training workdir's data.tokenizer; FG-CLIP 2: the Gemma tokenizer "
                             "files in the checkpoint folder; FG-CLIP 1: CLIP BPE) | clip | words | gemma:PATH")
    parser.add_argument("--max-num-patches", type=_patch_budget, default=None,
                        help="FG-CLIP 2: NaFlex patch budget per image, N or 'dynamic' (FG-CLIP 2's eval rule: "
                             "the smallest of 128/256/576/784/1024 holding the image's native patch count). "
                             "Default: a training workdir's data.max_num_patches, else dynamic")


def encoders_from_args(args: argparse.Namespace, batch_size: int = 64) -> RegionEncoders:
    """Model, tokenizer and patch budget from --checkpoint, --family, --tokenizer, --max-num-patches
    (the budget by `encoders.naflex_budget`, the one NaFlex rule, which refuses it for FG-CLIP 1)."""
    from vlalign_jax.eval.encoders import naflex_budget

    model, params = load_region_model(args.checkpoint, args.family)
    tokenizer = load_tokenizer(args.checkpoint, model, args.tokenizer, family=args.family)
    budget = naflex_budget(args.checkpoint, model, args.max_num_patches, args.family)
    return region_encoders(model, params, batch_size=batch_size, tokenizer=tokenizer, max_num_patches=budget)
