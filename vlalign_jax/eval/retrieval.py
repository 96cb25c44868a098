"""Image-text retrieval recall: pair i is the only correct match for row i.

Recall@K for image->text ranks all texts for each image by cosine similarity and counts the image
as hit when its own caption is among the top K; text->image likewise. How ties count is a choice
(`ties`), since identical captions are equally right but a collapsed model ties everything.
"""

from __future__ import annotations

import numpy as np


def retrieval_recall(image_embeds: np.ndarray, text_embeds: np.ndarray, ks: tuple[int, ...] = (1, 5),
                     ties: str = "hit") -> dict[str, float]:
    """{'i2t_R@1': ..., 't2i_R@1': ..., ...} for paired rows of L2-normalised embeddings.

    `ties="hit"`: an item scored exactly like the match does not push it down (identical captions,
    common in the synthetic set, are equally right); `ties="miss"`: it does (benchmarks with unique
    captions, where a tie means the model cannot tell them apart).
    """
    if ties not in ("hit", "miss"):
        raise ValueError(f"ties must be 'hit' or 'miss', got {ties!r}")
    image_embeds = np.asarray(image_embeds, np.float32)
    text_embeds = np.asarray(text_embeds, np.float32)
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"paired embeddings needed, got {image_embeds.shape} and {text_embeds.shape}")
    sims = image_embeds @ text_embeds.T
    out = {}
    for direction, matrix in (("i2t", sims), ("t2i", sims.T)):
        # rank of the correct item = number of other items scored higher (or as high, for "miss")
        match = np.diag(matrix)[:, None]
        rank = np.sum(matrix > match, axis=1) if ties == "hit" else np.sum(matrix >= match, axis=1) - 1
        for k in ks:
            out[f"{direction}_R@{k}"] = float(np.mean(rank < k))
    return out
