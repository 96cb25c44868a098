"""Held-out evaluations shared by the image-text methods (CLIP, DeGLA): retrieval R@k and, where the
data has them, hard-negative accuracy (per negative kind on the synthetic set, against the record's
own negatives on DeGLA JSON). One set of numbers for every method makes fine-tuning runs comparable.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from vlalign_jax.data.image_text import ImageTextData
from vlalign_jax.data.pipeline import eval_batches
from vlalign_jax.eval.hard_negatives import (accuracy_by_kind, caption_beats_negatives, encode_in_batches,
                                             synthetic_negatives_by_kind)
from vlalign_jax.eval.retrieval import retrieval_recall


def image_text_evaluators(model: Any, data: ImageTextData, config: ml_collections.ConfigDict
                          ) -> dict[str, Callable[[Any, dict], dict]]:
    """name -> evaluator(params, extras) for `data.heldout` (none without a held-out set)."""
    if data.heldout is None:
        return {}
    encode = jax.jit(lambda params, pixels, tokens: model.apply({"params": params}, pixels, tokens)[:2])
    encode_texts = jax.jit(lambda params, tokens: model.apply({"params": params}, tokens, method="encode_text"))
    batch_size = config.eval.batch_size

    @functools.cache
    def heldout_batches():  # the held-out set never changes: decode and tokenize it once
        return eval_batches(data.heldout, data.eval_preprocess, batch_size, config.eval.num_heldout)

    def embeddings(params) -> tuple[np.ndarray, np.ndarray]:
        pairs = [jax.device_get(encode(params, b["pixels"], b["tokens"])) for b in heldout_batches()]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def normalized_texts(params, tokens: np.ndarray) -> np.ndarray:
        embeds = encode_in_batches(lambda t: encode_texts(params, t), tokens, batch_size)
        return embeds / np.linalg.norm(embeds.astype(np.float32), axis=-1, keepdims=True)

    def retrieval(params, extras):
        return retrieval_recall(*embeddings(params))

    evaluators = {"retrieval": retrieval}
    if config.data.name == "synthetic_shapes":
        count = min(config.eval.num_heldout, len(data.heldout))

        @functools.cache
        def negative_tokens() -> dict[str, np.ndarray]:
            texts = synthetic_negatives_by_kind(data.heldout, count, seed=config.data.get("seed", 0))
            return {kind: np.asarray(data.tokenizer(captions)) for kind, captions in texts.items()}

        def hard_negatives(params, extras):
            images, captions = embeddings(params)
            return accuracy_by_kind(images, captions, {kind: normalized_texts(params, tokens)
                                                        for kind, tokens in negative_tokens().items()})

        evaluators["hard_negatives"] = hard_negatives
    elif data.num_negatives:
        def own_negatives(params, extras):
            images, captions = embeddings(params)
            tokens = np.concatenate([b["negative_tokens"] for b in heldout_batches()])  # [n, K, L]
            n, k, length = tokens.shape
            negatives = normalized_texts(params, tokens.reshape(n * k, length)).reshape(n, k, -1)
            return {"accuracy": float(caption_beats_negatives(images, captions, negatives).mean())}

        evaluators["hard_negatives"] = own_negatives
    return evaluators
