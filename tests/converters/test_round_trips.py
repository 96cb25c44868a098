"""Round trips are exact: torch -> flax -> torch reproduces the state_dict bit for bit, and
flax -> torch -> flax reproduces our params."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import traverse_util

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

import vlalign_jax.converters as converters  # noqa: E402
from torch_models import inputs, tiny_hf_clip, tiny_open_clip  # noqa: E402
from vlalign_jax.cli import main  # noqa: E402
from vlalign_jax.models.clip import CLIP  # noqa: E402
from vlalign_jax.models.clip_configs import get_clip_config  # noqa: E402


def assert_state_dicts_equal(got: dict, want: dict):
    assert list(got) == list(want) or set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


def assert_params_equal(got, want):
    got, want = (traverse_util.flatten_dict(nn.meta.unbox(t), sep="/") for t in (got, want))
    assert set(got) == set(want)
    for key in want:
        assert np.asarray(got[key]).dtype == np.asarray(want[key]).dtype, key
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


@pytest.mark.parametrize("family,name", [("openai", "model.pt"), ("open_clip", "model.safetensors"),
                                         ("open_clip", "model.bin")])
def test_openai_naming_round_trip_is_bitwise(tmp_path, family, name):
    want = tiny_open_clip(quick_gelu=True).state_dict()
    src = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(want, src)
    else:
        torch.save(want, src)
    assert main(["convert", str(src), str(tmp_path / "flax"), "--from", family, "--to", "flax",
                 "--act", "quick_gelu"]) == 0
    assert main(["convert", str(tmp_path / "flax"), str(tmp_path / ("back_" + name)), "--to", family]) == 0
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file
        got = load_file(tmp_path / ("back_" + name))
    else:
        got = torch.load(tmp_path / ("back_" + name), weights_only=True)
    assert_state_dicts_equal(got, want)


def test_hf_round_trip_is_bitwise_and_keeps_config(tmp_path):
    ref = tiny_hf_clip(eos_token_id=49407)
    ref.save_pretrained(tmp_path / "hf")
    converters.convert(tmp_path / "hf", tmp_path / "flax", None, "flax")
    converters.convert(tmp_path / "flax", tmp_path / "hf_back", None, "hf")
    from safetensors.torch import load_file

    assert_state_dicts_equal(load_file(tmp_path / "hf_back" / "model.safetensors"),
                             load_file(tmp_path / "hf" / "model.safetensors"))
    back = json.loads((tmp_path / "hf_back" / "config.json").read_text())
    assert back["text_config"]["eos_token_id"] == 49407
    assert back["vision_config"]["hidden_act"] == "quick_gelu"


def test_degla_checkpoint_round_trip(tmp_path):
    """DeGLA saves DDP training checkpoints: `module.` prefixes, epoch, name, optimizer and scaler."""
    ref = tiny_open_clip(quick_gelu=True, seed=5)
    want = {f"module.{k}": v for k, v in ref.state_dict().items()}
    opt = torch.optim.AdamW(ref.parameters())
    torch.save({"epoch": 7, "name": "degla-run", "state_dict": want, "optimizer": opt.state_dict(),
                "scaler": {"scale": 65536.0}}, tmp_path / "epoch_7.pt")
    assert converters.families.detect_family(tmp_path / "epoch_7.pt") == "degla"
    converters.convert(tmp_path / "epoch_7.pt", tmp_path / "flax", None, "flax")
    converters.convert(tmp_path / "flax", tmp_path / "back.pt", None, "degla")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["epoch"] == 7 and back["name"] == "degla-run"
    assert_state_dicts_equal(back["state_dict"], want)


@pytest.mark.parametrize("family,name", [("openai", "m.pt"), ("open_clip", "oc_dir"), ("hf", "hf"),
                                         ("degla", "d.pt")])
def test_flax_round_trip_is_identical(tmp_path, family, name):
    config = get_clip_config("tiny")
    model = CLIP(config)
    pixels, tokens = inputs()
    params = nn.meta.unbox(model.init(jax.random.key(3), pixels, tokens.astype(np.int32))["params"])
    converters.save(model, params, tmp_path / name, family=family)
    model_back, params_back = converters.load(tmp_path / name, family=family)
    assert model_back.config == config  # open_clip folders record QuickGELU in open_clip_config.json
    assert_params_equal(params_back, params)


def test_dtype_cast_and_fp16_source(tmp_path):
    """--dtype bf16 writes bf16; an fp16 source is upcast exactly and written back bit for bit."""
    want = {k: v.half() for k, v in tiny_open_clip(seed=6).state_dict().items()}
    torch.save(want, tmp_path / "half.pt")
    model, params = converters.load(tmp_path / "half.pt", family="openai")
    assert all(v.dtype == np.float32 for v in traverse_util.flatten_dict(params).values())
    assert main(["convert", str(tmp_path / "half.pt"), str(tmp_path / "back.pt"), "--from", "openai",
                 "--to", "openai", "--dtype", "fp16"]) == 0
    assert_state_dicts_equal(torch.load(tmp_path / "back.pt", weights_only=True), want)
    converters.save(model, params, tmp_path / "bf16", family="flax", dtype="bf16")
    _, params_bf16 = converters.load(tmp_path / "bf16", family="flax", dtype="bf16")
    leaves = traverse_util.flatten_dict(params_bf16).values()
    assert all(v.dtype == ml_dtypes.bfloat16 for v in leaves)
