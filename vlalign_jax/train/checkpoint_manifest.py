"""Checksums of finished checkpoints, so a truncated or bit-flipped one is found before it is used.

Orbax commits a step by renaming its temporary folder, so a kill mid-save never leaves a half-written
step that looks complete; it does not detect damage after the commit (a truncated copy, a bad disk, a
bit flip). Once a step's save has finished, `write_manifest` records every file's size and SHA-256 in
`<step>/vlalign_manifest.json` (written atomically); `verify` recomputes them. A step without a
manifest (the process died between the commit and the manifest, or an older run) is not verified
here; restoring it is the check.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "vlalign_manifest.json"
_CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: str | Path) -> Path:
    """Record size and SHA-256 of every file under the finished step folder `step_dir`."""
    step_dir = Path(step_dir)
    entries = {str(p.relative_to(step_dir)): {"size": p.stat().st_size, "sha256": _sha256(p)}
               for p in _files(step_dir)}
    path = step_dir / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        json.dump({"files": entries}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def has_manifest(step_dir: str | Path) -> bool:
    return (Path(step_dir) / MANIFEST).exists()


def verify(step_dir: str | Path) -> str | None:
    """None if every file the manifest lists is there with its size and checksum, else what is wrong
    (naming the file). A step without a manifest verifies as None."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        entries = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path} is unreadable ({e})"
    for name, want in entries.items():
        file = step_dir / name
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != want["size"]:
            return f"{file} has {size} bytes, {want['size']} when saved (truncated or overwritten)"
        if _sha256(file) != want["sha256"]:
            return f"{file} does not match its checksum (the bytes changed after saving)"
    return None
