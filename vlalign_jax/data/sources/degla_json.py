"""DeGLA hard-negative captions over COCO train2014: `{"image_id", "original", "enhanced"}` records.

Format (research/degla.md section 2.1; reference `xiaoxing2001/DeGLA@1c5e960`
`src/training/data.py` L405-428, class `DeGLA_dataset`):
- The released file (`src/data/DeGLA.json`) is one JSON array read with `json.load` (L409-410). JSON
  lines (one object a line) are read too: the reference's `load_file` (L401-404) has that reader
  commented out, and a converted copy may use it. A file whose first non-blank character is `[` is an
  array, anything else is JSON lines. The released file itself could not be inspected (degla.md 2.1).
- `image_id` is the COCO integer id. The image is `<root>/train2014/COCO_train2014_<id, 12 digits>.jpg`
  (L416, `COCO_DATASET_ROOT` at L36 is the root). Here `image_root` is that COCO root and
  `image_path_template` the part below it, so a flat folder of images is one template away.
- `original` is the caption; `enhanced` lists the LLM-written negatives, of which the reference takes
  indices 0-3 (L419-426): K=4 fixed. Here `num_negatives` (default 4) are taken, the first ones, and a
  record with fewer, or with an empty or non-string one among them, is a `RecordError`. The
  reference `str()`s every text (L417-426); here a non-string text is an error, not silently converted.

Output per record: `image` (PIL RGB), `caption` (str), `negative_captions` (list of `num_negatives`
str, the name the synthetic source gives DeGLA negatives), `index`.

Files are read by `json_records.JsonRecordFiles`. A malformed JSON line is a `RecordError` for that record alone;
a malformed JSON array cannot be split into records, so it fails when the source is built, naming the
file, line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.json_records import (JsonRecordFiles, PathLike, nonblank_text, read_rgb_image,
                                                   required_text)

COCO_TRAIN2014_TEMPLATE = "train2014/COCO_train2014_{image_id:012d}.jpg"
DEGLA_NUM_NEGATIVES = 4  # enhanced[0..3], DeGLA data.py L419-426


def coco_image_id(record: dict[str, Any], where: str) -> int:
    """The record's non-negative COCO id; an integer or a string of digits."""
    image_id = record.get("image_id")
    if isinstance(image_id, str) and image_id.isascii() and image_id.isdigit():  # not "²" or "٣"
        return int(image_id)
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
        raise RecordError(f"{where}: 'image_id' must be a non-negative integer, got {image_id!r}")
    return image_id


class DeglaJson:
    """Random-access source of `{"image", "caption", "negative_captions", "index"}` from DeGLA JSON."""

    def __init__(self, path: PathLike | Sequence[PathLike], image_root: PathLike,
                 num_negatives: int = DEGLA_NUM_NEGATIVES, image_path_template: str = COCO_TRAIN2014_TEMPLATE):
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
        self.records = JsonRecordFiles(path)
        self.image_root = Path(image_root)
        self.num_negatives = num_negatives
        self.image_path_template = image_path_template

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> str:
        return self.records.describe(index)

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.image_path_template.format(image_id=image_id)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records.record(index)
        where = self.describe(index)
        image_id = coco_image_id(record, where)
        where = f"{where} (image_id {image_id})"
        caption = required_text(record, "original", where)
        enhanced = record.get("enhanced")
        if not isinstance(enhanced, list):
            raise RecordError(f"{where}: 'enhanced' must be a list of negative captions, got {enhanced!r}")
        if len(enhanced) < self.num_negatives:
            raise RecordError(f"{where}: {len(enhanced)} negatives in 'enhanced', need {self.num_negatives}")
        negatives = [nonblank_text(text, f"negative 'enhanced'[{k}]", where)
                     for k, text in enumerate(enhanced[: self.num_negatives])]
        image = read_rgb_image(self.image_path(image_id), where)
        return {"image": image, "caption": caption, "negative_captions": negatives, "index": index}
