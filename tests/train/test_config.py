"""Config files, overrides and their errors."""

from pathlib import Path
import json

import pytest

from vlalign_jax.cli import main
from vlalign_jax.train.config import ConfigError, build_config, save_config, split_overrides

DEMO = str(Path(__file__).resolve().parents[2] / "configs/demo/clip_shapes.py")


def test_overrides_change_typed_fields():
    config = build_config(DEMO, [("train.steps", "7"), ("optim.lr", "3e-4"), ("mesh.data", "2"),
                                 ("model.name", "tiny-gelu"), ("optim.freeze", "('text_model/.*',)")])
    assert config.train.steps == 7 and config.optim.lr == 3e-4 and config.mesh.data == 2
    assert config.model.name == "tiny-gelu" and config.optim.freeze == ("text_model/.*",)
    assert isinstance(build_config(DEMO, [("optim.lr", "1")]).optim.lr, float)  # ints widen to floats


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match="unknown config field 'train.stpes'; did you mean 'train.steps'"):
        build_config(DEMO, [("train.stpes", "3")])
    with pytest.raises(ConfigError, match="'optim.warmup_steps'"):
        build_config(DEMO, [("optim.warmup", "3")])


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match="config field 'train.steps' expects int"):
        build_config(DEMO, [("train.steps", "many")])


def test_split_overrides_accepts_both_spellings():
    rest, overrides = split_overrides(["train", "--config", DEMO, "--config.train.steps=3",
                                       "--config.optim.lr", "0.1", "--workdir", "w"])
    assert rest == ["train", "--config", DEMO, "--workdir", "w"]
    assert overrides == [("train.steps", "3"), ("optim.lr", "0.1")]


def test_resolved_config_is_saved(tmp_path):
    config = build_config(DEMO, [("train.steps", "11")])
    path = save_config(config, tmp_path)
    assert json.loads(path.read_text())["train"]["steps"] == 11


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    code = main(["train", "--config", DEMO, "--workdir", str(tmp_path), "--config.train.batchsize=4"])
    assert code == 2
    assert "did you mean 'train.batch_size'" in capsys.readouterr().err
