"""Orbax checkpoints of a run: train state, data iterator state and config, saved asynchronously.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config}`. Orbax writes each step into a temporary
directory and renames it when complete, so a process killed mid-save leaves the previous checkpoint
as the newest valid one. Restoring takes the target shardings, so a checkpoint saved under one mesh
restores under another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlalign_jax.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Saves every `save(...)` call asynchronously and keeps the newest `max_to_keep` steps."""

    def __init__(self, workdir: str | Path, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator: Any, config: dict) -> None:
        """Start saving; returns once the arrays are copied off the devices (the write continues)."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int, abstract: TrainState, data_iterator: Any) -> TrainState:
        """Restore onto the shardings in `abstract` (ShapeDtypeStructs) and rewind `data_iterator`."""
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


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
        step = max(steps)
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
