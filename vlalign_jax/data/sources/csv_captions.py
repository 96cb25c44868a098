"""Image-caption tables in open_clip's CSV/TSV convention: one row per image, a path column and a
caption column (`--csv-img-key filepath --csv-caption-key title --csv-separator "\\t"` there).

Paths are resolved against `image_root` (default: the table's folder). The table is read once; images
are opened lazily, per record. A missing column is an error listing the columns the file has; a
missing or corrupt image, or an empty caption, is a `RecordError` naming the table, row and image.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.json_records import read_rgb_image


class CsvImageText:
    """Random-access source of `{"image": PIL RGB image, "caption": str, "index": int}`."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None, image_column: str = "filepath",
                 caption_column: str = "title", separator: str = "\t"):
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=separator)
            try:
                columns = reader.fieldnames or []
                missing = [c for c in (image_column, caption_column) if c not in columns]
                if missing:
                    raise ValueError(f"{self.path}: no column {missing} (separator {separator!r}); "
                                     f"the file has columns {columns}")
                self.rows = [(row[image_column], row[caption_column]) for row in reader]
            except (UnicodeDecodeError, csv.Error) as e:  # bad bytes; a field over csv.field_size_limit()
                raise RecordError(f"{self.path}: unreadable table near line {reader.line_num}: "
                                  f"{type(e).__name__}: {e}") from e

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        """Where record `index` comes from, for error messages (rows count from 1 after the header)."""
        return f"{self.path} row {index + 2} ({self.rows[index][0]})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, caption = self.rows[index]
        if image_path is None or caption is None:
            raise RecordError(f"{self.describe(index)}: row has too few fields")
        if not caption.strip():
            raise RecordError(f"{self.describe(index)}: empty caption")
        return {"image": read_rgb_image(self.image_root / image_path, self.describe(index)), "caption": caption,
                "index": index}
