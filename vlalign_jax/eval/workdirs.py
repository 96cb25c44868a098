"""The saved training config of a `vlalign train` workdir, read one way for every evaluation that
picks a run's tokenizer, patch budget, model or data from it (region encoders, dual encoders, the
grounding suite), so they agree on what a workdir is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval.benchmark_files import read_json


def run_config(path: str | Path, family: str | None = None) -> dict[str, Any] | None:
    """The parsed config.json of the training workdir at `path`, or None when `path` is not one.

    None when `family` names a checkpoint family (anything but None or "workdir") or `path` holds no
    config.json file. A config.json is a run's when model.json (the architecture `vlalign train`
    records) lies beside it, or when it is a JSON object naming its `method`; a Hugging Face model
    folder has a config.json too, with neither, and is None. Unparsable JSON, or a config.json beside
    model.json that is not a JSON object, is a RecordError naming the file.
    """
    from vlalign_jax.train.config import CONFIG_FILE_NAME
    from vlalign_jax.train.export import MODEL_CONFIG_FILE

    if family not in (None, "workdir"):
        return None
    path = Path(path)
    config_file = path / CONFIG_FILE_NAME
    if not config_file.is_file():
        return None
    saved = read_json(str(config_file))
    has_model_file = (path / MODEL_CONFIG_FILE).is_file()
    if isinstance(saved, dict) and (has_model_file or "method" in saved):
        return saved
    if has_model_file:
        raise RecordError(f"{config_file}: a training run's config must be a JSON object, got "
                          f"{type(saved).__name__}")
    return None
