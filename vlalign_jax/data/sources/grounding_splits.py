"""Referring-expression split files of CLIP-VG and TransVG, and a JSON-lines form that needs no torch.

Reference: CLIP-VG `datasets/data_loader.py::TransVGDataset` (identical in TransVG). A split is
`{split_root}/{dataset}/{dataset}_{split}.pth`, a pickled Python list with one entry per
(image, box, expression). The layout depends on the dataset:

- RefCOCO `unc` (alias refcoco), RefCOCO+ `unc+` (refcoco+), RefCOCOg `gref` (refcocog_google) and
  `gref_umd` (refcocog_umd): `(image_file, aux, [x, y, w, h], expression, attributes)`, box xywh.
- ReferIt `referit` (referitgame): `(image_file, aux, [x1, y1, x2, y2], expression, attributes)`.
- Flickr30k Entities `flickr` (flickr30k): `(image_file, [x1, y1, x2, y2], expression)`, a 3-tuple.

e.g. `('COCO_train2014_000000000839.jpg', '482127.pth', [303.58, 69.03, 293.29, 425.79],
'guy flopping around on the right', [('r1', ['guy']), ...])`. The unsupervised pseudo-label files
(`{dataset}_train_pseudo.pth`, and the reliability buckets `..._train_pseudo_refine_0_5.pth` written by
`engine.py::evaluate_for_filtering`) use the same layout per dataset, as lists, with aux and
attributes set to 'useless placeholder'. Boxes are in pixels, continuous coordinates: `x2 = x + w` is
the right edge. Images live under one folder per dataset (`image_dir` gives the reference layout:
COCO `other/images/mscoco/images/train2014`, ReferIt `referit/images`, Flickr30k
`Flickr30k/flickr30k-images`) and are decoded with PIL `.convert("RGB")`. As in the reference, the
expression is lowercased after an optional prompt template (`'{pseudo_query}'` is replaced).

Released-code behaviour: the loader does `np.array(bbox, dtype=int)` before `x2 = x + w`, so every
coordinate and the width/height are truncated to integers (x2 = int(x) + int(w)), and that truncated
box is the ground truth for training and Acc@0.5. By default we keep the annotated (float) box;
`released_code=True` truncates exactly as the released loader does.

JSON lines (`.jsonl`), one record per line, UTF-8, written by `convert_splits`:
- `image_file` (str): the image's path relative to the dataset's image folder.
- `box` ([x1, y1, x2, y2] floats): the box in pixels, converted from the split's own format.
- `expression` (str): as stored in the split file (not lowercased).
- `dataset` (str): the reference's dataset name (unc, unc+, gref, gref_umd, referit, flickr).
- optional `box_original` (4 floats) and `box_format` ("xywh" | "xyxy"): the box as the split stores
  it, so `released_code=True` truncates exactly as the reference does.
- optional `aux`, `attributes` (5-tuple datasets): the entry's other fields, as JSON.
Hand-written files need only the first four fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import pickle
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from vlalign_jax.data.atomic_files import write_jsonl_atomic
from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.json_records import json_error, read_rgb_image
from vlalign_jax.messages import first_line


@dataclasses.dataclass(frozen=True)
class SplitLayout:
    """One dataset's split-file layout in the reference code."""

    name: str  # the reference's directory and file prefix
    title: str
    tuple_length: Literal[3, 5]  # 5: (image_file, aux, box, expression, attributes); 3: (image_file, box, expression)
    box_format: Literal["xywh", "xyxy"]
    image_dir: str  # relative to the reference's --data_root
    splits: tuple[str, ...]


_COCO_IMAGES = "other/images/mscoco/images/train2014"
LAYOUTS: dict[str, SplitLayout] = {layout.name: layout for layout in (
    SplitLayout("unc", "RefCOCO (UNC splits)", 5, "xywh", _COCO_IMAGES,
                ("train", "val", "trainval", "testA", "testB", "train_pseudo")),
    SplitLayout("unc+", "RefCOCO+ (UNC splits)", 5, "xywh", _COCO_IMAGES,
                ("train", "val", "trainval", "testA", "testB", "train_pseudo")),
    SplitLayout("gref", "RefCOCOg (Google splits)", 5, "xywh", _COCO_IMAGES, ("train", "val", "train_pseudo")),
    SplitLayout("gref_umd", "RefCOCOg (UMD splits)", 5, "xywh", _COCO_IMAGES, ("train", "val", "test", "train_pseudo")),
    SplitLayout("referit", "ReferItGame", 5, "xyxy", "referit/images",
                ("train", "val", "trainval", "test", "train_pseudo")),
    SplitLayout("flickr", "Flickr30k Entities", 3, "xyxy", "Flickr30k/flickr30k-images",
                ("train", "val", "test", "train_pseudo")),
)}
ALIASES = {"refcoco": "unc", "refcoco+": "unc+", "refcocog_google": "gref", "refcocog-google": "gref",
           "refcocog_umd": "gref_umd", "refcocog-umd": "gref_umd", "referitgame": "referit", "flickr30k": "flickr"}
JSONL_SUFFIX = ".jsonl"


def layout(dataset: str) -> SplitLayout:
    """The layout for a reference dataset name or one of its aliases."""
    name = ALIASES.get(dataset.lower(), dataset)
    if name not in LAYOUTS:
        raise ValueError(f"unknown grounding dataset {dataset!r}; expected one of {sorted(LAYOUTS)} "
                         f"or an alias {sorted(ALIASES)}")
    return LAYOUTS[name]


def split_path(split_root: str | Path, dataset: str, split: str) -> Path:
    """`{split_root}/{dataset}/{dataset}_{split}.pth`, as the reference finds it."""
    spec = layout(dataset)
    if split not in spec.splits:
        raise ValueError(f"dataset {spec.name!r} has no split {split!r}; it has {list(spec.splits)}")
    return Path(split_root) / spec.name / f"{spec.name}_{split}.pth"


def image_dir(data_root: str | Path, dataset: str) -> Path:
    """The folder holding a dataset's images under the reference's `--data_root`."""
    return Path(data_root) / layout(dataset).image_dir


def load_split_entries(path: str | Path, allow_pickle: bool = False) -> list[Any]:
    """The raw entry list of a `.pth` split file (needs torch, imported here only)."""
    path = Path(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading the split file {path} needs torch: install the torch extra "
            f"(pip install 'vlalign-jax[torch]'), or convert it once where torch is installed with "
            f"`vlalign data convert-splits {path} --dataset NAME --out DIR` and read the .jsonl") from e
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        entries = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        hint = ("" if allow_pickle else "; if it holds numpy arrays or other objects and you trust it, "
                "pass allow_pickle=True (--allow-pickle), which runs the pickle's code")
        raise ValueError(f"{path}: not a readable split file: {first_line(e)}{hint}") from e
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{path}: expected a list of split entries, found {type(entries).__name__}")
    return list(entries)


class _BadEntry(Exception):
    """An entry that does not fit its layout; the caller adds the file and record."""


def _jsonable(value: Any) -> Any:
    """`aux`/`attributes` as JSON values: tuples become lists, tensors and arrays plain lists."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _BadEntry(f"non-finite number {value} in the entry")
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    raise _BadEntry(f"field of type {type(value).__name__} cannot be stored as JSON")


def _four_numbers(box: Any, what: str) -> list[float]:
    if hasattr(box, "tolist"):  # a tensor or array in a file read with allow_pickle
        box = box.tolist()
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box)):
        raise _BadEntry(f"{what} must be 4 numbers, got {box!r}")
    try:
        values = [float(v) for v in box]
    except OverflowError:  # an integer past float range, e.g. 10**400 in a JSON line
        raise _BadEntry(f"{what} has a coordinate too large for a float: {box!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise _BadEntry(f"{what} has a non-finite coordinate: {values}")
    return values


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _BadEntry(f"{what} must be a string, got {type(value).__name__} {value!r}")
    return value


def _record_from_entry(entry: Any, spec: SplitLayout) -> dict[str, Any]:
    """One `.pth` entry as a JSON-lines record."""
    if not isinstance(entry, (list, tuple)) or len(entry) != spec.tuple_length:
        fields = ("(image_file, box, expression)" if spec.tuple_length == 3
                  else "(image_file, aux, box, expression, attributes)")
        found = f"a {len(entry)}-tuple" if isinstance(entry, (list, tuple)) else type(entry).__name__
        raise _BadEntry(f"dataset {spec.name!r} stores {spec.tuple_length}-tuples {fields}, found {found}; "
                        f"is the dataset right?")
    if spec.tuple_length == 3:
        image_file, box, expression = entry
        extra: dict[str, Any] = {}
    else:
        image_file, aux, box, expression, attributes = entry
        extra = {"aux": _jsonable(aux), "attributes": _jsonable(attributes)}
    original = _four_numbers(box, f"box ({spec.box_format})")
    if spec.box_format == "xywh":
        x, y, w, h = original
        xyxy = [x, y, x + w, y + h]
    else:
        xyxy = list(original)
    return {"image_file": _text(image_file, "image file"), "box": xyxy,
            "expression": _text(expression, "expression"), "dataset": spec.name,
            "box_original": original, "box_format": spec.box_format, **extra}


def _check_json_record(value: Any, expected: SplitLayout | None) -> dict[str, Any]:
    """A parsed JSON line, checked and normalised to the record form `_record_from_entry` gives."""
    if not isinstance(value, dict):
        raise _BadEntry(f"expected a JSON object, found {type(value).__name__}")
    missing = [k for k in ("image_file", "box", "expression", "dataset") if k not in value]
    if missing:
        raise _BadEntry(f"missing field(s) {missing}")
    try:
        spec = layout(_text(value["dataset"], "dataset"))
    except ValueError as e:
        raise _BadEntry(str(e)) from None
    if expected is not None and spec.name != expected.name:
        raise _BadEntry(f"record is from dataset {spec.name!r} but the source was opened as {expected.name!r}")
    record = dict(value, dataset=spec.name, box=_four_numbers(value["box"], "box (x1y1x2y2)"))
    _text(record["image_file"], "image file")
    _text(record["expression"], "expression")
    if "box_original" in record:
        record["box_original"] = _four_numbers(record["box_original"], "box_original")
        if record.get("box_format") not in ("xywh", "xyxy"):
            raise _BadEntry(f"box_format must be 'xywh' or 'xyxy' beside box_original, "
                            f"got {record.get('box_format')!r}")
    return record


def truncated_box(record: dict[str, Any]) -> list[float]:
    """The released loader's box: `np.array(bbox, dtype=int)`, then `x2 = x + w` for xywh."""
    if "box_original" in record:
        a, b, c, d = (float(int(v)) for v in record["box_original"])
        return [a, b, a + c, b + d] if record["box_format"] == "xywh" else [a, b, c, d]
    return [float(int(v)) for v in record["box"]]


class GroundingSplit:
    """Random-access source of `{"image": PIL RGB, "box": float32 [4] x1y1x2y2 pixels, "expression": str,
    "image_file": str, "dataset": str, "index": int}` from a `.pth` split file or its `.jsonl` form.

    `image_root` is the folder holding the dataset's images (`image_dir(data_root, dataset)` for the
    reference layout). `dataset` is required for `.pth` files, whose layout it selects; for `.jsonl`
    each record names its dataset, and a given `dataset` is checked against it. `box_tolerance`
    pixels of overhang past the image border are accepted (annotations round); more is an error.
    """

    def __init__(self, path: str | Path, image_root: str | Path, dataset: str | None = None, *,
                 lowercase: bool = True, prompt_template: str | None = None, released_code: bool = False,
                 box_tolerance: float = 1.0, allow_pickle: bool = False):
        self.path = Path(path)
        self.image_root = Path(image_root)
        self.layout = layout(dataset) if dataset is not None else None
        self.dataset = self.layout.name if self.layout is not None else None
        self.lowercase = lowercase
        self.prompt_template = prompt_template
        self.released_code = released_code
        self.box_tolerance = box_tolerance
        self.is_jsonl = self.path.suffix == JSONL_SUFFIX
        # Per record: (line number or None, raw entry or parsed JSON, JSON error message or None).
        self._rows: list[tuple[int | None, Any, str | None]] = []
        if self.is_jsonl:
            try:
                text = self.path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"{self.path}: not UTF-8 text at byte {e.start}: {e.reason}") from e
            for line_number, line in enumerate(text.split("\n"), start=1):
                if not line.strip():
                    continue
                try:
                    self._rows.append((line_number, json.loads(line.strip()), None))
                except ValueError as e:  # JSONDecodeError, or an integer too long to convert
                    self._rows.append((line_number, None, f"malformed JSON{json_error(e, line=False)}"))
        else:
            if self.layout is None:
                raise ValueError(f"{self.path}: a .pth split file needs its dataset "
                                 f"(one of {sorted(LAYOUTS)}) to know its entry layout")
            self._rows = [(None, entry, None) for entry in load_split_entries(self.path, allow_pickle)]

    def __len__(self) -> int:
        return len(self._rows)

    def describe(self, index: int) -> str:
        """Where record `index` comes from, for error messages."""
        line_number, raw, _ = self._rows[index]
        where = f"{self.path} line {line_number} (record {index})" if self.is_jsonl else f"{self.path} record {index}"
        image_file = raw.get("image_file") if isinstance(raw, dict) else (
            raw[0] if isinstance(raw, (list, tuple)) and raw else None)
        return f"{where}, image {image_file}" if isinstance(image_file, str) else where

    def record(self, index: int) -> dict[str, Any]:
        """Record `index` in the JSON-lines form, without opening its image; `RecordError` if malformed."""
        _, raw, json_error = self._rows[index]
        try:
            if json_error is not None:
                raise _BadEntry(json_error)
            if self.is_jsonl:
                return _check_json_record(raw, self.layout)
            return _record_from_entry(raw, self.layout)
        except _BadEntry as e:
            raise RecordError(f"{self.describe(index)}: {e}") from None

    def image_path(self, index: int) -> Path:
        return self.image_root / self.record(index)["image_file"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.record(index)
        expression = record["expression"]
        if not expression.strip():
            raise RecordError(f"{self.describe(index)}: empty expression")
        if self.prompt_template is not None:
            expression = self.prompt_template.replace("{pseudo_query}", expression)
        if self.lowercase:
            expression = expression.lower()
        box = truncated_box(record) if self.released_code else record["box"]
        x1, y1, x2, y2 = box
        if not (x2 > x1 and y2 > y1):
            raise RecordError(f"{self.describe(index)}: box {box} (x1y1x2y2) has no area")
        rgb = read_rgb_image(self.image_root / record["image_file"], self.describe(index))
        tol = self.box_tolerance
        if x1 < -tol or y1 < -tol or x2 > rgb.width + tol or y2 > rgb.height + tol:
            raise RecordError(f"{self.describe(index)}: box {box} (x1y1x2y2) lies outside the "
                              f"{rgb.width}x{rgb.height} image")
        return {"image": rgb, "box": np.asarray(box, dtype=np.float32), "expression": expression,
                "image_file": record["image_file"], "dataset": record["dataset"], "index": index}


def convert_splits(src_paths: Iterable[str | Path], dst_dir: str | Path, dataset: str, *,
                   overwrite: bool = False, allow_pickle: bool = False) -> list[Path]:
    """Convert `.pth` split files to `{dst_dir}/{stem}.jsonl`, one per source; returns the written paths.

    Every source is read and checked before anything is written, and each file is written to a
    temporary sibling and renamed, so a failure leaves no partial output. Entries that do not fit the
    dataset's layout raise `RecordError` naming the file and record; records whose images or box
    values are bad are kept and fail when read, where the raise/skip policy applies.
    """
    spec = layout(dataset)
    sources = [Path(p) for p in src_paths]
    if not sources:
        raise ValueError("no split files to convert")
    out = Path(dst_dir)
    targets = [out / f"{src.stem}{JSONL_SUFFIX}" for src in sources]
    if len(set(targets)) != len(targets):
        raise ValueError(f"two sources would write the same file: {[str(s) for s in sources]}")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing} already exist; pass overwrite=True (--overwrite) to replace them")
    converted = []
    for src in sources:
        records = []
        for index, entry in enumerate(load_split_entries(src, allow_pickle)):
            try:
                records.append(_record_from_entry(entry, spec))
            except _BadEntry as e:
                raise RecordError(f"{src} record {index}: {e}") from None
        converted.append(records)
    out.mkdir(parents=True, exist_ok=True)
    for target, records in zip(targets, converted):
        write_jsonl_atomic(target, records)
    return targets


def add_convert_splits_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vlalign data convert-splits SRC... --dataset NAME --out DIR`."""
    parser.add_argument("src", nargs="+", type=Path, help="CLIP-VG/TransVG split files ({dataset}_{split}.pth)")
    parser.add_argument("--dataset", required=True,
                        help=f"entry layout: one of {sorted(LAYOUTS)} or an alias {sorted(ALIASES)}")
    parser.add_argument("--out", required=True, type=Path, help="folder for the {stem}.jsonl files")
    parser.add_argument("--overwrite", action="store_true", help="replace existing .jsonl files")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read files holding objects other than lists, strings and numbers "
                             "(runs the pickle's code: trusted files only)")


def run_convert_splits(args: argparse.Namespace) -> int:
    """Run `convert_splits` from parsed arguments; prints each written file."""
    written = convert_splits(args.src, args.out, args.dataset, overwrite=args.overwrite,
                             allow_pickle=args.allow_pickle)
    for src, path in zip(args.src, written):
        with open(path, encoding="utf-8") as f:
            count = sum(1 for _ in f)
        print(f"{src} -> {path} ({count} records)")
    return 0
