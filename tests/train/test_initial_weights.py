"""Starting from existing weights (`model.init_from`) and exporting a run (`vlalign export`): the state
starts exactly at the checkpoint's weights (EMA included), mismatches list every key, and an export
holds the trained params and nothing of the method's state."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from demo_runs import small_config
from vlalign_jax import converters
from vlalign_jax.cli import main
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.loop import setup_run, train


def flat(tree):
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run with an EMA, so params and EMA params differ."""
    workdir = tmp_path_factory.mktemp("run")
    train(small_config(**{"train.ema_decay": "0.5"}), workdir)
    return workdir


def test_export_writes_the_params_not_the_ema(trained, tmp_path):
    assert main(["export", str(trained), str(tmp_path / "model.pt"), "--to", "open_clip"]) == 0
    exported = converters.read(tmp_path / "model.pt", "open_clip").params
    params = flat(load_params(trained))
    assert exported.keys() == params.keys()
    for key, value in params.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("source", ["workdir", "open_clip"])
def test_init_from_starts_at_those_weights(trained, tmp_path, source):
    path = trained
    if source == "open_clip":
        path = tmp_path / "model.pt"
        assert main(["export", str(trained), str(path), "--to", "open_clip"]) == 0
    config = small_config(**{"model.init_from": str(path), "train.ema_decay": "0.9", "train.seed": "7"})
    state = setup_run(config).init_state()
    want = flat(load_params(trained))
    for name, tree in (("params", state.params), ("ema", state.extras["ema_params"])):
        got = flat(tree)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} {key}")
    assert int(state.step) == 0


def test_init_from_a_different_architecture_lists_every_problem(trained):
    wider = ("{'vision': {'image_size': 32, 'patch_size': 16, 'width': 48, 'layers': 1, 'heads': 2, "
             "'mlp_dim': 64}, 'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, "
             "'mlp_dim': 64}, 'embed_dim': 16}")
    config = small_config(**{"model.init_from": str(trained), "model.overrides": wider})
    with pytest.raises(ValueError, match=r"does not fit the configured model") as error:
        setup_run(config).init_state()
    message = str(error.value)
    assert "shape of vision_model/embeddings/class_embedding: checkpoint (32,), model (48,)" in message
    assert "visual_projection" in message


def test_init_from_a_missing_path_names_it(tmp_path):
    config = small_config(**{"model.init_from": str(tmp_path / "nope.pt")})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        setup_run(config).init_state()
