"""`workdirs.run_config`: the one reading of a training workdir's config.json, for the region and dual
encoders (which knew a workdir by its model.json) and the grounding suite (by a config naming its method)."""

import json

import ml_collections
import pytest

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval.grounding_suite import read_run_config
from vlalign_jax.eval.workdirs import run_config


def _folder(path, config=None, model_file=False):
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if model_file:
        (path / "model.json").write_text("{}")
    return path


def test_a_workdir_is_known_by_its_model_file_or_a_config_naming_its_method(tmp_path):
    data = {"data": {"tokenizer": "words"}}
    by_model_file = _folder(tmp_path / "encoders_run", data, model_file=True)  # region/dual encoders' case
    by_method = _folder(tmp_path / "clipvg_run", {"method": "clipvg", **data})  # grounding suite's case
    assert run_config(by_model_file) == data
    assert run_config(str(by_method), "workdir") == {"method": "clipvg", **data}
    grounding = read_run_config(by_method, None)
    assert isinstance(grounding, ml_collections.ConfigDict) and grounding.method == "clipvg"
    assert read_run_config(by_model_file).data.tokenizer == "words"


def test_other_folders_and_named_families_are_not_workdirs(tmp_path):
    run = _folder(tmp_path / "run", {"method": "clip"}, model_file=True)
    assert run_config(run, "hf") is None and read_run_config(run, "clipvg") is None  # a family says "checkpoint"
    hf = _folder(tmp_path / "hf", {"model_type": "clip", "projection_dim": 512})  # a Hugging Face folder
    assert run_config(hf) is None and read_run_config(hf) is None
    assert run_config(_folder(tmp_path / "model_only", model_file=True)) is None
    assert run_config(_folder(tmp_path / "list", [1, 2])) is None
    assert run_config(tmp_path / "missing") is None
    (tmp_path / "weights.npz").write_bytes(b"")
    assert run_config(tmp_path / "weights.npz") is None  # a checkpoint file


def test_a_broken_config_is_an_error_naming_the_file(tmp_path):
    broken = _folder(tmp_path / "broken", "{not json")
    with pytest.raises(RecordError, match=r"broken[/\\]config.json: not valid JSON"):
        run_config(broken)
    not_object = _folder(tmp_path / "not_object", [1, 2], model_file=True)
    with pytest.raises(RecordError, match=r"not_object[/\\]config.json: a training run's config must be a JSON "
                                          "object, got list"):
        read_run_config(not_object)
