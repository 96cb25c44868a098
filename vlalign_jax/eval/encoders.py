"""Image and text encoders of a trained CLIP-family model, for evaluations that take callables
(`compositional.evaluate_suite`): from any checkpoint the converters read, or a training workdir.

Images get the CLIP eval transform at the model's resolution; texts the CLIP BPE tokenizer at the
model's context length. Both return L2-normalised float32 embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from PIL import Image

from vlalign_jax.data.tokenizers import ClipTokenizer
from vlalign_jax.data.transforms import ClipEvalTransform
from vlalign_jax.models.clip import CLIP

EncodeImages = Callable[[list[Image.Image]], np.ndarray]
EncodeTexts = Callable[[list[str]], np.ndarray]


def load_model(path: str | Path, family: str | None = None) -> tuple[Any, dict]:
    """(model, params) from a checkpoint file/folder or a `vlalign train` workdir."""
    from vlalign_jax import converters
    from vlalign_jax.train.export import MODEL_CONFIG_FILE, load_model_config

    path = Path(path)
    if path.is_dir() and (path / MODEL_CONFIG_FILE).exists() and family in (None, "workdir"):
        from vlalign_jax.train.checkpoint import load_params

        return converters.model_for(load_model_config(path)), load_params(path)
    return converters.load(path, family)


def _normalized(x: jax.Array) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clip_encoders(model: CLIP, params: dict, vocab_path: str | None = None) -> tuple[EncodeImages, EncodeTexts]:
    """Encoders for `model` with `params`; the tokenizer's vocabulary must match the model's."""
    config = model.config
    tokenizer = ClipTokenizer(vocab_path, config.text.context_length)
    if tokenizer.vocab_size != config.text.vocab_size:
        raise ValueError(f"the model's text vocabulary has {config.text.vocab_size} entries, the CLIP tokenizer "
                         f"{tokenizer.vocab_size}: this model was not trained with CLIP's BPE tokenizer")
    transform = ClipEvalTransform(config.vision.image_size)
    image_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
    text_fn = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))

    def encode_images(images: list[Image.Image]) -> np.ndarray:
        return _normalized(image_fn(params, np.stack([transform(image) for image in images])))

    def encode_texts(texts: list[str]) -> np.ndarray:
        return _normalized(text_fn(params, tokenizer(texts)))

    return encode_images, encode_texts
