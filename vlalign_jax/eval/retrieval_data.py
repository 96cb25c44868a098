"""Image-text retrieval test sets with one or more captions per image, read from their public files.

Every reader returns a `RetrievalDataset` (image paths, captions, and the image of each caption) and
checks that every image file exists, so a bad set fails before anything is encoded. Errors name the
file and the entry.

- Karpathy splits (Karpathy & Fei-Fei, CVPR 2015; `caption_datasets.zip`): `dataset_coco.json`,
  `dataset_flickr30k.json` are `{"images": [{"filepath" (COCO only: "train2014" | "val2014"),
  "filename", "split": "train" | "val" | "test" | "restval", "sentences": [{"raw", "tokens", ...}],
  "imgid", "sentids", ...}], "dataset": "coco" | "flickr30k"}`. Images are `root/filepath/filename`
  (COCO) or `root/filename` (Flickr), captions are `raw`, all of them by default as in CLIP_benchmark's
  and BLIP's Karpathy test files (COCO test: 5000 images, 25010 captions, a few images have 6 or 7;
  Flickr30k test: 1000 images, 5000 captions).
- COCO captions (`captions_val2017.json`, `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}`): FG-CLIP's COCO-5k (research/fgclip.md 6.1, `coco_retrieval.py` on
  torchvision's `CocoCaptions`): images by ascending id, captions in file order, the first 5 of each.
- Long captions (FG-CLIP, research/fgclip.md 6.1): ShareGPT4V-1k and DCI are read by
  `fine_grained_formats.read_sharegpt4v` / `read_dci` (one long caption per image); Urban-1k
  (Long-CLIP's set, `Urban1k/caption/NAME.txt` holding the caption on its first line and
  `Urban1k/image/NAME.jpg`, as Long-CLIP's `eval/retrieval/Urban1k.py` reads them), in name order.
  Paired items that name the same image path become one image with several captions.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval import fine_grained_formats
from vlalign_jax.eval.benchmark_files import read_json, sorted_files
from vlalign_jax.eval.fine_grained_formats import LongCaptionItem

__all__ = ["DATASETS", "KARPATHY_SPLITS", "RetrievalDataset", "from_pairs", "load_dataset", "read_coco_captions",
           "read_karpathy", "read_urban1k"]

KARPATHY_SPLITS = ("train", "val", "test", "restval")
COCO_CAPTIONS_PER_IMAGE = 5  # FG-CLIP's coco_retrieval.py keeps captions[0:5]


@dataclasses.dataclass(frozen=True)
class RetrievalDataset:
    """Images and captions: `texts[j]` describes `images[text_to_image[j]]`; every image has a caption."""

    name: str
    images: tuple[str, ...]  # paths
    texts: tuple[str, ...]
    text_to_image: np.ndarray  # [num_texts] int64, indices into images

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError(f"{self.name}: no images")
        index = np.asarray(self.text_to_image)
        if index.shape != (len(self.texts),) or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"{self.name}: text_to_image must be {len(self.texts)} integers, got {index.dtype} "
                             f"of shape {index.shape}")
        if len(index) and (index.min() < 0 or index.max() >= len(self.images)):
            raise ValueError(f"{self.name}: text_to_image holds an index outside [0, {len(self.images)})")
        uncaptioned = np.flatnonzero(np.bincount(index, minlength=len(self.images)) == 0)
        if len(uncaptioned):
            raise ValueError(f"{self.name}: image {self.images[uncaptioned[0]]} has no caption "
                             f"({len(uncaptioned)} images without one)")

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_texts(self) -> int:
        return len(self.texts)


def _from_groups(name: str, groups: Sequence[tuple[str, Sequence[str]]]) -> RetrievalDataset:
    """A dataset from (image path, its captions) in order."""
    texts = [caption for _, captions in groups for caption in captions]
    owners = np.repeat(np.arange(len(groups), dtype=np.int64), [len(c) for _, c in groups])
    return RetrievalDataset(name, tuple(path for path, _ in groups), tuple(texts), owners)


def from_pairs(name: str, items: Sequence[LongCaptionItem]) -> RetrievalDataset:
    """A dataset from paired (image, caption) items; items naming the same path share one image."""
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(item.image, []).append(item.caption)
    return _from_groups(name, list(groups.items()))


# ----------------------------------------------------------------------------- checks

def _field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key], which must be of `kind` (a string: non-empty; never a bool)."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise RecordError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RecordError(f"{where}: field {key!r} must be a non-empty {kinds}, got {value!r:.200}")
    return value


def _existing(path: str, where: str) -> str:
    if not os.path.isfile(path):
        raise RecordError(f"{where}: image file {path} not found")
    return path


def _limit(captions: list[str], max_captions: int | None) -> list[str]:
    if max_captions is not None and max_captions < 1:
        raise ValueError(f"max_captions_per_image must be at least 1 (or None for all), got {max_captions}")
    return captions if max_captions is None else captions[:max_captions]


# ----------------------------------------------------------------------------- readers

def read_karpathy(path: str, image_root: str, split: str | Sequence[str] = "test",
                  max_captions_per_image: int | None = None) -> RetrievalDataset:
    """The images of `split` (one name or several, e.g. ("train", "restval")) of a Karpathy-split JSON
    with their `raw` captions (the first `max_captions_per_image`, None: all), in file order."""
    splits = (split,) if isinstance(split, str) else tuple(split)
    unknown = sorted(set(splits) - set(KARPATHY_SPLITS))
    if unknown or not splits:
        raise ValueError(f"unknown Karpathy split(s) {unknown or splits}; known: {KARPATHY_SPLITS}")
    data = read_json(path)
    images = _field(data, "images", list, path)
    dataset = data.get("dataset")
    groups = []
    for index, record in enumerate(images):
        where = f"{path} images[{index}]"
        if _field(record, "split", str, where) not in splits:
            continue
        filename = _field(record, "filename", str, where)
        where = f"{where} ({filename})"
        if "filepath" in record or dataset == "coco":  # COCO: root/train2014|val2014/filename
            image = os.path.join(image_root, _field(record, "filepath", str, where), filename)
        else:
            image = os.path.join(image_root, filename)
        sentences = _field(record, "sentences", list, where)
        if not sentences:
            raise RecordError(f"{where}: no captions (field 'sentences' is empty)")
        captions = [_field(s, "raw", str, f"{where} sentences[{n}]") for n, s in enumerate(sentences)]
        groups.append((_existing(image, where), _limit(captions, max_captions_per_image)))
    if not groups:
        found = sorted({r.get("split") for r in images if isinstance(r, dict)}, key=str)
        raise RecordError(f"{path}: no images in split {'+'.join(splits)}; the file has splits {found}")
    return _from_groups(str(dataset or os.path.basename(path)), groups)


def read_coco_captions(path: str, image_root: str,
                       max_captions_per_image: int | None = COCO_CAPTIONS_PER_IMAGE) -> RetrievalDataset:
    """Every image of a COCO captions JSON by ascending id (torchvision `CocoCaptions` order) with its
    captions in file order, the first `max_captions_per_image` (None: all); images `image_root/file_name`."""
    data = read_json(path)
    files: dict[Any, tuple[str, str]] = {}
    for index, record in enumerate(_field(data, "images", list, path)):
        where = f"{path} images[{index}]"
        image_id = _field(record, "id", (int, str), where)
        if image_id in files:
            raise RecordError(f"{where}: duplicate image id {image_id!r}")
        files[image_id] = (_field(record, "file_name", str, where), where)
    captions: dict[Any, list[str]] = {}
    for index, record in enumerate(_field(data, "annotations", list, path)):
        where = f"{path} annotations[{index}]"
        image_id = _field(record, "image_id", (int, str), where)
        if image_id not in files:
            raise RecordError(f"{where}: image_id {image_id!r} is not in 'images'")
        captions.setdefault(image_id, []).append(_field(record, "caption", str, where))
    groups = []
    for image_id in sorted(files, key=lambda i: (isinstance(i, str), i)):
        file_name, where = files[image_id]
        if image_id not in captions:
            raise RecordError(f"{where} ({file_name}): no captions in 'annotations'")
        groups.append((_existing(os.path.join(image_root, file_name), where),
                       _limit(captions[image_id], max_captions_per_image)))
    if not groups:
        raise RecordError(f"{path}: no images")
    return _from_groups("coco_captions", groups)


def read_urban1k(caption_dir: str, image_dir: str) -> RetrievalDataset:
    """Urban-1k: one image per `caption_dir/NAME.txt` (sorted by name), caption its first line, image
    `image_dir/NAME.jpg`."""
    names = sorted_files(caption_dir, ".txt", "Urban-1k caption")
    groups = []
    for name in names:
        path = os.path.join(caption_dir, name)
        with open(path, encoding="utf-8") as f:
            caption = f.readline().strip()
        if not caption:
            raise RecordError(f"{path}: the first line (the caption) is empty")
        groups.append((_existing(os.path.join(image_dir, name[:-len(".txt")] + ".jpg"), path), [caption]))
    return _from_groups("urban1k", groups)


def _karpathy(name: str) -> Callable[..., RetrievalDataset]:
    """A reader of Karpathy files whose 'dataset' field must be `name`."""
    def read(annotations: str, image_root: str, **options: Any) -> RetrievalDataset:
        dataset = read_karpathy(annotations, image_root, **options)
        if dataset.name != name:
            raise RecordError(f"{annotations}: field 'dataset' is {dataset.name!r}, expected {name!r}")
        return dataset
    return read


def _sharegpt4v(annotations: str, image_root: str, limit: int | None = fine_grained_formats.SHAREGPT4V_LIMIT
                ) -> RetrievalDataset:
    return from_pairs("sharegpt4v", fine_grained_formats.read_sharegpt4v(annotations, image_root, limit or None))


def _dci(annotations: str, image_root: str) -> RetrievalDataset:
    return from_pairs("dci", fine_grained_formats.read_dci(annotations, image_root))


# name -> (reader(annotations, image_root, **options), what `annotations` is)
DATASETS = {
    "coco": (_karpathy("coco"), "dataset_coco.json (Karpathy split); images: the COCO root holding val2014/"),
    "flickr30k": (_karpathy("flickr30k"), "dataset_flickr30k.json (Karpathy split); images: flickr30k-images/"),
    "coco_val2017": (read_coco_captions, "annotations/captions_val2017.json; images: val2017/"),
    "sharegpt4v": (_sharegpt4v, "share-captioner_coco_lcs_sam_1246k_1107.json (first 1000 records)"),
    "dci": (_dci, "densely_captioned_images/annotations folder; images: the SA-1B photos folder"),
    "urban1k": (read_urban1k, "Urban1k/caption folder; images: Urban1k/image"),
}


def load_dataset(name: str, annotations: str, image_root: str, **options: Any) -> RetrievalDataset:
    """The retrieval set `name` (a key of DATASETS) from its annotation file/folder and image root.

    `options` go to the reader: Karpathy `split`, `max_captions_per_image`; coco_val2017
    `max_captions_per_image`; sharegpt4v `limit` (0 or None: all records)."""
    if name not in DATASETS:
        raise ValueError(f"unknown retrieval dataset {name!r}; known: {sorted(DATASETS)}")
    dataset = DATASETS[name][0](annotations, image_root, **options)
    return dataclasses.replace(dataset, name=name)
