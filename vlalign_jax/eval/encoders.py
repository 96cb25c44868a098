"""Image and text encoders of any dual-encoder checkpoint we load, for evaluations that take callables
(`zeroshot`, `retrieval`, `compositional`, long-caption retrieval): from a checkpoint of any
converter family or a `vlalign train` workdir.

Per family (`model_kind`), the preprocessing and tokenizer its reference evaluations use:
- CLIP (OpenAI, open_clip, Hugging Face, DeGLA, ours): CLIP's eval transform (resize the short side,
  centre crop) at the model's resolution; CLIP BPE at the text context length (a workdir: its
  `data.tokenizer`). One text walk, "short".
- FG-CLIP 1 and 2: as `vlalign fine-grained` (`region_encoders`): FG-CLIP 1 resizes to the square
  input with no crop, FG-CLIP 2 takes NaFlex patches (budget: `--max-num-patches`, a workdir's
  `data.max_num_patches`, else FG-CLIP 2's per-image rule); text walks short / box / long.
- SigLIP 2: NaFlex patches (budget as above, default 256 as transformers' `Siglip2ImageProcessor`),
  the Gemma tokenizer found in the checkpoint folder with its padding mask, at the text context length.

Every encoder runs as one jitted apply whose batch rows are split over a 1-D mesh of all local
devices (`ShardedApply`): a batch is padded to a multiple of the device count (with copies of its
last row, so no padded row is degenerate) and the padding dropped after. Outputs are L2-normalised
float32 rows.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from vlalign_jax.eval.region_encoders import pad_rows, stack_inputs, unit_rows

EncodeImages = Callable[[list[Image.Image]], np.ndarray]
EncodeTexts = Callable[[list[str]], np.ndarray]
Tokenizer = Callable[[Sequence[str], int], np.ndarray]  # texts, length -> [n, length] int32
BATCH_AXIS = "batch"
SIGLIP_PATCH_BUDGET = 256  # transformers' Siglip2ImageProcessor default max_num_patches
KINDS = ("clip", "fgclip", "fgclip2", "siglip")


def load_model(path: str | Path, family: str | None = None) -> tuple[Any, dict]:
    """(model, params) from a checkpoint file/folder or a `vlalign train` workdir."""
    from vlalign_jax import converters
    from vlalign_jax.train.export import MODEL_CONFIG_FILE, load_model_config

    path = Path(path)
    if path.is_dir() and (path / MODEL_CONFIG_FILE).exists() and family in (None, "workdir"):
        from vlalign_jax.train.checkpoint import load_params

        return converters.model_for(load_model_config(path)), load_params(path)
    return converters.load(path, family)


def model_kind(model: Any) -> str:
    """"clip", "fgclip", "fgclip2" or "siglip"; a model with no image-text embeddings is an error."""
    from vlalign_jax.models.clip import CLIP
    from vlalign_jax.models.fgclip import FGCLIP
    from vlalign_jax.models.fgclip2 import FGCLIP2
    from vlalign_jax.models.siglip import SigLIP

    for kind, cls in (("fgclip2", FGCLIP2), ("fgclip", FGCLIP), ("siglip", SigLIP), ("clip", CLIP)):
        if isinstance(model, cls):
            return kind
    raise ValueError(f"a {type(model).__name__} has no image and text embeddings to compare (CLIP-VG is a "
                     "grounding model: evaluate it with --suite grounding)")


# ----------------------------------------------------------------------------- sharded batches

def device_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (axis "batch") over `devices`, default all local devices."""
    return Mesh(np.asarray(list(jax.local_devices() if devices is None else devices)), (BATCH_AXIS,))


def padded_rows(count: int, devices: int, cap: int) -> int:
    """Rows a batch of `count` is padded to: devices x a power of two, at most `cap` (a multiple of
    `devices`), so a run compiles few shapes and every device gets as many rows."""
    per_device = -(-count // devices)
    return min(devices * (1 << max(0, per_device - 1).bit_length()), cap)


class ShardedApply:
    """`fn(params, *batch) -> [rows, ...]` jitted with its batch rows split over `mesh` and the params
    replicated on every device; called with host arrays of any row count (chunks of `batch_size`)."""

    def __init__(self, fn: Callable, params: Any, mesh: Mesh | None = None, batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mesh = device_mesh() if mesh is None else mesh
        self.devices = self.mesh.devices.size
        self.cap = -(-batch_size // self.devices) * self.devices
        self.rows = NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        self.fn = jax.jit(fn)

    def __call__(self, *arrays: np.ndarray | None) -> np.ndarray:
        count = len(arrays[0])
        parts = []
        for start in range(0, count, self.cap):
            chunk = [None if a is None else np.asarray(a[start:start + self.cap]) for a in arrays]
            n = len(chunk[0])
            rows = padded_rows(n, self.devices, self.cap)
            batch = [None if a is None else jax.device_put(pad_rows(a, rows, edge=True), self.rows) for a in chunk]
            parts.append(np.asarray(self.fn(self.params, *batch), np.float32)[:n])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------- encoders

def _text_fn(model: Any, kind: str, walk: str) -> Callable:
    """(params, ids, mask or None) -> text embeddings, as each family's text tower takes them."""
    if kind == "fgclip":  # FG-CLIP 1 takes no mask
        return lambda p, ids, mask: model.apply({"params": p}, ids, walk, method="encode_text")
    if kind == "fgclip2":
        return lambda p, ids, mask: model.apply({"params": p}, ids, walk, mask, method="get_text_features")
    if kind == "siglip":
        return lambda p, ids, mask: model.apply({"params": p}, ids, mask, method="encode_text")
    return lambda p, ids, mask: model.apply({"params": p}, ids, method="encode_text")


@dataclasses.dataclass(frozen=True)
class DualEncoders:
    """`encode_images(images)` and `encode_texts(texts, walk="short")`, L2-normalised float32 rows;
    `walks` are the text walks the model has (CLIP and SigLIP: short only)."""

    kind: str
    encode_images: EncodeImages
    encode_texts: Callable[..., np.ndarray]
    walks: tuple[str, ...]


def naflex_budget(checkpoint: str | Path | None, model: Any, requested: int | str | None,
                  family: str | None = None) -> int | None:
    """The NaFlex patch budget per image (None: FG-CLIP 2's per-image rule): `requested` (an int or
    "dynamic"), else a workdir's `data.max_num_patches`, else FG-CLIP 2 dynamic / SigLIP 2 256."""
    from vlalign_jax.eval.workdirs import run_config

    kind = model_kind(model)
    if kind not in ("fgclip2", "siglip"):
        if requested is not None:
            raise ValueError(f"--max-num-patches is for NaFlex models (SigLIP 2, FG-CLIP 2); {checkpoint} holds "
                             f"a {type(model).__name__}, which takes square images")
        return None
    if requested is None and checkpoint is not None:
        requested = (run_config(checkpoint, family) or {}).get("data", {}).get("max_num_patches")
    if requested is None:
        requested = "dynamic" if kind == "fgclip2" else SIGLIP_PATCH_BUDGET
    return None if requested == "dynamic" else int(requested)


def text_tokenizer(checkpoint: str | Path | None, model: Any, choice: str = "auto",
                   family: str | None = None) -> Tokenizer:
    """The tokenizer `model` reads (`region_encoders.load_tokenizer`: a workdir's `data.tokenizer`, else
    by family); "auto" for SigLIP 2 outside a workdir is the Gemma tokenizer in the checkpoint folder."""
    from vlalign_jax.data.tokenizers import ClipTokenizer
    from vlalign_jax.eval.region_encoders import TOKENIZER_FILES, load_tokenizer
    from vlalign_jax.eval.workdirs import run_config

    kind = model_kind(model)
    if choice != "auto" or (checkpoint is not None and run_config(checkpoint, family) is not None):
        return load_tokenizer(checkpoint, model, choice, family=family)
    if kind == "siglip":
        if checkpoint is None or not any((Path(checkpoint) / name).exists() for name in TOKENIZER_FILES):
            raise ValueError(f"SigLIP 2 reads Gemma token ids, but {checkpoint} holds no tokenizer files "
                             f"({', '.join(TOKENIZER_FILES)}); pass --tokenizer gemma:PATH")
        return load_tokenizer(checkpoint, model, "gemma", family=family)
    if kind == "clip":
        tokenizer = ClipTokenizer(context_length=model.config.text.context_length)
        if tokenizer.vocab_size != model.config.text.vocab_size:
            raise ValueError(f"{checkpoint}: the model's text vocabulary has {model.config.text.vocab_size} entries, "
                             f"CLIP's BPE tokenizer {tokenizer.vocab_size}; pass its tokenizer with --tokenizer "
                             "words | gemma:PATH")
        return tokenizer
    return load_tokenizer(checkpoint, model, choice, family=family)


def dual_encoders(model: Any, params: Any, *, checkpoint: str | Path | None = None, family: str | None = None,
                  tokenizer: str | Tokenizer = "auto", max_num_patches: int | str | None = None,
                  batch_size: int = 256, mesh: Mesh | None = None, num_threads: int = 8) -> DualEncoders:
    """Encoders of `model` with `params` (see the module docs), `batch_size` rows per sharded call.

    `checkpoint`/`family` locate a workdir's saved config and tokenizer files; `tokenizer` is a choice
    for `text_tokenizer` (auto, clip, words, gemma:PATH) or a tokenizer; `mesh` defaults to all local
    devices; images are preprocessed on `num_threads` threads.
    """
    from vlalign_jax.data.gemma_tokenizer import GemmaTokenizer
    from vlalign_jax.data.transforms import ClipEvalTransform
    from vlalign_jax.eval.region_encoders import default_walks, naflex_inputs, square_resize_preprocess

    kind = model_kind(model)
    if isinstance(tokenizer, str):
        tokenizer = text_tokenizer(checkpoint, model, tokenizer, family)
    vocab_size = model.config.text.vocab_size
    if getattr(tokenizer, "vocab_size", vocab_size) != vocab_size:
        raise ValueError(f"the model's text vocabulary has {vocab_size} entries, the tokenizer "
                         f"{tokenizer.vocab_size}: pass the model's tokenizer")
    budget = naflex_budget(checkpoint, model, max_num_patches, family)
    length = model.config.text.context_length
    if kind in ("fgclip", "fgclip2"):
        walks = default_walks(model)  # task walk -> (model walk, token length)
    else:
        walks = {"short": ("short", length)}
    text_mask = kind in ("fgclip2", "siglip") and isinstance(tokenizer, GemmaTokenizer)

    if kind in ("fgclip2", "siglip"):
        one_image = naflex_inputs(model.config.vision.patch_size, budget)
    else:
        square = (square_resize_preprocess(model.config.vision.image_size) if kind == "fgclip"
                  else ClipEvalTransform(model.config.vision.image_size))
        one_image = lambda image: (square(image),)
    image_call = ShardedApply(lambda p, *xs: model.apply({"params": p}, *xs, method="encode_image"), params,
                              mesh, batch_size)
    text_calls = {walk: ShardedApply(_text_fn(model, kind, model_walk), image_call.params, image_call.mesh,
                                     batch_size) for walk, (model_walk, _) in walks.items()}

    def encode_images(images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, 0), np.float32)
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            inputs = list(pool.map(lambda image: one_image(image.convert("RGB")), images))
        return unit_rows(image_call(*stack_inputs(inputs, len(inputs))))

    def encode_texts(texts: list[str], walk: str = "short") -> np.ndarray:
        if walk not in walks:
            raise ValueError(f"unknown text walk {walk!r}; this {kind} model's walks: {sorted(walks)}")
        if not texts:
            return np.zeros((0, 0), np.float32)
        token_length = walks[walk][1]
        if text_mask:
            ids, mask = (np.asarray(x, np.int32) for x in tokenizer.encode(list(texts), token_length))
        else:
            ids, mask = np.asarray(tokenizer(list(texts), token_length), np.int32), None
        return unit_rows(text_calls[walk](ids, mask))

    return DualEncoders(kind, encode_images, encode_texts, tuple(walks))


def clip_encoders(model: Any, params: dict, vocab_path: str | None = None) -> tuple[EncodeImages, EncodeTexts]:
    """(encode_images, encode_texts) of a CLIP-family model with CLIP's BPE tokenizer (`vocab_path`, default
    open_clip's vocabulary), sharded over all local devices."""
    from vlalign_jax.data.tokenizers import ClipTokenizer

    tokenizer = ClipTokenizer(vocab_path, model.config.text.context_length)
    if tokenizer.vocab_size != model.config.text.vocab_size:
        raise ValueError(f"the model's text vocabulary has {model.config.text.vocab_size} entries, the CLIP "
                         f"tokenizer {tokenizer.vocab_size}: this model was not trained with CLIP's BPE tokenizer")
    encoders = dual_encoders(model, params, tokenizer=tokenizer)
    return encoders.encode_images, encoders.encode_texts
