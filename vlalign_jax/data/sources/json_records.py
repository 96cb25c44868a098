"""Records kept in JSON files, one JSON array or JSON lines per file, as the DeGLA and FG-CLIP
references store them; plus the checks every JSON-described image-text source needs (a decoded RGB
image, a non-blank text), each failing as a `RecordError` that names the file and record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vlalign_jax.data.records import RecordError

PathLike = str | Path


def expand_json_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """Files to read, in order: a file is itself; a folder is its `*.json` then its `*.jsonl` files
    (sorted, where FG-CLIP's `glob` order is the file system's); a `.txt` file lists one path a line
    (FG-CLIP `train_fgclip2.py:178-183`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(entry.glob("*.json")) + sorted(entry.glob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"{entry}: folder has no *.json or *.jsonl files")
            files.extend(found)
        elif entry.suffix == ".txt":
            listed = [line.strip() for line in entry.read_text(encoding="utf-8").split("\n")]
            files.extend(Path(line) for line in listed if line)
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such file or folder")
    if not files:
        raise ValueError(f"no JSON files in {list(map(str, paths))}")
    return files


def json_error(error: ValueError, line: bool = True) -> str:
    """Where and why `json.loads` failed: " at line L column C: why" for a `JSONDecodeError` (no line
    for a one-line text), else ": why" (an integer longer than `sys.get_int_max_str_digits()` digits
    is a plain ValueError)."""
    if isinstance(error, json.JSONDecodeError):
        where = f" at line {error.lineno} column {error.colno}" if line else f" at column {error.colno}"
        return f"{where}: {error.msg}"
    return f": {error}"


class JsonRecordFiles:
    """The records of JSON files that each hold one JSON array of objects or JSON lines.

    Array files are parsed when built (`json.load`, like both references); JSON lines are kept as text
    and parsed per record, so a bad line fails alone and names its line.
    """

    def __init__(self, paths: PathLike | Sequence[PathLike]):
        self.files = expand_json_paths(paths)
        self._records: list[Any] = []
        file_ids: list[int] = []
        positions: list[int] = []
        lines: list[int] = []  # 1-based line of a JSON lines record; 0 for a record of an array
        for file_id, path in enumerate(self.files):
            try:
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}: not UTF-8 text at byte {e.start}: {e.reason}; "
                                  f"no record of this file can be read") from e
            if text.lstrip().startswith("["):
                try:
                    items = json.loads(text)
                except ValueError as e:  # JSONDecodeError, or an integer too long to convert
                    raise RecordError(f"{path}: malformed JSON array{json_error(e)}; "
                                      f"no record of this file can be read") from e
                line_numbers = [0] * len(items)
            else:
                # split("\n"), not splitlines(): JSON strings may hold U+2028 and other separators raw.
                numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
                items = [line for _, line in numbered]
                line_numbers = [n for n, _ in numbered]
            self._records.extend(items)
            file_ids.extend([file_id] * len(items))
            positions.extend(range(len(items)))
            lines.extend(line_numbers)
        self._file_ids = np.asarray(file_ids, np.int32)
        self._positions = np.asarray(positions, np.int64)
        self._lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self._records)

    def describe(self, index: int) -> str:
        """`<file> record <index in file>` (plus the line for JSON lines)."""
        where = f"{self.files[self._file_ids[index]]} record {self._positions[index]}"
        line = int(self._lines[index])
        return f"{where} (line {line})" if line else where

    def record(self, index: int) -> dict[str, Any]:
        """Record `index` as a dict; a malformed line or a record that is not an object is a RecordError."""
        value = self._records[index]
        if self._lines[index]:
            try:
                value = json.loads(value)
            except ValueError as e:
                raise RecordError(f"{self.describe(index)}: malformed JSON{json_error(e, line=False)}") from e
        if not isinstance(value, dict):
            raise RecordError(f"{self.describe(index)}: expected a JSON object, got {type(value).__name__}")
        return value


def read_rgb_image(path: Path, where: str) -> Image.Image:
    """Decode `path` fully (so a truncated file fails here) as RGB; failure is a RecordError at `where`."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RecordError(f"{where}: cannot read image {path}: {type(e).__name__}: {e}") from e


def nonblank_text(value: Any, name: str, where: str) -> str:
    """`value` if it is a non-blank string, else a RecordError saying what `name` is instead."""
    if not isinstance(value, str):
        raise RecordError(f"{where}: {name} is {type(value).__name__}, not a string")
    if not value.strip():
        raise RecordError(f"{where}: empty {name}")
    return value


def required_text(record: dict[str, Any], key: str, where: str) -> str:
    """`record[key]` as a non-blank string, or a RecordError saying what is wrong with it."""
    if key not in record:
        raise RecordError(f"{where}: no {key!r} field")
    return nonblank_text(record[key], repr(key), where)
