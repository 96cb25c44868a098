"""Files written whole or not at all: a temporary sibling, fsync'd, then renamed into place, so a crash
never leaves a half-written split, score or state file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary sibling, renamed into place once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def write_json_atomic(path: Path, value: Any) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(value, indent=1, sort_keys=True, allow_nan=True) + "\n"))


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    def write(f):
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    _write_atomic(path, write)
