"""FG-CLIP caption data: FineHARD region records (stage 2) and long/short caption pairs (stage 1).

Format (research/fgclip.md sections 4.1-4.2; reference `360CVGroup/FG-CLIP`, `main@b1af1cd`
`fgclip2/train/train_fgclip2.py` class `LazySupervisedBboxDataset`, and `v1.0@0fcea59`
`fgclip/train/train_fgclip.py` of the same name):
- Files: FineHARD's `jsonfiles/*.json`, each one JSON array, also when named `*.jsonl` (both read
  with `json.load`, `train_fgclip2.py:176-192`). A path may be a file, a folder (its `*.json` then
  `*.jsonl`), a `.txt` list of files, or a list of these; JSON lines files are read too
  (`json_records.JsonRecordFiles`).
- Record: `f_path` (image path under `image_root`), `caption` (long caption), `short_caption`,
  `bbox_info` (stage 2 only), and `is_cn` on Chinese records (FG-CLIP 2 only).
- English short captions get the prefix "a photo of " (`:247-252`); Chinese ones do not, and their
  images live under `cn_image_root` (`:255-258`). v1 removed "grit-20m/data-12m/" from `f_path`
  (`train_fgclip.py:206`): pass it as `path_prefix_to_strip` to read v1-era files.
- `bbox_info` items: `bbox` = `[x1, y1, x2, y2, (score)]` normalised to [0, 1] by the image's width
  and height (the model multiplies by the feature map's size, `fgclip2.py:244-255`); `short_expr`,
  `long_expr`; `flag_short_neg` (1: the box has hard negatives); `short_expr_negs`, an object of 10
  negative short expressions taken in key order (`:357-361`; the loss reshapes them to 10 per box,
  `fgclip2.py:426-458`).

Output (field names as in `synthetic.py`; the released `caption` is our `long_caption`):
- both stages: `image` (PIL RGB), `caption` (short caption with its prefix), `long_caption`,
  `is_chinese`, `index`.
- stage 2 adds, for `max_boxes` slots (4 in the reference, `max_anns`, `:213`):
  `normalized_boxes` float32 [max_boxes, 4] xyxy in [0, 1] (x by width, y by height; zeros where
  masked), `box_mask` bool [max_boxes], `image_size_hw` int32 [2] (decoded image height, width; pixel
  boxes are `normalized_boxes * [w, h, w, h]`), `region_short` / `region_long` (max_boxes str),
  `region_negatives` (max_boxes lists of `num_region_negatives` str) and `region_negative_mask` bool
  [max_boxes, num_region_negatives]. Masked texts are "".

Decisions where the reference is loose (it validates little and crashes or silently drops losses):
- More than `max_boxes` boxes: the first `max_boxes` are kept, the rest ignored and not checked, as the
  reference does (`valid_num = min(len(bbox_info), max_anns)`, `:297-299`). Chinese records have no
  boxes even if `bbox_info` is present (`:300-301`).
- Boxes: the reference raises on `x1 > x2` or `y1 > y2` (`:319-320`) and does not clip. Here a
  coordinate within `box_clip_tolerance` (default 0.01, detector round-off) outside [0, 1] is clipped
  into it; one further out is a RecordError (pixel coordinates, most likely); a box with zero width or
  height after clipping is a RecordError (the reference would feed RoIAlign an empty box and get a
  NaN embedding); a non-finite or missing coordinate is a RecordError. Extra values after the 4th are
  ignored (`box[:4]`).
- `flag_short_neg` must be 0 or 1. A flagged box needs exactly `num_region_negatives` non-empty
  negatives (the reference's loss needs 10 per box; another count makes its `try` block drop every
  region loss of the batch, `fgclip2.py:485-533`), else RecordError. A box's negative mask row is all
  true or all false. The reference packs flagged boxes first (`hard_infos`); here they stay in their
  box slots, and `normalized_boxes[region_negative_mask.any(-1)]` gives the reference's order.
- `is_cn`: the reference tests whether the key exists (`:247`); here its value decides, so
  `"is_cn": false` reads as English.
- Not done here (left to transforms and the tokenizer): the per-step random choice between
  `short_expr` and `long_expr` (`:310`), lower-casing (`:288-289, 326, 361`; note the reference does
  not lower-case the positive `short_expr` of a hard-negative group, `:358-362`), resizing images
  smaller than 128 px (`:269-270`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.json_records import (JsonRecordFiles, PathLike, nonblank_text, read_rgb_image,
                                                   required_text)

ENGLISH_SHORT_CAPTION_PREFIX = "a photo of "  # train_fgclip2.py:249
FGCLIP_MAX_BOXES = 4  # max_anns, train_fgclip2.py:213
FGCLIP_NUM_REGION_NEGATIVES = 10  # short_expr_negs per box, fgclip.md section 3.7
BOX_CLIP_TOLERANCE = 0.01


class FgclipCaptionPairs:
    """Stage 1 (and the caption part of stage 2): `{"image", "caption", "long_caption", "is_chinese",
    "index"}` from FG-CLIP JSON records."""

    def __init__(self, paths: PathLike | Sequence[PathLike], image_root: PathLike,
                 cn_image_root: PathLike | None = None, short_caption_prefix: str = ENGLISH_SHORT_CAPTION_PREFIX,
                 path_prefix_to_strip: str = ""):
        self.records = JsonRecordFiles(paths)
        self.image_root = Path(image_root)
        self.cn_image_root = Path(cn_image_root) if cn_image_root is not None else self.image_root
        self.short_caption_prefix = short_caption_prefix
        self.path_prefix_to_strip = path_prefix_to_strip

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> str:
        return self.records.describe(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._read(index)[0]

    def _read(self, index: int) -> tuple[dict[str, Any], dict[str, Any], str]:
        """(example, raw record, where-string naming file, record and image) of record `index`."""
        record = self.records.record(index)
        where = self.describe(index)
        image_path = required_text(record, "f_path", where)
        where = f"{where} ({image_path})"
        long_caption = required_text(record, "caption", where)
        short_caption = required_text(record, "short_caption", where)
        is_chinese = bool(record.get("is_cn", False))
        if self.path_prefix_to_strip:
            image_path = image_path.replace(self.path_prefix_to_strip, "")
        root = self.cn_image_root if is_chinese else self.image_root
        image = read_rgb_image(root / image_path, where)
        caption = short_caption if is_chinese else self.short_caption_prefix + short_caption
        example = {"image": image, "caption": caption, "long_caption": long_caption, "is_chinese": is_chinese,
                   "index": index}
        return example, record, where


def _finite(value: int | float) -> bool:
    """False for NaN, infinity and integers past float range (10**400 in a JSON file)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def normalized_box(raw: Any, tolerance: float, where: str) -> tuple[float, float, float, float]:
    """xyxy in [0, 1] from a FineHARD `bbox`; see the module docstring for what is clipped and what fails."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 4:
        raise RecordError(f"{where}: 'bbox' must be a list of at least 4 numbers, got {raw!r}")
    coords = raw[:4]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in coords):
        raise RecordError(f"{where}: 'bbox' has a non-numeric or non-finite coordinate: {raw!r}")
    x1, y1, x2, y2 = (float(v) for v in coords)
    if x1 > x2 or y1 > y2:
        raise RecordError(f"{where}: 'bbox' {coords} has x1 > x2 or y1 > y2")
    if min(coords) < -tolerance or max(coords) > 1 + tolerance:
        raise RecordError(f"{where}: 'bbox' {coords} lies outside the image: coordinates must be normalised "
                          f"to [0, 1] (clipped within {tolerance}), not pixels")
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    if x2 <= x1 or y2 <= y1:
        raise RecordError(f"{where}: 'bbox' {coords} has zero area inside the image")
    return x1, y1, x2, y2


def region_negatives(box: dict[str, Any], count: int, where: str) -> list[str] | None:
    """The box's `count` hard-negative short expressions, or None when `flag_short_neg` is 0."""
    flag = box.get("flag_short_neg")
    if flag not in (0, 1) or isinstance(flag, float):
        raise RecordError(f"{where}: 'flag_short_neg' must be 0 or 1, got {flag!r}")
    if flag == 0:
        return None
    negatives = box.get("short_expr_negs")
    if not isinstance(negatives, dict):
        raise RecordError(f"{where}: 'flag_short_neg' is 1 but 'short_expr_negs' is {negatives!r}, not an object")
    if len(negatives) != count:
        raise RecordError(f"{where}: {len(negatives)} 'short_expr_negs', expected exactly {count}")
    return [nonblank_text(text, f"'short_expr_negs'[{key!r}]", where) for key, text in negatives.items()]


class FineHard(FgclipCaptionPairs):
    """Stage 2: the caption pair plus up to `max_boxes` region boxes with texts and hard negatives."""

    def __init__(self, paths: PathLike | Sequence[PathLike], image_root: PathLike,
                 cn_image_root: PathLike | None = None, max_boxes: int = FGCLIP_MAX_BOXES,
                 num_region_negatives: int = FGCLIP_NUM_REGION_NEGATIVES,
                 box_clip_tolerance: float = BOX_CLIP_TOLERANCE,
                 short_caption_prefix: str = ENGLISH_SHORT_CAPTION_PREFIX, path_prefix_to_strip: str = ""):
        if max_boxes < 1 or num_region_negatives < 1 or box_clip_tolerance < 0:
            raise ValueError(f"need max_boxes >= 1, num_region_negatives >= 1, box_clip_tolerance >= 0; got "
                             f"{max_boxes}, {num_region_negatives}, {box_clip_tolerance}")
        super().__init__(paths, image_root, cn_image_root, short_caption_prefix, path_prefix_to_strip)
        self.max_boxes = max_boxes
        self.num_region_negatives = num_region_negatives
        self.box_clip_tolerance = box_clip_tolerance

    def __getitem__(self, index: int) -> dict[str, Any]:
        example, record, where = self._read(index)
        boxes = np.zeros((self.max_boxes, 4), np.float32)
        box_mask = np.zeros(self.max_boxes, bool)
        short_texts = [""] * self.max_boxes
        long_texts = [""] * self.max_boxes
        negatives = [[""] * self.num_region_negatives for _ in range(self.max_boxes)]
        negative_mask = np.zeros((self.max_boxes, self.num_region_negatives), bool)
        if not example["is_chinese"]:
            if not isinstance(record.get("bbox_info"), list):
                raise RecordError(f"{where}: 'bbox_info' must be a list of boxes, got {record.get('bbox_info')!r}")
            for slot, box in enumerate(record["bbox_info"][: self.max_boxes]):
                box_where = f"{where} box {slot}"
                if not isinstance(box, dict):
                    raise RecordError(f"{box_where}: expected a JSON object, got {type(box).__name__}")
                boxes[slot] = normalized_box(box.get("bbox"), self.box_clip_tolerance, box_where)
                box_mask[slot] = True
                short_texts[slot] = required_text(box, "short_expr", box_where)
                long_texts[slot] = required_text(box, "long_expr", box_where)
                box_negatives = region_negatives(box, self.num_region_negatives, box_where)
                if box_negatives is not None:
                    negatives[slot] = box_negatives
                    negative_mask[slot] = True
        width, height = example["image"].size
        example.update(normalized_boxes=boxes, box_mask=box_mask, image_size_hw=np.array([height, width], np.int32),
                       region_short=short_texts, region_long=long_texts, region_negatives=negatives,
                       region_negative_mask=negative_mask)
        return example
