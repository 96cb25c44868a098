"""Config files, overrides, the engine's range checks, and their errors."""

from pathlib import Path
import json

import pytest

from vlalign_jax.cli import main
from vlalign_jax.train import config_checks
from vlalign_jax.train.config import ConfigError, build_config, parse_value, save_config, split_overrides
from vlalign_jax.train.config_checks import check_config

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


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("**/*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_builds_and_passes_the_checks(path):
    check_config(build_config(str(path)))  # build_config checks too; this keeps the test if it stops


def test_copied_constants_match_their_sources():
    from vlalign_jax.parallel.mesh import MESH_AXES
    from vlalign_jax.train.optim import DECAY_RULES

    assert config_checks.DECAY_RULES == DECAY_RULES and config_checks.MESH_AXES == MESH_AXES


@pytest.mark.parametrize("key, value, rule", [
    ("train.steps", "0", "'train.steps' must be an integer in [1, 2147483647], got 0"),
    ("train.steps", "2**31", "'train.steps' expects int"),  # not a literal: a string
    ("train.steps", str(2**31), "'train.steps' must be an integer in [1, 2147483647]"),
    ("train.steps", "True", "'train.steps' must be an integer"),
    ("train.steps", "None", "'train.steps' must be an integer"),
    ("train.batch_size", "0", "'train.batch_size' must be an integer >= 1"),
    ("train.checkpoint_every", "0", "'train.checkpoint_every' must be an integer >= 1"),
    ("train.log_every", "-1", "'train.log_every' must be an integer >= 1"),
    ("train.eval_every", "-5", "'train.eval_every' must be an integer >= 0 or None (0 = never)"),
    ("train.keep_checkpoints", "0", "'train.keep_checkpoints' must be an integer >= 1 or None"),
    ("train.accum_steps", "0", "'train.accum_steps' must be an integer >= 1"),
    ("train.accum_steps", "3", "'train.batch_size' (=128) must be divisible by 'train.accum_steps' (=3)"),
    ("train.ema_decay", "-0.1", "'train.ema_decay' must be a finite float32 in [0, 1] or None"),
    ("train.ema_decay", "1.5", "'train.ema_decay' must be a finite float32 in [0, 1]"),
    ("train.seed", str(2**63), "'train.seed' must be an integer in"),
    ("optim.lr", "-1e-3", "'optim.lr' must be a finite float32 >= 0"),
    ("optim.lr", "1e999", "'optim.lr' must be a finite float32 >= 0, got inf"),
    ("optim.warmup_steps", "-1", "'optim.warmup_steps' must be an integer in [0, 2147483647]"),
    ("optim.weight_decay", "-1e999", "'optim.weight_decay' must be a finite float32 >= 0"),
    ("optim.max_grad_norm", "-1.0", "'optim.max_grad_norm' must be a finite float32 >= 0 or None"),
    ("optim.final_lr_fraction", "2.0", "'optim.final_lr_fraction' must be a finite float32 in [0, 1]"),
    ("optim.b1", "1.0", "'optim.b1' must be a finite float32 in [0, 1)"),
    ("optim.b2", "-0.1", "'optim.b2' must be a finite float32 in [0, 1)"),
    ("optim.eps", "0", "'optim.eps' must be a finite float32 >= 1.1754943508222875e-38 (a smaller one is 0 on device)"),
    ("optim.eps", "1e-40", "'optim.eps' must be a finite float32 >= 1.1754943508222875e-38"),  # flushed to 0
    ("optim.b1", "0.99999998", "'optim.b1' must be a finite float32 in [0, 1), got 0.99999998 (1.0 as a float32)"),
    ("optim.lr", "1e39", "'optim.lr' must be a finite float32 >= 0, got 1e+39 (inf as a float32)"),
    ("optim.lr", str(10**400), "'optim.lr' expects float, got 1000"),  # past float64: ml_collections' cast fails
    ("optim.freeze", "('text_model/(',)", "'optim.freeze' holds the invalid regular expression 'text_model/('"),
    ("optim.lr_multipliers", "{'x+': -1}", "'optim.lr_multipliers' must map each pattern to a finite float32 >= 0"),
    ("optim.lr_multipliers", "{'(': 1}", "'optim.lr_multipliers' holds the invalid regular expression '('"),
    ("mesh.fsdp", "0", "'mesh.fsdp' must be -1 (all remaining devices) or an integer >= 1, got 0"),
    ("mesh.tensor", "-2", "'mesh.tensor' must be -1"),
    ("mesh.tensor", "-1", "'mesh.data' and 'mesh.tensor' are each -1; at most one mesh axis may be -1"),
    ("data.on_error", "ignore", "'data.on_error' must be one of ('raise', 'skip'), got 'ignore'"),
    ("data.max_skip_fraction", "1.5", "'data.max_skip_fraction' must be a finite number in [0, 1]"),
    ("data.num_threads", "-1", "'data.num_threads' must be an integer >= 0"),
    ("data.num_workers", "-1", "'data.num_workers' must be an integer >= 0"),
    ("data.seed", "-1", "'data.seed' must be an integer in [0, 4294967295]"),
    ("eval.batch_size", "0", "'eval.batch_size' must be an integer >= 1"),
    ("method", "clpi", "'method' must name a module of vlalign_jax.methods (clip, clipvg, degla, fgclip, fgclip2), "
                       "got 'clpi'; did you mean 'clip'?"),
])
def test_range_checks_name_the_field_and_its_range(key, value, rule):
    with pytest.raises(ConfigError) as error:
        build_config(DEMO, [(key, value)])
    assert rule in str(error.value)


@pytest.mark.parametrize("key, value", [
    ("train.eval_every", "0"), ("train.keep_checkpoints", "None"), ("train.ema_decay", "1.0"),
    ("train.seed", "-1"), ("optim.lr", "0"), ("optim.max_grad_norm", "0"), ("optim.b1", "0"),
    ("optim.warmup_steps", "100000"), ("mesh.data", "1"), ("mesh.fsdp", "1"), ("data.num_threads", "0"),
    ("data.on_error", "skip"), ("data.max_skip_fraction", "1"), ("optim.lr_multipliers", "{'text_model/x+': 0.1}"),
])
def test_values_the_engine_accepts_pass(key, value):
    build_config(DEMO, [(key, value)])


def test_steps_may_be_zero_when_epochs_set_them():
    coco = str(Path(DEMO).parents[1] / "degla/vit_b32_coco.py")
    config = build_config(coco)
    assert config.train.steps == 0 and config.train.epochs > 0
    with pytest.raises(ConfigError, match=r"'train.steps' must be an integer in \[1, .*\] \(or set 'train.epochs' > 0"):
        build_config(coco, [("train.epochs", "0")])


def test_malformed_and_unhashable_literals_are_strings_for_the_field_to_reject():
    assert parse_value("{[]: 1}") == "{[]: 1}" and parse_value("[1,") == "[1," and parse_value("[" * 200) == "[" * 200
    with pytest.raises(ConfigError, match="'optim.freeze' expects tuple, got '{\\[\\]: 1}' \\(str\\): values are "
                                          "Python literals"):
        build_config(DEMO, [("optim.freeze", "{[]: 1}")])


def test_a_section_cannot_be_replaced_by_a_dict_but_a_free_form_group_can():
    with pytest.raises(ConfigError, match="config field 'train' is a section; set its fields one at a time"):
        build_config(DEMO, [("train", "{'steps': 3}")])
    config = build_config(DEMO, [("model.overrides", "{'vision': {'width': 64}}")])
    assert config.model.overrides.to_dict() == {"vision": {"width": 64}}
    with pytest.raises(ConfigError, match="'optim.lr_multipliers' is a dict, got 3"):
        build_config(DEMO, [("optim.lr_multipliers", "3")])
    with pytest.raises(ConfigError, match="'model.overrides' takes dicts with string keys only"):
        build_config(DEMO, [("model.overrides", "{'vision': {1: 2}}")])
    with pytest.raises(ConfigError, match="'optim.lr_multipliers' cannot take .*dots in field names"):
        build_config(DEMO, [("optim.lr_multipliers", "{'text_model/.*': 0.1}")])


def test_a_valueless_override_is_an_error_naming_the_field():
    with pytest.raises(ConfigError, match="config field 'train.steps' needs a value"):
        split_overrides(["train", "--config.train.steps"])
    with pytest.raises(ConfigError, match="'train.steps' needs a value.*the option '--workdir'"):
        split_overrides(["--config.train.steps", "--workdir", "w"])
    assert split_overrides(["--config.mesh.data", "-1"])[1] == [("mesh.data", "-1")]  # a negative number is a value


def test_epochs_that_make_no_whole_step_are_an_error_naming_them():
    from vlalign_jax.train.loop import setup_run

    config = build_config(DEMO, [("data.num_train", "10"), ("train.batch_size", "16")])
    with config.unlocked():
        config.train.epochs = 1  # the demo counts steps; recipes over files (DeGLA, CLIP-VG) count epochs
    with pytest.raises(ValueError, match=r"train.epochs=1 over 10 training records in batches of 16 makes 0 steps"):
        setup_run(config)
