"""Compositional benchmarks: SugarCrepe, ARO and VALSE, scored for any dual-encoder model.

An item is one image with one positive caption and one or more negative captions
(`compositional_formats.CompositionalItem`); it counts as correct when the positive's cosine
similarity to the image is strictly above every negative's. Ties count as wrong: a model that
cannot tell the captions apart has not chosen the positive (SugarCrepe's `main_eval.py` and VALSE's
pairwise accuracy use the same strict `>`; ARO's VG files put the false caption first, so their
argmax gives ties to it as well). ARO's Order subsets list the positive first, so there the
reference gives ties to the positive; the one tie that matters, a perturbation that left the word
order unchanged, is dropped at load time instead (`compositional_formats._order_items`), and an
item left with no negatives is correct.

Reported numbers, as the benchmark papers and the DeGLA tables (Hu et al., 2025) report them:
- SugarCrepe (Hsieh et al., 2023): accuracy per subset; the replace/swap/add averages are plain means
  of their subsets (the DeGLA table copies a few that are not, e.g. CLIP swap 64.0); `average` is
  the mean of the seven subsets.
- ARO (Yuksekgonul et al., ICLR 2023): VG-Relation is the macro accuracy over relations, symmetric
  relations left out, and VG-Attribution the macro accuracy over attribute pairs with at least 25
  test cases, both as the reference notebook computes them and as the paper reports them
  (bows issues #37, #8); `micro_accuracy` is the plain fraction over all items. COCO-Order and
  Flickr30k-Order are Precision@1 over the 5-way choices. `average` is the mean of the four, the
  ARO table's Avg.
- VALSE (Parcalabescu et al., ACL 2022): pairwise accuracy per piece over the annotator-validated
  records; `counting` is the mean of the three counting pieces and `average` the mean of all eleven
  pieces, which reproduces the Avg column of the DeGLA/CE-CLIP VALSE table from its cells.

`evaluate_suite` is what `vlalign eval --suite sugarcrepe|aro|valse --data DIR` calls; see
`compositional_formats` for the expected layout under DIR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval.benchmark_files import open_rgb
from vlalign_jax.eval.compositional_formats import (
    ARO_SUBSETS,
    SUGARCREPE_SUBSETS,
    VALSE_PIECES,
    VG_SYMMETRIC_RELATIONS,
    VGA_MIN_PAIR_COUNT,
    CompositionalItem,
    load_aro,
    load_sugarcrepe,
    load_valse,
)

__all__ = ["SUITES", "CompositionalItem", "evaluate_suite", "load_suite", "markdown_table",
           "score_items", "summarize"]

EncodeImages = Callable[[list[Image.Image]], np.ndarray]  # n PIL RGB images -> [n, dim]
EncodeTexts = Callable[[list[str]], np.ndarray]  # n captions -> [n, dim]

SUITES: dict[str, tuple[str, ...]] = {"sugarcrepe": SUGARCREPE_SUBSETS, "aro": ARO_SUBSETS,
                                      "valse": VALSE_PIECES}
# Group name -> its subsets; a group is reported only when all its subsets were evaluated.
GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "sugarcrepe": {"replace": ("replace_obj", "replace_att", "replace_rel"),
                   "swap": ("swap_obj", "swap_att"), "add": ("add_obj", "add_att")},
    "aro": {},
    "valse": {"counting": ("counting-hard", "counting-small-quant", "counting-adversarial")},
}
# Column headers of `markdown_table`, as the papers' tables name them.
LABELS = {
    "replace_obj": "Rep-obj", "replace_att": "Rep-att", "replace_rel": "Rep-rel",
    "swap_obj": "Swap-obj", "swap_att": "Swap-att", "add_obj": "Add-obj", "add_att": "Add-att",
    "replace": "Rep avg", "swap": "Swap avg", "add": "Add avg",
    "existence": "Exist.", "plurals": "Plural.", "counting-hard": "Count. bal.",
    "counting-small-quant": "Count. small", "counting-adversarial": "Count. adv.",
    "counting": "Count.", "relations": "Sp.rel", "action-replacement": "Act.repl",
    "actant-swap": "Act.swap", "coreference-standard": "Coref.std",
    "coreference-hard": "Coref.clean", "foil-it": "Foil-it",
}
# Images and texts encoded per chunk of items: bounds memory; items that share an image are
# adjacent in every suite, so little is encoded twice.
CHUNK_ITEMS = 4096


def load_suite(suite: str, data_dir: str, subsets: Sequence[str] | None = None,
               **loader_kwargs: Any) -> list[CompositionalItem]:
    """The items of `suite` ('sugarcrepe', 'aro' or 'valse'), optionally only some subsets."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {sorted(SUITES)}")
    unknown = sorted(set(subsets or ()) - set(SUITES[suite]))
    if unknown:
        raise ValueError(f"unknown {suite} subsets {unknown}; known: {SUITES[suite]}")
    loader = {"sugarcrepe": load_sugarcrepe, "aro": load_aro, "valse": load_valse}[suite]
    return loader(data_dir, subsets, **loader_kwargs)


def _open_image(key: tuple[str, Any]) -> Image.Image:
    """The image of an (image path, crop box or None) key, cropped; unreadable is `open_rgb`'s RecordError."""
    path, box = key
    image = open_rgb(path)
    return image.crop(box) if box is not None else image


def _encode(encode: Callable[[list], np.ndarray], inputs: list, batch_size: int,
            load: Callable[[Any], Any] | None = None,
            pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """L2-normalised embeddings [len(inputs), dim] in float64, encoded `batch_size` at a time."""
    parts = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        if load is not None:
            batch = list(pool.map(load, batch)) if pool is not None else [load(x) for x in batch]
        embeds = np.asarray(encode(batch), dtype=np.float64)
        if embeds.ndim != 2 or embeds.shape[0] != len(batch):
            raise ValueError(f"an encoder returned shape {embeds.shape} for {len(batch)} inputs; "
                             "expected [n, dim]")
        parts.append(embeds)
    embeds = np.concatenate(parts)
    norms = np.linalg.norm(embeds, axis=1, keepdims=True)
    if not np.all(np.isfinite(embeds)) or np.any(norms == 0):
        raise ValueError("an encoder returned a non-finite or all-zero embedding")
    return embeds / norms


def score_items(items: Sequence[CompositionalItem], encode_images: EncodeImages,
                encode_texts: EncodeTexts, batch_size: int = 64,
                num_workers: int = 8) -> np.ndarray:
    """Per-item correctness [len(items)] (bool): cosine(image, positive) > cosine(image, negative)
    for every negative; a tie is wrong. Each distinct image (path and crop) and caption of a chunk
    of items is encoded once; images are read on `num_workers` threads."""
    correct = np.zeros(len(items), dtype=bool)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for start in range(0, len(items), CHUNK_ITEMS):
            chunk = items[start:start + CHUNK_ITEMS]
            image_keys = [(i.image, None) if isinstance(i.image, str) else i.image for i in chunk]
            image_index = {key: n for n, key in enumerate(dict.fromkeys(image_keys))}
            text_index = {t: n for n, t in enumerate(dict.fromkeys(
                t for i in chunk for t in (i.positive, *i.negatives)))}
            image_embeds = _encode(encode_images, list(image_index), batch_size, _open_image, pool)
            text_embeds = _encode(encode_texts, list(text_index), batch_size)
            for n, (item, key) in enumerate(zip(chunk, image_keys)):
                image = image_embeds[image_index[key]]
                positive = text_embeds[text_index[item.positive]] @ image
                negatives = [text_embeds[text_index[t]] @ image for t in item.negatives]
                correct[start + n] = all(positive > negative for negative in negatives)
    return correct


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _macro(groups: np.ndarray, correct: np.ndarray, keep: Callable[[str, int], bool]
           ) -> tuple[float | None, int]:
    """Mean over kept groups of each group's accuracy, and how many groups were kept."""
    accuracies = []
    for group in sorted(set(groups.tolist())):
        mask = groups == group
        if keep(group, int(mask.sum())):
            accuracies.append(float(correct[mask].mean()))
    return _mean(accuracies), len(accuracies)


def summarize(suite: str, items: Sequence[CompositionalItem], correct: np.ndarray
              ) -> dict[str, Any]:
    """The JSON-serialisable results of `suite` from per-item correctness (see the module docs)."""
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != (len(items),):
        raise ValueError(f"{len(items)} items but correctness of shape {correct.shape}")
    subset_of = np.array([item.subset for item in items], dtype=object)
    results: dict[str, Any] = {"suite": suite, "subsets": {}, "groups": {}}
    for subset in SUITES[suite]:
        mask = subset_of == subset
        if not mask.any():
            continue
        hits, count = correct[mask], int(mask.sum())
        entry: dict[str, Any] = {"accuracy": float(hits.mean()), "items": count,
                                 "correct": int(hits.sum())}
        if subset in ("VG-Relation", "VG-Attribution"):
            groups = np.array([item.group for item in items], dtype=object)[mask]
            if subset == "VG-Relation":
                macro, kept = _macro(groups, hits, lambda g, n: g not in VG_SYMMETRIC_RELATIONS)
                entry["macro_over"] = "relations, symmetric ones left out"
            else:
                macro, kept = _macro(groups, hits, lambda g, n: n >= VGA_MIN_PAIR_COUNT)
                entry["macro_over"] = f"attribute pairs with >= {VGA_MIN_PAIR_COUNT} items"
            entry.update(accuracy=macro, micro_accuracy=float(hits.mean()), groups=kept)
        results["subsets"][subset] = entry
    for group, members in GROUPS[suite].items():
        if all(m in results["subsets"] for m in members):
            results["groups"][group] = _mean([results["subsets"][m]["accuracy"] for m in members])
    results["average"] = _mean([entry["accuracy"] for entry in results["subsets"].values()])
    return results


def evaluate_suite(suite: str, data_dir: str, encode_images: EncodeImages,
                   encode_texts: EncodeTexts, batch_size: int = 64,
                   subsets: Sequence[str] | None = None, num_workers: int = 8,
                   **loader_kwargs: Any) -> dict[str, Any]:
    """Load `suite` from `data_dir`, score it with the two encoders and summarise it.

    `encode_images` takes a list of PIL RGB images (already cropped where the benchmark crops) and
    returns [n, dim] embeddings; `encode_texts` takes a list of captions. The encoders do their own
    preprocessing; the embeddings need not be normalised. `loader_kwargs` go to the suite's loader
    (ARO: tagger, seed; VALSE: valid_only, image_dirs).
    """
    items = load_suite(suite, data_dir, subsets, **loader_kwargs)
    if not items:
        raise RecordError(f"no {suite} items found under {data_dir}")
    correct = score_items(items, encode_images, encode_texts, batch_size, num_workers)
    return summarize(suite, items, correct)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """A Markdown table of `summarize`'s results: accuracy in % per subset, then the group averages
    and the average, with the item counts in a second row."""
    columns = [(LABELS.get(name, name), entry["accuracy"], str(entry["items"]))
               for name, entry in results["subsets"].items()]
    columns += [(LABELS.get(name, name), value, "") for name, value in results["groups"].items()]
    columns.append(("Avg", results["average"], ""))
    header = f"| {results['suite']} | " + " | ".join(label for label, _, _ in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    accuracy = "| accuracy (%) | " + " | ".join(_percent(v) for _, v, _ in columns) + " |"
    counts = "| items | " + " | ".join(count for _, _, count in columns) + " |"
    return f"{header}\n{rule}\n{accuracy}\n{counts}"
