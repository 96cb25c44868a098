"""Starting a run from existing weights (`model.init_from`): a PyTorch checkpoint of any family the
converters read (OpenAI, open_clip, Hugging Face, DeGLA, our flax export) or another run's workdir.

Fine-tuning recipes (DeGLA from OpenAI's ViT-B/32) start here. Every parameter of the model must be
in the checkpoint with the same shape, and nothing else may be: a mismatch lists every key at once,
so a wrong `model.name` fails before any compute. The weights are placed straight into the state's
sharding, each process reading only the slices its devices hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vlalign_jax.train.checkpoint import CHECKPOINT_DIR, load_params


def read_initial_params(path: str | Path, family: str | None = None) -> dict:
    """Nested numpy params from a checkpoint file/folder or a training workdir."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model.init_from={str(path)!r} does not exist")
    if path.is_dir() and (path / CHECKPOINT_DIR).is_dir() and family in (None, "", "workdir"):
        return load_params(path)
    from vlalign_jax.converters import read

    return read(path, family or None).nested_params()


def check_against(params: dict, abstract_params: Any, source: str) -> dict:
    """`params` cast to the model's dtypes; every missing, unexpected or mis-shaped key is an error."""
    theirs = traverse_util.flatten_dict(params, sep="/")
    ours = traverse_util.flatten_dict(abstract_params, sep="/")
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in ours.items() if k not in theirs]
    problems += [f"unexpected {k} {tuple(np.shape(v))}" for k, v in theirs.items() if k not in ours]
    problems += [f"shape of {k}: checkpoint {tuple(np.shape(theirs[k]))}, model {tuple(v.shape)}"
                 for k, v in ours.items() if k in theirs and tuple(np.shape(theirs[k])) != tuple(v.shape)]
    if problems:
        raise ValueError(f"{source} does not fit the configured model ({len(problems)} problems; check "
                         f"model.name and model.overrides):\n  " + "\n  ".join(problems))
    cast = {k: np.asarray(theirs[k]).astype(v.dtype) for k, v in ours.items()}
    return traverse_util.unflatten_dict(cast, sep="/")


def place(params: dict, shardings: Any) -> Any:
    """Host numpy params -> global jax.Arrays in `shardings` (each process fills its own shards)."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
                        params, shardings)
