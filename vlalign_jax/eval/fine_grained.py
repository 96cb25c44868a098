"""Fine-grained evaluations of FG-CLIP (research/fgclip.md 6.1), scored for any model from encoder
callables: FG-OVD box-caption ranking, long-caption retrieval (ShareGPT4V-1k, DCI) and box
classification (COCO / LVIS style). Readers of the public files are in `fine_grained_formats`.

The encoders do their own preprocessing; their outputs need not be normalised:
- `encode_regions(image: PIL RGB, boxes_xyxy: [n, 4] pixels of that image) -> [n, D]`, one vector per
  box (FG-CLIP: RoIAlign over the dense feature map, `region_encoders`);
- `encode_texts(texts, walk) -> [n, D]`, walk "short" (77-token captions), "box" (region captions;
  FG-CLIP 1 reads them on the short walk, FG-CLIP 2 on its box walk) or "long";
- `encode_images(images) -> [n, D]`.

Metrics, ties always counted against the model (a model that cannot tell captions apart has not
chosen; the reference's `torch.equal(max, p[0])` would count an exact tie as correct, and its
`argsort` breaks retrieval ties by index):
- FG-OVD (Bianchi et al., CVPR 2024, as FG-CLIP scores it): per file, top-1 accuracy of the positive
  among 1 + N captions by cosine similarity to the box embedding;
- long retrieval: image->text and text->image R@1 over the paired set (`retrieval.retrieval_recall`);
- box classification: each class embedding is the renormalised mean of its normalised template
  embeddings (the reference `zeroshot_classifier`); top-1 (and top-5) accuracy of the true class among
  all classes. Default template "a photo of a {}."; FG-CLIP's `coco_box_cls.py` averages the 80
  ImageNet templates instead, which `templates=` can reproduce.
A zero box (no area) pools to a zero vector, which ties every caption and so counts as wrong.

`add_arguments` / `run` are the `vlalign fine-grained` command.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlalign_jax.eval import fine_grained_formats as formats
from vlalign_jax.eval.benchmark_files import open_rgb
from vlalign_jax.eval.fine_grained_formats import BoxClassData, FgovdItem, LongCaptionItem
from vlalign_jax.eval.reports import report
from vlalign_jax.eval.retrieval import retrieval_recall

__all__ = ["TASKS", "add_arguments", "box_classification", "class_embeddings", "fgovd_accuracy",
           "long_retrieval", "markdown_table", "run", "score_fgovd", "xywh_to_xyxy"]

EncodeRegions = Callable[[Image.Image, np.ndarray], np.ndarray]  # image, [n, 4] xyxy pixels -> [n, D]
EncodeTexts = Callable[[list[str], str], np.ndarray]  # texts, walk -> [n, D]
EncodeImages = Callable[[list[Image.Image]], np.ndarray]  # images -> [n, D]

TASKS = ("fgovd", "sharegpt4v", "dci", "boxcls")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
CHUNK_IMAGES = 64  # images read ahead (on threads) and scored together; bounds memory


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] COCO (x, y, w, h) -> (x1, y1, x2, y2), as the reference's `(x, y, x + w, y + h)`."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _unit_rows(embeds: Any, count: int, what: str, allow_zero: bool = False) -> np.ndarray:
    """float64 rows scaled to unit length; zero rows stay zero only where `allow_zero`."""
    embeds = np.asarray(embeds, np.float64)
    if embeds.ndim != 2 or embeds.shape[0] != count:
        raise ValueError(f"{what} returned shape {embeds.shape} for {count} inputs; expected [n, dim]")
    if not np.all(np.isfinite(embeds)):
        raise ValueError(f"{what} returned a non-finite embedding")
    norms = np.linalg.norm(embeds, axis=1, keepdims=True)
    if not allow_zero and np.any(norms == 0):
        raise ValueError(f"{what} returned an all-zero embedding")
    return embeds / np.where(norms == 0, 1.0, norms)


def _encode_texts(encode_texts: EncodeTexts, texts: list[str], walk: str, batch_size: int) -> np.ndarray:
    parts = [_unit_rows(encode_texts(texts[i:i + batch_size], walk), len(texts[i:i + batch_size]),
                        "encode_texts") for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts)


def _encode_images(encode_images: EncodeImages, paths: list[str], batch_size: int,
                   pool: ThreadPoolExecutor) -> np.ndarray:
    parts = []
    for start in range(0, len(paths), batch_size):
        images = list(pool.map(open_rgb, paths[start:start + batch_size]))
        parts.append(_unit_rows(encode_images(images), len(images), "encode_images"))
    return np.concatenate(parts)


def _regions_per_image(paths: list[str], boxes: list[np.ndarray], encode_regions: EncodeRegions,
                       pool: ThreadPoolExecutor) -> list[np.ndarray]:
    """Unit region embeddings [n_i, D] per image (boxes xyxy pixels), images read on threads."""
    out = []
    for start in range(0, len(paths), CHUNK_IMAGES):
        images = pool.map(open_rgb, paths[start:start + CHUNK_IMAGES])
        for image, image_boxes in zip(images, boxes[start:start + CHUNK_IMAGES]):
            out.append(_unit_rows(encode_regions(image, image_boxes), len(image_boxes), "encode_regions",
                                  allow_zero=True))
    return out


def _ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each row, how many other columns score at least as high as the target (0 = strictly first)."""
    target_scores = scores[np.arange(len(targets)), targets]
    return np.sum(scores >= target_scores[:, None], axis=1) - 1


# ----------------------------------------------------------------------------- FG-OVD

def score_fgovd(items: Sequence[FgovdItem], encode_regions: EncodeRegions, encode_texts: EncodeTexts,
                walk: str = "box", batch_size: int = 256, num_workers: int = 8) -> np.ndarray:
    """Per-item correctness [len(items)] (bool): cos(box, positive) > cos(box, every negative).

    Boxes of one image are encoded in one call; captions of a chunk of images are encoded once each.
    """
    by_image: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_image.setdefault(item.image, []).append(index)
    paths = list(by_image)
    correct = np.zeros(len(items), dtype=bool)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for start in range(0, len(paths), CHUNK_IMAGES):
            chunk = paths[start:start + CHUNK_IMAGES]
            boxes = [xywh_to_xyxy([items[i].box_xywh for i in by_image[p]]) for p in chunk]
            regions = _regions_per_image(chunk, boxes, encode_regions, pool)
            indices = [i for p in chunk for i in by_image[p]]
            texts = list(dict.fromkeys(t for i in indices for t in (items[i].positive, *items[i].negatives)))
            text_row = {t: n for n, t in enumerate(texts)}
            text_embeds = _encode_texts(encode_texts, texts, walk, batch_size)
            for path, region_embeds in zip(chunk, regions):
                for index, region in zip(by_image[path], region_embeds):
                    item = items[index]
                    scores = text_embeds[[text_row[t] for t in (item.positive, *item.negatives)]] @ region
                    correct[index] = bool(scores[0] > scores[1:].max())
    return correct


def fgovd_accuracy(source: str | Sequence[str], image_root: str, encode_regions: EncodeRegions,
                   encode_texts: EncodeTexts, subsets: Sequence[str] | None = None, walk: str = "box",
                   batch_size: int = 256, num_workers: int = 8) -> dict[str, Any]:
    """Top-1 accuracy per FG-OVD file. `source` is a folder of `*_llava.jsonl` files or file paths;
    images are `image_root/img_path` (the COCO root)."""
    results: dict[str, Any] = {"task": "fgovd", "walk": walk, "subsets": {}}
    for subset, path in formats.find_fgovd_files(source, subsets).items():
        items = formats.read_fgovd(path, image_root, subset)
        correct = score_fgovd(items, encode_regions, encode_texts, walk, batch_size, num_workers)
        counts = [len(item.negatives) for item in items]
        results["subsets"][subset] = {"accuracy": float(correct.mean()), "items": len(items),
                                      "correct": int(correct.sum()), "file": str(path),
                                      "negatives_min": min(counts), "negatives_max": max(counts)}
    results["average"] = float(np.mean([e["accuracy"] for e in results["subsets"].values()]))
    return results


# ----------------------------------------------------------------------------- long retrieval

def long_retrieval(items: Sequence[LongCaptionItem], encode_images: EncodeImages, encode_texts: EncodeTexts,
                   walk: str = "long", batch_size: int = 64, ks: Sequence[int] = (1,),
                   num_workers: int = 8, name: str = "long") -> dict[str, Any]:
    """Image->text and text->image recall@k over paired (image, long caption) items; ties miss."""
    if not items:
        raise ValueError("no items to retrieve")
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        image_embeds = _encode_images(encode_images, [item.image for item in items], batch_size, pool)
    text_embeds = _encode_texts(encode_texts, [item.caption for item in items], walk, batch_size)
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image embeddings have {image_embeds.shape[1]} dims, text {text_embeds.shape[1]}")
    recall = retrieval_recall(image_embeds, text_embeds, tuple(ks), ties="miss")
    return {"task": name, "walk": walk, "items": len(items), **recall}


# ----------------------------------------------------------------------------- box classification

def class_embeddings(class_names: Sequence[str], encode_texts: EncodeTexts,
                     templates: Sequence[str] = DEFAULT_TEMPLATES, walk: str = "box",
                     batch_size: int = 256) -> np.ndarray:
    """[classes, D]: per class the renormalised mean of its unit template embeddings."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must each hold '{{}}' for the class name, got {list(templates)}")
    prompts = [t.format(name) for name in class_names for t in templates]
    embeds = _encode_texts(encode_texts, prompts, walk, batch_size).reshape(len(class_names), len(templates), -1)
    return _unit_rows(embeds.mean(axis=1), len(class_names), "class embeddings")


def box_classification(data: BoxClassData, encode_regions: EncodeRegions, encode_texts: EncodeTexts,
                       templates: Sequence[str] = DEFAULT_TEMPLATES, walk: str = "box",
                       ks: Sequence[int] = (1, 5), batch_size: int = 256, num_workers: int = 8) -> dict[str, Any]:
    """Top-k accuracy of each box's class among all classes (a tie with another class misses)."""
    classes = class_embeddings(data.class_names, encode_texts, templates, walk, batch_size)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        regions = _regions_per_image([i.image for i in data.images],
                                     [xywh_to_xyxy(i.boxes_xywh) for i in data.images], encode_regions, pool)
    scores = np.concatenate(regions) @ classes.T  # [boxes, classes]
    labels = np.concatenate([image.labels for image in data.images])
    ranks = _ranks(scores, labels)
    results: dict[str, Any] = {"task": "boxcls", "walk": walk, "boxes": len(labels),
                               "images": len(data.images), "classes": len(data.class_names),
                               "templates": list(templates)}
    for k in ks:
        results[f"top{k}_accuracy"] = float(np.mean(ranks < k))
    per_class = {}
    for index, name in enumerate(data.class_names):
        mask = labels == index
        if mask.any():
            per_class[name] = {"top1_accuracy": float(np.mean(ranks[mask] < 1)), "boxes": int(mask.sum())}
    results["per_class"] = per_class
    return results


# ----------------------------------------------------------------------------- reporting

def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """A Markdown table (values in %) of the results of any of the three evaluations."""
    task = results.get("task")
    if task == "fgovd":
        columns = [(name, entry["accuracy"], str(entry["items"])) for name, entry in results["subsets"].items()]
        columns.append(("average", results["average"], ""))
        header = "| FG-OVD | " + " | ".join(c[0] for c in columns) + " |"
        return "\n".join([header, "|---|" + "---|" * len(columns),
                          "| top-1 accuracy (%) | " + " | ".join(_percent(c[1]) for c in columns) + " |",
                          "| items | " + " | ".join(c[2] for c in columns) + " |"])
    if task == "boxcls":
        keys = [k for k in results if k.startswith("top") and k.endswith("_accuracy")]
        header = "| box classification | " + " | ".join(k.replace("_accuracy", "") for k in keys) + \
                 " | boxes | classes |"
        row = "| accuracy (%) | " + " | ".join(_percent(results[k]) for k in keys) + \
              f" | {results['boxes']} | {results['classes']} |"
        return "\n".join([header, "|---|" + "---|" * (len(keys) + 2), row])
    keys = [k for k in results if k.startswith(("i2t_R@", "t2i_R@"))]
    header = f"| {task} retrieval | " + " | ".join(keys) + " | items |"
    row = "| recall (%) | " + " | ".join(_percent(results[k]) for k in keys) + f" | {results['items']} |"
    return "\n".join([header, "|---|" + "---|" * (len(keys) + 1), row])


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vlalign fine-grained`."""
    from vlalign_jax.eval.region_encoders import add_encoder_arguments

    parser.add_argument("--task", required=True, choices=TASKS,
                        help="fgovd: FG-OVD box captions; sharegpt4v / dci: long-caption retrieval; "
                             "boxcls: box classification from a COCO instances JSON")
    parser.add_argument("--data", required=True,
                        help="fgovd: folder of *_llava.jsonl files or one file; sharegpt4v: "
                             "share-captioner_coco_lcs_sam_1246k_1107.json; dci: "
                             "densely_captioned_images/annotations; boxcls: instances_val2017.json")
    parser.add_argument("--images", required=True, help="image root (fgovd/boxcls: the COCO root, e.g. "
                        "data/coco or data/coco/val2017 for boxcls; dci: the SA-1B photos folder)")
    parser.add_argument("--checkpoint", required=True, help="FG-CLIP 1 or 2 checkpoint (any converter family) "
                        "or training workdir")
    parser.add_argument("--family", default=None, help="checkpoint family (default: guessed)")
    add_encoder_arguments(parser)
    parser.add_argument("--subsets", nargs="*", default=None, help="fgovd: only these subsets (hard, ...)")
    parser.add_argument("--limit", type=int, default=formats.SHAREGPT4V_LIMIT,
                        help="sharegpt4v: the first N records (default 1000; 0 = all)")
    parser.add_argument("--templates", default=None,
                        help="boxcls: a file of prompt templates, one per line with {} for the class name "
                             "(default: 'a photo of a {}.')")
    parser.add_argument("--no-crowd", action="store_true", help="boxcls: leave out iscrowd boxes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the results here as JSON (and a .md table beside it)")


def run(args: argparse.Namespace) -> int:
    from vlalign_jax.eval.region_encoders import encoders_from_args

    encoders = encoders_from_args(args, batch_size=args.batch_size)
    if args.task == "fgovd":
        results = fgovd_accuracy(args.data, args.images, encoders.encode_regions, encoders.encode_texts,
                                 args.subsets, batch_size=args.batch_size)
    elif args.task in ("sharegpt4v", "dci"):
        items = (formats.read_sharegpt4v(args.data, args.images, args.limit or None) if args.task == "sharegpt4v"
                 else formats.read_dci(args.data, args.images))
        results = long_retrieval(items, encoders.encode_images, encoders.encode_texts,
                                 batch_size=args.batch_size, name=args.task)
    else:
        templates = DEFAULT_TEMPLATES
        if args.templates:
            templates = tuple(line.strip() for line in Path(args.templates).read_text().splitlines() if line.strip())
        data = formats.read_coco_instances(args.data, args.images, include_crowd=not args.no_crowd)
        results = box_classification(data, encoders.encode_regions, encoders.encode_texts, templates,
                                     batch_size=args.batch_size)
    results["checkpoint"] = str(args.checkpoint)
    report(results, markdown_table(results), args.out)
    return 0
