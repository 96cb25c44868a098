"""Image-text retrieval recall: paired rows (`retrieval_recall`, training-time evaluation) and
several captions per image (`multi_caption_recall`, `evaluate_retrieval`: COCO / Flickr30k Karpathy
test sets and FG-CLIP's long-caption sets, read by `retrieval_data`).

Recall@K for image->text ranks all texts for each image by cosine similarity and counts the image
as hit when its own caption (any of them) is among the top K; text->image likewise. How ties count
is a choice (`ties`), since identical captions are equally right but a collapsed model ties everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from vlalign_jax.eval.benchmark_files import open_rgb
from vlalign_jax.eval.retrieval_data import RetrievalDataset

EncodeImages = Callable[[list[Image.Image]], np.ndarray]  # n PIL RGB images -> [n, D]
EncodeTexts = Callable[[list[str]], np.ndarray]  # n captions -> [n, D]
RANK_CHUNK = 256  # query rows scored at once: bounds memory (COCO: 256 x 25010 float64 = 51 MB)


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


# ----------------------------------------------------------------------------- several captions per image

def multi_caption_recall(image_embeds: np.ndarray, text_embeds: np.ndarray, text_to_image: np.ndarray,
                         ks: Sequence[int] = (1, 5, 10), ties: str = "miss") -> dict[str, float]:
    """{'i2t_R@1': ..., 't2i_R@1': ..., ...} when text j describes image `text_to_image[j]`.

    image_embeds [N_img, D], text_embeds [N_txt, D] (scores are dot products: pass L2-normalised rows
    for cosine similarity); every image needs at least one caption. Image->text: an image is a hit at
    K when any of its captions is among its K best-scored texts; text->image: a caption is a hit when
    its image is among its K best-scored images (open_clip / CLIP_benchmark). `ties="miss"` (default:
    benchmarks, as `fine_grained.long_retrieval`): a wrong item scored exactly like the best correct
    one ranks ahead of it, so a model that cannot tell them apart has not retrieved; `ties="hit"`
    (`retrieval_recall`'s default): it ranks behind. Another caption of the same image is never wrong.
    """
    if ties not in ("hit", "miss"):
        raise ValueError(f"ties must be 'hit' or 'miss', got {ties!r}")
    image_embeds = np.asarray(image_embeds, np.float64)
    text_embeds = np.asarray(text_embeds, np.float64)
    text_to_image = np.asarray(text_to_image)
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"embeddings must be [N_img, D] and [N_txt, D], got {image_embeds.shape} and "
                         f"{text_embeds.shape}")
    if not (np.all(np.isfinite(image_embeds)) and np.all(np.isfinite(text_embeds))):
        raise ValueError("embeddings hold a non-finite value")
    num_images = len(image_embeds)
    if text_to_image.shape != (len(text_embeds),) or not np.issubdtype(text_to_image.dtype, np.integer):
        raise ValueError(f"text_to_image must be {len(text_embeds)} integers (one per text), got "
                         f"{text_to_image.dtype} of shape {text_to_image.shape}")
    if len(text_to_image) and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image holds an image index outside [0, {num_images})")
    uncaptioned = np.flatnonzero(np.bincount(text_to_image, minlength=num_images) == 0)
    if num_images == 0 or len(uncaptioned):
        raise ValueError(f"every image needs a caption; images without one: {uncaptioned[:10].tolist()}"
                         if num_images else "no images")
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    beats = np.greater if ties == "hit" else np.greater_equal  # a wrong item ranked ahead of the match

    i2t_rank = np.empty(num_images, np.int64)  # wrong texts ranked ahead of the image's best caption
    for start in range(0, num_images, RANK_CHUNK):
        scores = image_embeds[start:start + RANK_CHUNK] @ text_embeds.T  # [chunk, N_txt]
        own = text_to_image[None, :] == np.arange(start, start + len(scores))[:, None]
        best = np.where(own, scores, -np.inf).max(axis=1, keepdims=True)
        i2t_rank[start:start + len(scores)] = np.sum(beats(scores, best) & ~own, axis=1)
    t2i_rank = np.empty(len(text_embeds), np.int64)  # other images ranked ahead of the caption's image
    for start in range(0, len(text_embeds), RANK_CHUNK):
        scores = text_embeds[start:start + RANK_CHUNK] @ image_embeds.T  # [chunk, N_img]
        owners = text_to_image[start:start + len(scores)]
        match = scores[np.arange(len(scores)), owners][:, None]
        ahead = np.sum(beats(scores, match), axis=1)
        t2i_rank[start:start + len(scores)] = ahead - 1 if ties == "miss" else ahead  # ">=" counted the match
    out = {}
    for direction, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            out[f"{direction}_R@{k}"] = float(np.mean(rank < k))
    return out


def _encode(encode: Callable[[list], np.ndarray], inputs: Sequence, batch_size: int, what: str,
            load: Callable[[Any], Any] | None = None, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """L2-normalised float64 embeddings [len(inputs), D], `batch_size` inputs per call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    parts = []
    for start in range(0, len(inputs), batch_size):
        batch = list(inputs[start:start + batch_size])
        if load is not None:
            batch = list(pool.map(load, batch)) if pool is not None else [load(x) for x in batch]
        embeds = np.asarray(encode(batch), np.float64)
        if embeds.ndim != 2 or embeds.shape[0] != len(batch):
            raise ValueError(f"{what} returned shape {embeds.shape} for {len(batch)} inputs; expected [n, dim]")
        if not np.all(np.isfinite(embeds)) or np.any(np.linalg.norm(embeds, axis=1) == 0):
            raise ValueError(f"{what} returned a non-finite or all-zero embedding (inputs {start} to "
                             f"{start + len(batch) - 1})")
        parts.append(embeds / np.linalg.norm(embeds, axis=1, keepdims=True))
    return np.concatenate(parts)


def evaluate_retrieval(dataset: RetrievalDataset, encode_images: EncodeImages, encode_texts: EncodeTexts,
                       batch_size: int = 64, ks: Sequence[int] = (1, 5, 10), ties: str = "miss",
                       num_workers: int = 8) -> dict[str, Any]:
    """Encode a `retrieval_data` set and score it with `multi_caption_recall` (cosine similarity).

    `encode_images` takes a list of PIL RGB images (read on `num_workers` threads), `encode_texts` a
    list of captions (wrap it to pick a text walk or lower-case); both return [n, D], normalised here.
    Each distinct caption string is encoded once, so repeated captions tie exactly (COCO repeats some
    across images; under "miss" another image's copy of an image's best caption ranks ahead). Returns
    {'dataset', 'i2t_R@k'..., 't2i_R@k'..., 'num_images', 'num_texts', 'ties'}, JSON-serialisable.
    """
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        image_embeds = _encode(encode_images, dataset.images, batch_size, "encode_images", open_rgb, pool)
    unique = {text: n for n, text in enumerate(dict.fromkeys(dataset.texts))}
    text_embeds = _encode(encode_texts, list(unique), batch_size, "encode_texts")
    text_embeds = text_embeds[[unique[text] for text in dataset.texts]]
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image embeddings have {image_embeds.shape[1]} dims, text {text_embeds.shape[1]}")
    recall = multi_caption_recall(image_embeds, text_embeds, dataset.text_to_image, ks, ties)
    return {"dataset": dataset.name, **recall, "num_images": dataset.num_images,
            "num_texts": dataset.num_texts, "ties": ties}


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """A Markdown table of `evaluate_retrieval` results, one row per data set: recall in %, then the
    image and caption counts."""
    rows = [results] if isinstance(results, dict) else list(results)
    if not rows:
        raise ValueError("no results to tabulate")
    keys = [k for k in rows[0] if k.startswith(("i2t_R@", "t2i_R@"))]
    for row in rows[1:]:
        if [k for k in row if k.startswith(("i2t_R@", "t2i_R@"))] != keys:
            raise ValueError(f"results of {row.get('dataset')!r} have other recall columns than {keys}")
    lines = ["| retrieval (%) | " + " | ".join(k.replace("_", " ") for k in keys) + " | images | texts |",
             "|---|" + "---|" * (len(keys) + 2)]
    lines += [f"| {row.get('dataset', '')} | " + " | ".join(_percent(row[k]) for k in keys) +
              f" | {row['num_images']} | {row['num_texts']} |" for row in rows]
    return "\n".join(lines)
