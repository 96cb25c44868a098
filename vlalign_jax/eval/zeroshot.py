"""Zero-shot image classification with prompt-template ensembles (CLIP, Radford et al. 2021, sec. 3.1.4).

Each class is the text embedding of its prompts: every template filled with the class name is
embedded and L2-normalised, the embeddings are averaged and the mean re-normalised, as OpenAI's
`Prompt_Engineering_for_ImageNet.ipynb` and open_clip's `build_zero_shot_classifier` do. An image is
scored against every class by cosine similarity (no logit scale: it does not change the ranking).

Metrics (`classification_metrics`): top-k accuracy, per-class top-1 accuracy and their mean over
the classes that have examples (balanced accuracy, as scikit-learn's `balanced_accuracy_score`).
Ties are broken by class index: classes are ranked as a stable sort of the scores, highest first,
so a tied class with a lower index ranks ahead (top-1 is `np.argmax`); a model that scores every
class alike is then right on class 0 only, not everywhere. A `k` above the number of classes counts
as k = number of classes (every example is a top-k hit), and the metric keeps its name `top{k}`.

`evaluate_zeroshot` streams a `zeroshot_data.ZeroShotDataset` in batches (images read on threads,
the next batch while the current one is encoded) and keeps one rank per image, never the images
or the score matrix. A record that cannot be read is an error naming its file, or with
`on_error="skip"` is left out and counted (`skipped`, the first messages in `skipped_records`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from vlalign_jax.data.records import DATA_ERRORS, ON_ERROR, RecordError
from vlalign_jax.eval.zeroshot_data import ZeroShotDataset, load_templates

__all__ = ["classification_metrics", "evaluate_zeroshot", "label_ranks", "load_templates", "markdown_table",
           "metrics_from_ranks", "zero_shot_classifier"]

EncodeImages = Callable[[list[Image.Image]], np.ndarray]  # n PIL RGB images -> [n, dim]
EncodeTexts = Callable[[list[str]], np.ndarray]  # n prompts -> [n, dim]
# Messages of skipped records kept in the results; the count covers them all.
MAX_LISTED_SKIPS = 20


def _normalized(embeds: Any, count: int, what: str) -> np.ndarray:
    """`embeds` as float64 [count, dim] rows of unit length; a wrong shape, a non-finite or an
    all-zero embedding is an error (it would silently rank as a tie or NaN)."""
    embeds = np.asarray(embeds, dtype=np.float64)
    if embeds.ndim != 2 or embeds.shape[0] != count:
        raise ValueError(f"{what} returned shape {embeds.shape} for {count} inputs; expected [n, dim]")
    norms = np.linalg.norm(embeds, axis=1, keepdims=True)
    if not np.all(np.isfinite(embeds)) or np.any(norms == 0):
        raise ValueError(f"{what} returned a non-finite or all-zero embedding")
    return embeds / norms


def zero_shot_classifier(encode_texts: EncodeTexts, classnames: Sequence[str], templates: Sequence[str],
                         batch_size: int = 256) -> np.ndarray:
    """Class embeddings [num_classes, dim] (float32, unit rows): per class, the re-normalised mean of
    the normalised embeddings of `template` with `{}` replaced by the class name, for every template.

    Prompts are encoded `batch_size` at a time and summed per class as they come, so memory is
    [num_classes, dim] however many templates there are.
    """
    templates = load_templates(templates)
    if not classnames:
        raise ValueError("no class names")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_templates = len(templates)
    total = len(classnames) * num_templates
    sums = None
    for start in range(0, total, batch_size):
        flat = range(start, min(start + batch_size, total))  # prompt i: class i // T, template i % T
        prompts = [templates[i % num_templates].replace("{}", classnames[i // num_templates]) for i in flat]
        embeds = _normalized(encode_texts(prompts), len(prompts), "encode_texts")
        if sums is None:
            sums = np.zeros((len(classnames), embeds.shape[1]), np.float64)
        np.add.at(sums, np.array(flat) // num_templates, embeds)
    means = sums / num_templates
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"the prompts of class {classnames[int(np.argmin(norms))]!r} average to zero")
    return (means / norms).astype(np.float32)


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rank [n] (0 = best) of each row's label among its scores [n, num_classes]: classes scored
    higher, plus classes scored equal with a lower index (a stable sort, highest first)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores [n, num_classes] and labels [n] needed, got {scores.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or np.any((labels < 0) | (labels >= scores.shape[1])):
        raise ValueError(f"labels must be integers in [0, {scores.shape[1]})")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: the ranking is undefined")
    own = np.take_along_axis(scores, labels[:, None], axis=1)
    before = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return np.sum((scores > own) | ((scores == own) & before), axis=1)


def metrics_from_ranks(ranks: np.ndarray, labels: np.ndarray, num_classes: int,
                       ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """`classification_metrics` from the label ranks of `label_ranks` (see there)."""
    ranks, labels = np.asarray(ranks), np.asarray(labels)
    if ranks.ndim != 1 or ranks.shape != labels.shape or ranks.size == 0:
        raise ValueError(f"ranks and labels of the same shape [n >= 1] needed, got {ranks.shape}, {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes})")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    out: dict[str, Any] = {f"top{k}": float(np.mean(ranks < min(k, num_classes))) for k in ks}
    examples = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=(ranks == 0).astype(np.float64), minlength=num_classes)
    per_class = [float(h / n) if n else None for h, n in zip(hits, examples)]
    present = [a for a in per_class if a is not None]
    out.update(mean_per_class=float(np.mean(present)), per_class=per_class,
               per_class_examples=[int(n) for n in examples], num_examples=int(ranks.size),
               num_classes=int(num_classes))
    return out


def classification_metrics(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Metrics of scores [n, num_classes] (higher = more likely) against integer labels [n].

    Returns `top{k}` for each k (the label among the k best-ranked classes; k is clamped to the
    number of classes), `per_class` (top-1 accuracy per class index; None for a class with no
    example), `per_class_examples`, `mean_per_class` (mean of the per-class accuracies that exist),
    `num_examples` and `num_classes`. Ties: see the module docs.
    """
    scores = np.asarray(scores)
    return metrics_from_ranks(label_ranks(scores, labels), np.asarray(labels), scores.shape[1], ks)


def _read(dataset: ZeroShotDataset, index: int) -> tuple[dict | None, str | None]:
    """(record, None), or (None, message) for a record that cannot be used; the message names it."""
    where = dataset.source.describe(index)
    try:
        record = dataset.source[index]
        label = record["label"]
        if not isinstance(label, (int, np.integer)) or not 0 <= label < len(dataset.class_names):
            raise RecordError(f"label {label!r} is not a class index in [0, {len(dataset.class_names)})")
        return record, None
    except DATA_ERRORS as e:
        message = str(e) if isinstance(e, RecordError) and where in str(e) else f"{where}: {type(e).__name__}: {e}"
        return None, message


def _class_keys(class_names: Sequence[str]) -> list[str]:
    """JSON keys for per-class results: the name, with ` [index]` added where a name repeats (OpenAI's
    ImageNet names have 'missile' and 'sunglasses' twice)."""
    counts = Counter(class_names)
    return [name if counts[name] == 1 else f"{name} [{i}]" for i, name in enumerate(class_names)]


def evaluate_zeroshot(dataset: ZeroShotDataset, encode_images: EncodeImages, encode_texts: EncodeTexts,
                      templates: Sequence[str] | str | None = None, batch_size: int = 64,
                      text_batch_size: int = 256, ks: Sequence[int] = (1, 5), on_error: str = "raise",
                      num_workers: int = 4) -> dict[str, Any]:
    """Zero-shot accuracy of the two encoders on `dataset`, as a JSON-serialisable dict.

    `templates`: a list, a built-in set name or a templates file (`zeroshot_data.load_templates`;
    None = OpenAI's 80 ImageNet templates). Images are read on `num_workers` threads and encoded
    `batch_size` at a time; `encode_images`/`encode_texts` may return unnormalised embeddings.
    Returns `dataset`, `top{k}`, `mean_per_class`, `per_class` ({class name: top-1 accuracy or
    None}), `num_examples` (scored), `num_classes`, `templates` (count), `skipped` and
    `skipped_records` (the first `MAX_LISTED_SKIPS` messages).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    templates = load_templates(templates)
    class_names = list(dataset.class_names)
    classifier = zero_shot_classifier(encode_texts, class_names, templates, text_batch_size).astype(np.float64)
    total = len(dataset)
    ranks, labels, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        def submit(start: int) -> list[Future]:
            return [pool.submit(_read, dataset, i) for i in range(start, min(start + batch_size, total))]

        pending = submit(0)
        for start in range(0, total, batch_size):
            reads = [future.result() for future in pending]
            pending = submit(start + batch_size)  # read the next batch while this one is encoded
            for _, message in reads:
                if message is not None and on_error == "raise":
                    for future in pending:
                        future.cancel()
                    raise RecordError(message)
            skipped += [message for _, message in reads if message is not None]
            records = [record for record, _ in reads if record is not None]
            if not records:
                continue
            embeds = _normalized(encode_images([r["image"] for r in records]), len(records), "encode_images")
            if embeds.shape[1] != classifier.shape[1]:
                raise ValueError(f"image embeddings have dim {embeds.shape[1]}, text embeddings {classifier.shape[1]}")
            batch_labels = np.array([int(r["label"]) for r in records])
            ranks.append(label_ranks(embeds @ classifier.T, batch_labels))
            labels.append(batch_labels)
    if not ranks:
        raise RecordError(f"{dataset.name}: no example could be scored ({total} records, {len(skipped)} skipped)")
    metrics = metrics_from_ranks(np.concatenate(ranks), np.concatenate(labels), len(class_names), ks)
    return {"dataset": dataset.name, **{f"top{k}": metrics[f"top{k}"] for k in ks},
            "mean_per_class": metrics["mean_per_class"],
            "per_class": dict(zip(_class_keys(class_names), metrics["per_class"])),
            "num_examples": metrics["num_examples"], "num_classes": len(class_names),
            "templates": len(templates), "skipped": len(skipped), "skipped_records": skipped[:MAX_LISTED_SKIPS]}


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """One row per dataset of `evaluate_zeroshot` results: top-k and mean per-class accuracy in %,
    then the example, class, template and skipped counts."""
    rows = [results] if isinstance(results, dict) else list(results)
    if not rows:
        raise ValueError("no results to tabulate")
    ks = sorted(int(key[3:]) for key in rows[0] if key.startswith("top") and key[3:].isdigit())
    header = ["zero-shot", *(f"top-{k} (%)" for k in ks), "mean per class (%)", "examples", "classes",
              "templates", "skipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["dataset"], *(_percent(r.get(f"top{k}")) for k in ks), _percent(r["mean_per_class"]),
                 str(r["num_examples"]), str(r["num_classes"]), str(r["templates"]), str(r.get("skipped", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
