"""Exporting a training run's weights to a checkpoint family (`vlalign export WORKDIR DST --to ...`).

The run's model architecture is saved as `WORKDIR/model.json` when training starts; the weights are
the `params` of the newest (or a chosen) checkpoint, read alone: method state such as DeGLA's EMA
teacher or the optimizer moments is never exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlalign_jax.models.clip import ClipConfig
from vlalign_jax.models.grounding import GroundingConfig
from vlalign_jax.models.siglip import SiglipConfig
from vlalign_jax.train.checkpoint import load_params

MODEL_CONFIG_FILE = "model.json"


def save_model_config(model: Any, workdir: str | Path) -> Path | None:
    """Record the architecture of a CLIP-, SigLIP- or CLIP-VG model beside the checkpoints (others: nothing)."""
    config = getattr(model, "config", None)
    if not isinstance(config, (ClipConfig, SiglipConfig, GroundingConfig)):
        return None
    from vlalign_jax.converters.families import model_kind

    path = Path(workdir) / MODEL_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model_kind(config), "config": config.to_dict()}, indent=2))
    return path


def load_model_config(workdir: str | Path) -> ClipConfig | SiglipConfig:
    path = Path(workdir) / MODEL_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir (written by `vlalign train`)?")
    from vlalign_jax.converters.families import config_from_dict

    info = json.loads(path.read_text())
    return config_from_dict(info.get("model", "clip"), info["config"])


def export_run(workdir: str | Path, dst: str | Path, family: str, step: int | None = None,
               dtype: str | None = None, overwrite: bool = False) -> ClipConfig | SiglipConfig:
    """Write the run's params (no teacher, no optimizer state) as a `family` checkpoint at `dst`."""
    from vlalign_jax import converters

    config = load_model_config(workdir)
    converters.save(converters.model_for(config), load_params(workdir, step), dst, family, dtype, overwrite)
    return config
