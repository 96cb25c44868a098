"""Hard-negative accuracy: does an image score its caption above a minimally changed false caption?

The measure of compositional understanding DeGLA targets (SugarCrepe, ARO and VALSE are this test on
real data, see `compositional.py`). On the synthetic shapes dataset every held-out image gets one
negative of each kind (attribute swap, position swap, object replacement), so the accuracy is reported
per kind, like the paper's per-type tables. An item is right only if the caption's similarity is
strictly higher than the negative's (a tie is wrong).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

EncodeTexts = Callable[[np.ndarray], np.ndarray]  # token ids [n, L] -> normalised embeddings [n, D]


def caption_beats_negatives(image_embeds: np.ndarray, caption_embeds: np.ndarray,
                            negative_embeds: np.ndarray) -> np.ndarray:
    """bool [n]: cos(image, caption) > cos(image, every negative). Shapes [n, D], [n, D], [n, K, D]."""
    positive = np.einsum("nd,nd->n", image_embeds, caption_embeds)
    negative = np.einsum("nd,nkd->nk", image_embeds, negative_embeds)
    return positive > negative.max(axis=1)


def synthetic_negatives_by_kind(source, num_examples: int, seed: int = 0) -> dict[str, list[str]]:
    """For the first `num_examples` of a `SyntheticShapes` source, one negative caption per kind."""
    from vlalign_jax.data.sources.synthetic import NEGATIVE_KINDS, negative_of_kind

    rng = np.random.default_rng(seed)
    draws = rng.random((num_examples, len(NEGATIVE_KINDS)))
    scenes = [source.scene(i).objects for i in range(num_examples)]
    return {kind: [negative_of_kind(objects, kind, float(draws[i, k])) for i, objects in enumerate(scenes)]
            for k, kind in enumerate(NEGATIVE_KINDS)}


def accuracy_by_kind(image_embeds: np.ndarray, caption_embeds: np.ndarray,
                     negatives_by_kind: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy per kind (negatives_by_kind: kind -> [n, D]) and their mean as `mean`."""
    results = {kind: float(caption_beats_negatives(image_embeds, caption_embeds, embeds[:, None]).mean())
               for kind, embeds in negatives_by_kind.items()}
    results["mean"] = float(np.mean(list(results.values())))
    return results


def encode_in_batches(encode: EncodeTexts, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(encode(tokens[i:i + batch_size])) for i in range(0, len(tokens), batch_size)])
