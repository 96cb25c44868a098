"""Reading benchmark files: a JSON annotation file and an image, with errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.json_records import read_rgb_image


def read_json(path: str, hint: str = "") -> Any:
    """The parsed JSON file at `path`; missing is FileNotFoundError (plus `hint` on where it should
    be), unparsable is RecordError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found" + (f"; {hint}" if hint else ""))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON: {e}") from e


def sorted_files(folder: str, suffix: str, what: str) -> list[str]:
    """The names in `folder` ending in `suffix`, sorted; no folder or no such file is FileNotFoundError
    saying which `what` (e.g. "DCI annotation") was looked for."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder of {what} files")
    names = sorted(n for n in os.listdir(folder) if n.endswith(suffix))
    if not names:
        raise FileNotFoundError(f"no {what} files (*{suffix}) in {folder}")
    return names


def open_rgb(path: str | Path) -> Image.Image:
    """The image at `path` as RGB, through the project's one reader (`read_rgb_image`); a benchmark
    image is its own record, so an unreadable one is a RecordError
    "benchmark: cannot read image <path>: <error>". One argument, so it maps over paths on a pool."""
    return read_rgb_image(Path(path), "benchmark")
