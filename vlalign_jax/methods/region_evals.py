"""Held-out evaluations of the region-text methods (FG-CLIP 1 and 2): region-level hard-negative
accuracy (a box scores its own description above each of its negative descriptions, ties wrong),
region-text retrieval inside each image, and image-text retrieval with the short captions.

They reuse the method's own `embed` on held-out batches, so what is evaluated is exactly what is
trained (RoIAlign pooling, text walks, masks).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from vlalign_jax.data.pipeline import eval_batches
from vlalign_jax.eval.retrieval import retrieval_recall


def region_accuracy(regions: np.ndarray, candidates: np.ndarray, box_mask: np.ndarray,
                    negative_mask: np.ndarray) -> dict[str, float]:
    """regions [n, M, D], candidates [n, M, 1+K, D] (0 = positive), masks [n, M], [n, M, K]."""
    scores = np.einsum("nmd,nmkd->nmk", regions, candidates)
    negatives = np.where(negative_mask, scores[..., 1:], -np.inf)
    hard = box_mask & negative_mask.any(-1)
    right = scores[..., 0] > negatives.max(-1)
    return {"hard_negative_accuracy": float(right[hard].mean()) if hard.any() else float("nan"),
            "boxes": float(hard.sum())}


def box_text_matching(regions: np.ndarray, region_text: np.ndarray, box_mask: np.ndarray) -> float:
    """Fraction of boxes whose most similar description, among their image's boxes, is their own."""
    right, total = 0, 0
    for r, t, mask in zip(regions, region_text, box_mask):
        if mask.sum() < 2:
            continue
        scores = r[mask] @ t[mask].T
        right += int((scores.argmax(1) == np.arange(len(scores))).sum())
        total += len(scores)
    return right / total if total else float("nan")


def region_evaluators(model: Any, data: Any, config: ml_collections.ConfigDict,
                      embed: Callable) -> dict[str, Callable[[Any, dict], dict]]:
    if data.heldout is None:
        return {}
    embed_jit = jax.jit(lambda params, extras, batch: embed(params, extras, batch, jax.random.PRNGKey(0)))

    @functools.cache
    def batches():
        return eval_batches(data.heldout, data.eval_preprocess, config.eval.batch_size, config.eval.num_heldout)

    def features(params, extras) -> dict[str, np.ndarray]:
        parts = [jax.device_get(embed_jit(params, extras, b)) for b in batches()]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def regions(params, extras):
        f = features(params, extras)
        results = region_accuracy(f["regions"], f["candidates"], f["box_mask"], f["negative_mask"])
        results["box_text_matching"] = box_text_matching(f["regions"], f["region_text"], f["box_mask"])
        return {**results, **{f"short_{k}": v for k, v in retrieval_recall(f["image"], f["short"]).items()}}

    return {"regions": regions}
