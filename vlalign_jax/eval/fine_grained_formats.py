"""Readers for the public files of the fine-grained evaluations FG-CLIP reports (research/fgclip.md 6.1).

Scoring lives in `vlalign_jax.eval.fine_grained`. Every reader checks each record and that its image
exists, and raises `RecordError` naming the file and the record of anything malformed.

- FG-OVD (Bianchi et al., CVPR 2024) as FG-CLIP evaluates it (360CVGroup/FG-CLIP v1.0
  `fgclip/eval/fgovd_eval.py`, main `fgclip2/eval/fgovd_bbox_roi.py`): JSON lines, one box per line,
  `{"img_path": "val2017/....jpg", "bbox": [x, y, w, h], "pos_expression": [positive],
  "neg_expression": [10 negatives]}`; `img_path` is relative to the COCO root, `bbox` COCO xywh in
  pixels, and `pos_expression` a one-element list (the reference concatenates it with the negatives
  and takes index 0 as the positive). The files are named `{1,2,3}_attributes_llava.jsonl` in the
  scripts and `{h,m,e}_attributes_llava.jsonl` in the README, plus `shuffle_negatives_llava.jsonl`;
  as in FG-OVD's `benchmarks/README.md`, 1/h = Hard, 2/m = Medium, 3/e = Easy, shuffle_negatives =
  Trivial. Any other `*.jsonl` in the same form (e.g. FG-OVD's color/material/pattern/transparency
  sets converted alike) is read as a subset named after its file.
- ShareGPT4V-1k (Long-CLIP's long-caption retrieval set): the first 1000 records of ShareGPT4V's
  `share-captioner_coco_lcs_sam_1246k_1107.json`, a JSON list of `{"id", "image": "sam/images/...jpg",
  "conversations": [{"from": "human", ...}, {"from": "gpt", "value": caption}]}`; the caption is
  `conversations[1].value`. The reference looks the image up by its base name in one folder
  (`share1k_retrieval.py`); here `image` is tried relative to the image root first, then its base name.
- DCI (Urbanek et al., 2023; facebookresearch/DCI): one JSON file per image in
  `densely_captioned_images/annotations/`, `{"image": "sa_....jpg", "short_caption", "extra_caption",
  "mask_data", ...}`; the long caption is `extra_caption` (FG-CLIP `dci_retrieval.py`), images are
  SA-1B's `sa_000138.tar`. Files are read in sorted name order (the reference lists the folder).
- Box classification: a COCO instances JSON (`instances_val2017.json`): `images` [{id, file_name}],
  `annotations` [{id, image_id, category_id, bbox: [x, y, w, h] pixels, iscrowd}], `categories`
  [{id, name}]. Classes are the categories in file order (torchvision's `CocoDetection`, which the
  reference `coco_box_cls.py` uses, keeps that order) and every annotation is a test box, crowd
  boxes included as in the reference, unless `include_crowd=False`. Any data set written in this
  form works, e.g. LVIS's val JSON (same fields).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval.benchmark_files import read_json, sorted_files

FGOVD_SUBSETS = ("hard", "medium", "easy", "trivial")
# File-name prefixes of each difficulty (FG-CLIP's scripts use 1/2/3, its README h/m/e).
FGOVD_PREFIXES = {"1_attributes": "hard", "h_attributes": "hard", "2_attributes": "medium",
                  "m_attributes": "medium", "3_attributes": "easy", "e_attributes": "easy",
                  "shuffle_negatives": "trivial"}
SHAREGPT4V_LIMIT = 1000  # Long-CLIP / FG-CLIP evaluate the first 1000 records


class FgovdItem(NamedTuple):
    """One FG-OVD box: `positive` must score above every caption in `negatives`."""

    image: str  # path
    box_xywh: tuple[float, float, float, float]  # COCO xywh, pixels
    positive: str
    negatives: list[str]
    subset: str


class LongCaptionItem(NamedTuple):
    """One image and its long caption; pair i is the only correct match for row i."""

    image: str
    caption: str


class BoxImage(NamedTuple):
    """The test boxes of one image: COCO xywh pixels [n, 4] and class indices [n]."""

    image: str
    boxes_xywh: np.ndarray  # [n, 4] float64
    labels: np.ndarray  # [n] int64, indices into BoxClassData.class_names
    annotation_ids: list[Any]


class BoxClassData(NamedTuple):
    class_names: list[str]
    category_ids: list[Any]
    images: list[BoxImage]

    @property
    def num_boxes(self) -> int:
        return sum(len(image.labels) for image in self.images)


# ----------------------------------------------------------------------------- shared helpers

def _object(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def _texts(value: Any, what: str, where: str) -> list[str]:
    if not (isinstance(value, list) and value and all(isinstance(t, str) and t.strip() for t in value)):
        raise RecordError(f"{where}: {what} must be a non-empty list of non-empty strings, got {value!r}")
    return list(value)


def _xywh(value: Any, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value)):
        raise RecordError(f"{where}: field 'bbox' must be four finite numbers [x, y, w, h], got {value!r}")
    x, y, w, h = (float(v) for v in value)
    if w < 0 or h < 0:
        raise RecordError(f"{where}: field 'bbox' has a negative width or height: {value!r}")
    return x, y, w, h


def _image(image_root: str, relative: str, where: str, base_name_fallback: bool = False) -> str:
    """The image's path under `image_root` (a leading '/' is taken as relative to the root, as the
    reference's string concatenation does); with `base_name_fallback`, also root/basename."""
    candidates = [os.path.join(image_root, relative.lstrip("/"))]
    if base_name_fallback:
        candidates.append(os.path.join(image_root, os.path.basename(relative)))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise RecordError(f"{where}: image {relative!r} not found under {image_root} "
                      f"(tried {', '.join(dict.fromkeys(candidates))})")


# ----------------------------------------------------------------------------- FG-OVD

def fgovd_subset_name(path: str) -> str:
    """hard/medium/easy/trivial from an FG-OVD file name, else the name without `_llava.jsonl`."""
    name = os.path.basename(path)
    for prefix, subset in FGOVD_PREFIXES.items():
        if name.startswith(prefix):
            return subset
    return name.removesuffix(".jsonl").removesuffix("_llava")


def read_fgovd(path: str, image_root: str, subset: str | None = None) -> list[FgovdItem]:
    """The boxes of one FG-OVD JSON-lines file; images are `image_root/img_path`."""
    subset = subset or fgovd_subset_name(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = _object(json.loads(line), where)
            except ValueError as e:
                raise RecordError(f"{where}: not valid JSON: {e}") from e
            positives = record.get("pos_expression")
            if isinstance(positives, list) and len(positives) != 1:
                raise RecordError(f"{where}: field 'pos_expression' must hold exactly one caption, "
                                  f"got {len(positives)}")
            positive = _texts(positives, "field 'pos_expression'", where)[0] \
                if isinstance(positives, list) else _text(positives, "field 'pos_expression'", where)
            negatives = _texts(record.get("neg_expression"), "field 'neg_expression'", where)
            box = _xywh(record.get("bbox"), where)
            image = _image(image_root, _text(record.get("img_path"), "field 'img_path'", where), where)
            items.append(FgovdItem(image, box, positive, negatives, subset))
    if not items:
        raise RecordError(f"{path}: no records")
    return items


def find_fgovd_files(source: str | Sequence[str], subsets: Sequence[str] | None = None) -> dict[str, str]:
    """{subset: file} from a folder of FG-OVD `*.jsonl` files or explicit file paths, in the order
    hard, medium, easy, trivial, then other subsets by name; `subsets` keeps only those."""
    if isinstance(source, str) and os.path.isdir(source):
        paths = [os.path.join(source, n) for n in sorted(os.listdir(source)) if n.endswith(".jsonl")]
        if not paths:
            raise FileNotFoundError(f"no FG-OVD *.jsonl files in {source}")
    else:
        paths = [source] if isinstance(source, str) else list(source)
    files: dict[str, str] = {}
    for path in paths:
        subset = fgovd_subset_name(path)
        if subset in files:
            raise ValueError(f"two FG-OVD files for subset {subset!r}: {files[subset]} and {path}")
        files[subset] = path
    if subsets is not None:
        missing = sorted(set(subsets) - set(files))
        if missing:
            raise FileNotFoundError(f"no FG-OVD file for subsets {missing} in {source}; found {sorted(files)}")
        files = {s: p for s, p in files.items() if s in subsets}
    rank = {s: i for i, s in enumerate(FGOVD_SUBSETS)}
    return dict(sorted(files.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


# ----------------------------------------------------------------------------- long captions

def read_sharegpt4v(path: str, image_root: str, limit: int | None = SHAREGPT4V_LIMIT) -> list[LongCaptionItem]:
    """The first `limit` records (None: all) of a ShareGPT4V-style JSON list: caption
    `conversations[1].value`, image `image` under `image_root` (or its base name there)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    items = []
    for index, record in enumerate(data[:limit] if limit is not None else data):
        where = f"{path} record {index}"
        record = _object(record, where)
        turns = record.get("conversations")
        if not (isinstance(turns, list) and len(turns) >= 2 and isinstance(turns[1], dict)):
            raise RecordError(f"{where}: field 'conversations' must be a list of at least two turns "
                              f"(the caption is conversations[1].value), got {turns!r:.200}")
        caption = _text(turns[1].get("value"), "conversations[1].value", where)
        image = _image(image_root, _text(record.get("image"), "field 'image'", where), where,
                       base_name_fallback=True)
        items.append(LongCaptionItem(image, caption))
    if not items:
        raise RecordError(f"{path}: no records")
    return items


def read_dci(annotations_dir: str, image_root: str) -> list[LongCaptionItem]:
    """One item per DCI annotation file (`*.json`, sorted by name): `extra_caption`, image
    `image_root/image`."""
    names = sorted_files(annotations_dir, ".json", "DCI annotation")
    items = []
    for name in names:
        path = os.path.join(annotations_dir, name)
        record = _object(read_json(path), path)
        caption = _text(record.get("extra_caption"), "field 'extra_caption'", path)
        image = _image(image_root, _text(record.get("image"), "field 'image'", path), path)
        items.append(LongCaptionItem(image, caption))
    return items


# ----------------------------------------------------------------------------- box classification

def _entries(data: dict, key: str, path: str) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise RecordError(f"{path}: field {key!r} must be a list, got {type(value).__name__}")
    return value


def _id(record: dict, key: str, where: str) -> Any:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RecordError(f"{where}: field {key!r} must be an integer or string id, got {value!r}")
    return value


def read_coco_instances(path: str, image_root: str, include_crowd: bool = True) -> BoxClassData:
    """Classes (category names in file order) and the test boxes of each annotated image."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a COCO instances object, got {type(data).__name__}")
    category_ids, class_names = [], []
    for index, record in enumerate(_entries(data, "categories", path)):
        where = f"{path} categories[{index}]"
        record = _object(record, where)
        category_id = _id(record, "id", where)
        if category_id in category_ids:
            raise RecordError(f"{where}: duplicate category id {category_id!r}")
        category_ids.append(category_id)
        class_names.append(_text(record.get("name"), "field 'name'", where))
    if not category_ids:
        raise RecordError(f"{path}: no categories")
    class_index = {c: i for i, c in enumerate(category_ids)}
    file_names: dict[Any, tuple[str, str]] = {}
    for index, record in enumerate(_entries(data, "images", path)):
        where = f"{path} images[{index}]"
        record = _object(record, where)
        image_id = _id(record, "id", where)
        if image_id in file_names:
            raise RecordError(f"{where}: duplicate image id {image_id!r}")
        file_names[image_id] = (_text(record.get("file_name"), "field 'file_name'", where), where)
    boxes: dict[Any, list[tuple[tuple[float, ...], int, Any]]] = {}
    for index, record in enumerate(_entries(data, "annotations", path)):
        where = f"{path} annotations[{index}]"
        record = _object(record, where)
        image_id, category_id = _id(record, "image_id", where), _id(record, "category_id", where)
        if image_id not in file_names:
            raise RecordError(f"{where}: image_id {image_id!r} is not in 'images'")
        if category_id not in class_index:
            raise RecordError(f"{where}: category_id {category_id!r} is not in 'categories'")
        if not include_crowd and record.get("iscrowd", 0):
            continue
        boxes.setdefault(image_id, []).append((_xywh(record.get("bbox"), where), class_index[category_id],
                                               record.get("id", index)))
    images = []
    for image_id, entries in boxes.items():  # images in the order of their first annotation
        file_name, where = file_names[image_id]
        images.append(BoxImage(_image(image_root, file_name, where),
                               np.array([e[0] for e in entries], np.float64).reshape(-1, 4),
                               np.array([e[1] for e in entries], np.int64), [e[2] for e in entries]))
    if not images:
        raise RecordError(f"{path}: no annotations to classify")
    return BoxClassData(class_names, category_ids, images)
