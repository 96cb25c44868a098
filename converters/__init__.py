"""Two-way weight conversion between vlalign_jax parameter trees and PyTorch checkpoints.

    model, params = vlalign_jax.converters.load("ViT-B-32.pt")          # family guessed
    model.apply({"params": params}, pixels, method="encode_image")
    vlalign_jax.converters.save(model, params, "out_hf", family="hf")

Families: openai, open_clip, hf, degla, flax (ours), fgclip, clipvg. See `families.py` for the on-disk layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from vlalign_jax.converters.families import (DTYPES, FAMILIES, PICKLING_FAMILIES, READERS, WRITERS, Checkpoint,
                                             check_family, detect_family)
from vlalign_jax.converters.table import CheckpointMismatchError
from vlalign_jax.converters.torch_io import CheckpointFormatError
from vlalign_jax.models.clip import CLIP

__all__ = ["load", "save", "read", "write", "convert", "FAMILIES", "Checkpoint", "CheckpointMismatchError",
           "CheckpointFormatError"]


def read(path: str | Path, family: str | None = None, act: str | None = None,
         trust_pickle: bool = False) -> Checkpoint:
    """Read any supported checkpoint into neutral form (params as stored, e.g. fp16 stays fp16).

    Torch files are read with `weights_only=True` (plus the few safe types CLIP-VG's `args` need);
    `trust_pickle=True` unpickles anything a CLIP-VG file holds, running its code: trusted files only.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    family = check_family(family) if family else detect_family(path)
    if trust_pickle and family not in PICKLING_FAMILIES:
        raise ValueError(f"trust_pickle applies to the families {list(PICKLING_FAMILIES)}; {path} is {family!r}, "
                         f"whose files are read without unpickling code")
    if family in PICKLING_FAMILIES:
        return READERS[family](path, act, trust_pickle=trust_pickle)
    return READERS[family](path, act)


def write(ckpt: Checkpoint, path: str | Path, family: str, overwrite: bool = False) -> None:
    """Write a checkpoint in `family`'s layout; nothing appears at `path` unless all of it succeeds."""
    WRITERS[check_family(family)](ckpt, Path(path), overwrite)


def load(path: str | Path, family: str | None = None, dtype: str = "fp32",
         act: str | None = None, trust_pickle: bool = False) -> tuple[CLIP, dict]:
    """Load a checkpoint as `(model, params)`; the architecture comes from the checkpoint itself.

    `act` overrides the activation for files that do not record it (bare open_clip weights);
    `trust_pickle` as in `read`.
    """
    ckpt = read(path, family, act, trust_pickle).cast(_dtype(dtype))
    return model_for(ckpt.config), ckpt.nested_params()


def save(model: CLIP, params: Any, path: str | Path, family: str, dtype: str | None = None,
         overwrite: bool = False) -> None:
    """Save `params` of `model` in `family`'s layout, optionally cast to `dtype` (fp32/bf16/fp16)."""
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(nn.meta.unbox(params), sep="/").items()}
    ckpt = Checkpoint(model.config, flat)
    write(ckpt.cast(_dtype(dtype)) if dtype else ckpt, path, family, overwrite)


def convert(src: str | Path, dst: str | Path, src_family: str | None, dst_family: str, dtype: str = "fp32",
            act: str | None = None, overwrite: bool = False, trust_pickle: bool = False) -> Checkpoint:
    """File to file; metadata a family carries (DeGLA's epoch and name) travels along."""
    ckpt = read(src, src_family, act, trust_pickle).cast(_dtype(dtype))
    write(ckpt, dst, dst_family, overwrite)
    return ckpt


def model_for(config: Any) -> nn.Module:
    """The module a config describes: CLIP-VG, FG-CLIP 1 or 2, SigLIP 2 or CLIP."""
    from vlalign_jax.models.fgclip import FGCLIP, FgClipConfig
    from vlalign_jax.models.fgclip2 import FGCLIP2, Fgclip2Config
    from vlalign_jax.models.grounding import CLIPVG, GroundingConfig
    from vlalign_jax.models.siglip import SigLIP, SiglipConfig

    if isinstance(config, GroundingConfig):
        return CLIPVG(config)
    if isinstance(config, Fgclip2Config):
        return FGCLIP2(config)
    if isinstance(config, SiglipConfig):
        return SigLIP(config)
    return FGCLIP(config) if isinstance(config, FgClipConfig) else CLIP(config)


def _dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]
