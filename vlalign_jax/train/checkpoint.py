"""Orbax checkpoints of a run: train state, data iterator state and config, saved asynchronously.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config}`. Orbax writes each step into a temporary
directory and renames it when complete, so a process killed mid-save leaves the previous checkpoint
as the newest valid one. Once a save has finished, its files' checksums are recorded
(`checkpoint_manifest.py`); `latest_valid_step` checks the newest step against them and moves a
damaged one aside (`checkpoints/corrupt-<step>`, kept for inspection), falling back to the previous.
Restoring takes the target shardings, so a checkpoint saved under one mesh restores under another.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlalign_jax.messages import first_line
from vlalign_jax.train import checkpoint_manifest
from vlalign_jax.train.state import TrainState
from vlalign_jax.train.workdir import CheckpointSaveError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CORRUPT_PREFIX = "corrupt-"


class CorruptCheckpointError(ValueError):
    """Every checkpoint of the run failed its checksums; none can be resumed from."""


class Checkpointer:
    """Saves every `save(...)` call asynchronously and keeps the newest `max_to_keep` steps."""

    def __init__(self, workdir: str | Path, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        # A write cut off by a crash leaves its temporary folder; it is never taken for a step, and the
        # next manager removes it.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unsealed: list[int] = []  # saved by this process, manifest not yet written
        self._sealing: threading.Thread | None = None  # writing the manifests of the last finished saves
        self._sealing_failed: tuple[int, OSError] | None = None  # raised by the next _join_sealing
        # Keeping one step, the next save deletes the step being hashed: hash before that save starts.
        self._seal_in_background = max_to_keep is None or max_to_keep > 1

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def latest_valid_step(self) -> int | None:
        """The newest step whose files match their checksums (None: no checkpoint yet). A damaged step
        is reported by path and moved aside; if every step is damaged, CorruptCheckpointError."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = checkpoint_manifest.verify(self.directory / str(step))
            if problem is None:
                if damaged:
                    _sync_hosts("vlalign_checkpoint_quarantine")
                    self.manager.reload()
                return step
            damaged.append(f"step {step}: {problem}")
            moved = self.directory / f"{CORRUPT_PREFIX}{step}"
            if jax.process_index() == 0:  # every host verified the same files; one moves them
                (self.directory / str(step)).rename(moved)
            log.error("checkpoint step %d is damaged (%s); moved to %s, trying the previous one", step, problem,
                      moved)
        if damaged:
            _sync_hosts("vlalign_checkpoint_quarantine")
            self.manager.reload()
            raise CorruptCheckpointError(f"no undamaged checkpoint under {self.directory} to resume from: "
                                         + "; ".join(damaged) + f" (moved aside as {CORRUPT_PREFIX}<step>)")
        return None

    def save(self, step: int, state: TrainState, data_iterator: Any, config: dict) -> None:
        """Start saving; returns once the arrays are copied off the devices (the write continues).
        The previous save is finished and sealed with its checksums first."""
        self._seal()
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            self.manager.save(step, args=ocp.args.Composite(**items))
        except Exception as e:  # whatever the writer raised, this step is not saved: say so, keep the cause
            raise self._save_failed(step, e) from e
        self._unsealed.append(step)

    def _seal(self) -> None:
        """Wait for saves in flight, then record the checksums of the steps they wrote (primary host),
        in a background thread: hashing takes seconds per GB and the training loop need not wait for
        it. A write that failed in the background surfaces here, as CheckpointSaveError."""
        unsealed, self._unsealed = self._unsealed, []
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # the background write failed; the steps committed before it are intact
            raise self._save_failed(unsealed[-1] if unsealed else None, e) from e
        self._join_sealing()
        if jax.process_index() == 0:
            kept = set(self.manager.all_steps())
            steps = [step for step in unsealed if step in kept]  # not already dropped by max_to_keep
            if steps:
                self._sealing = threading.Thread(target=self._write_manifests, args=(steps,),
                                                 name="vlalign-checkpoint-manifest", daemon=True)
                self._sealing.start()
                if not self._seal_in_background:
                    self._join_sealing()

    def _write_manifests(self, steps: list[int]) -> None:
        for step in steps:
            step_dir = self.directory / str(step)
            try:
                checkpoint_manifest.write_manifest(step_dir)
            except OSError as e:
                if step_dir.exists():  # else it was dropped (max_to_keep) meanwhile: nothing to seal
                    self._sealing_failed = (step, e)
                    return

    def _join_sealing(self) -> None:
        if self._sealing is not None:
            self._sealing.join()
            self._sealing = None
        if self._sealing_failed is not None:
            (step, error), self._sealing_failed = self._sealing_failed, None
            raise self._save_failed(step, error, "its files were written, their checksums not: ") from error

    def _save_failed(self, step: int | None, cause: BaseException, what: str = "") -> CheckpointSaveError:
        self.manager.reload()
        committed = self.manager.all_steps()
        kept = (f"the checkpoints before it are untouched (newest: step {max(committed)})" if committed
                else "no earlier checkpoint exists")
        return CheckpointSaveError(
            f"saving checkpoint step {step} under {self.directory} failed: {what}{first_line(cause, with_type=True)}; {kept}. "
            f"Free space or fix the storage, then rerun the same command to resume")

    def restore(self, step: int, abstract: TrainState, data_iterator: Any) -> TrainState:
        """Restore onto the shardings in `abstract` (ShapeDtypeStructs) and rewind `data_iterator`."""
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        """Finish every save, manifests included."""
        self._seal()
        self._join_sealing()

    def close(self) -> None:
        self.manager.close()


def _sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, as orbax's StandardRestore wants."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def load_params(workdir: str | Path, step: int | None = None) -> Any:
    """The params pytree (host numpy arrays) of the newest, or the given, checkpoint of a run.

    Only the params are read from disk (a partial restore), not the optimizer state.
    """
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    if step is None:
        steps = ocp.utils.checkpoint_steps(directory) if directory.exists() else []
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint under {directory}")
        for step in sorted(steps, reverse=True):
            problem = checkpoint_manifest.verify(directory / str(step))
            if problem is None:
                break
            log.error("checkpoint step %d is damaged (%s); using an earlier one", step, problem)
        else:
            raise CorruptCheckpointError(f"every checkpoint under {directory} is damaged")
    else:
        problem = checkpoint_manifest.verify(directory / str(step))
        if problem is not None:
            raise CorruptCheckpointError(f"checkpoint step {step} under {directory} is damaged: {problem}")
    path = directory / str(step) / "state"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for step {step} under {directory}")
    checkpointer = ocp.PyTreeCheckpointer()
    host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host),
                                     checkpointer.metadata(path).item_metadata["params"])}
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    return jax.tree.map(np.asarray, restored["params"])
