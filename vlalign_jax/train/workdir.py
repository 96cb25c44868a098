"""A run's workdir is checked before any compute: a clear error now, not a failed save hours later.
A save that fails anyway (the disk filled up during the run) is a `CheckpointSaveError`."""

from __future__ import annotations

import os
from pathlib import Path

PROBE = ".vlalign_write_probe"


class WorkdirError(ValueError):
    """The workdir cannot hold the run's files (not a folder, not writable, or the disk is full)."""


class CheckpointSaveError(WorkdirError):
    """Writing a checkpoint failed (disk full, quota, permissions, a storage error); the run stopped
    there, and the checkpoints committed before it are untouched."""


def check_workdir(workdir: str | Path) -> Path:
    """Create `workdir` if needed and prove it writable (a probe file written, synced and removed)."""
    workdir = Path(workdir)
    probe = workdir / PROBE
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable: {e.strerror or e} ({type(e).__name__}); "
                           f"nothing was trained") from e
    return workdir
