"""Image-text retrieval recall: pair i is the only correct match for row i.

Recall@K for image->text ranks all texts for each image by cosine similarity and counts the image
as hit when its own caption is among the top K; text->image likewise. Ties count for the hit: identical
captions are equally right (a collapsed model with identical embeddings would read 1.0, so the
region evaluators also report hard-negative accuracy, where ties are wrong).
"""

from __future__ import annotations

import numpy as np


def retrieval_recall(image_embeds: np.ndarray, text_embeds: np.ndarray, ks: tuple[int, ...] = (1, 5)
                     ) -> dict[str, float]:
    """{'i2t_R@1': ..., 't2i_R@1': ..., ...} for paired rows of L2-normalised embeddings."""
    image_embeds = np.asarray(image_embeds, np.float32)
    text_embeds = np.asarray(text_embeds, np.float32)
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"paired embeddings needed, got {image_embeds.shape} and {text_embeds.shape}")
    sims = image_embeds @ text_embeds.T
    out = {}
    for direction, matrix in (("i2t", sims), ("t2i", sims.T)):
        # rank of the correct item = number of items scored strictly higher: an item tied with its
        # match (an identical caption, common in the synthetic set) does not push it down
        rank = np.sum(matrix > np.diag(matrix)[:, None], axis=1)
        for k in ks:
            out[f"{direction}_R@{k}"] = float(np.mean(rank < k))
    return out
