"""FG-CLIP 2 Hugging Face folders: exact round trips both ways, config.json, and every bad key named.

No remote code can be run here, so the reference folder is built by hand from the key list of
shared/research/fgclip.md 5.2, written out below independently of the converter's rule table.
"""

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from vlalign_jax.converters import fgclip2_hf
from vlalign_jax.converters.families import Checkpoint
from vlalign_jax.converters.table import CheckpointMismatchError

from vlalign_jax.models.fgclip2 import (
    FINE_GRAINED_SCALE_INIT,
    abstract_params,
    fgclip2_config_from_siglip,
)
from vlalign_jax.models.siglip_configs import get_siglip_config

CONFIG = fgclip2_config_from_siglip(get_siglip_config("tiny"), keep_len=4)  # 16 short, 52 long positions
D, MLP, V, P = 64, 128, 1000, 4 * 4 * 3
AUTO_MAP = {"AutoConfig": "configuration_fgclip2.Fgclip2Config",
            "AutoModelForCausalLM": "modeling_fgclip2.Fgclip2Model"}


def _map_head(prefix):
    return {f"{prefix}.probe": (1, 1, D), f"{prefix}.attention.in_proj_weight": (3 * D, D),
            f"{prefix}.attention.in_proj_bias": (3 * D,), f"{prefix}.attention.out_proj.weight": (D, D),
            f"{prefix}.attention.out_proj.bias": (D,), f"{prefix}.layernorm.weight": (D,),
            f"{prefix}.layernorm.bias": (D,), f"{prefix}.mlp.fc1.weight": (MLP, D), f"{prefix}.mlp.fc1.bias": (MLP,),
            f"{prefix}.mlp.fc2.weight": (D, MLP), f"{prefix}.mlp.fc2.bias": (D,)}


def _layers(tower, n):
    out = {}
    for i in range(n):
        t = f"{tower}.encoder.layers.{i}"
        for proj in "qkvo":
            name = "out_proj" if proj == "o" else f"{proj}_proj"
            out |= {f"{t}.self_attn.{name}.weight": (D, D), f"{t}.self_attn.{name}.bias": (D,)}
        out |= {f"{t}.mlp.fc1.weight": (MLP, D), f"{t}.mlp.fc1.bias": (MLP,), f"{t}.mlp.fc2.weight": (D, MLP),
                f"{t}.mlp.fc2.bias": (D,)}
        for ln in ("layer_norm1", "layer_norm2"):
            out |= {f"{t}.{ln}.weight": (D,), f"{t}.{ln}.bias": (D,)}
    return out


def spec_shapes(with_scales=True):
    """Every key of an FG-CLIP 2 state_dict (fgclip.md 5.2) with its shape, for the tiny config."""
    shapes = {
        "vision_model.embeddings.patch_embedding.weight": (D, P), "vision_model.embeddings.patch_embedding.bias": (D,),
        "vision_model.embeddings.position_embedding.weight": (256, D),
        **_layers("vision_model", 2),
        "vision_model.post_layernorm.weight": (D,), "vision_model.post_layernorm.bias": (D,),
        **_map_head("vision_model.head"),
        "text_model.embeddings.token_embedding.weight": (V, D),
        "text_model.embeddings.position_embedding.weight": (16, D),
        "text_model.embeddings.position_embedding_res.weight": (52, D),
        "text_model.embeddings.position_embedding_ori.weight": (52, D),
        **_layers("text_model", 2),
        "text_model.final_layer_norm.weight": (D,), "text_model.final_layer_norm.bias": (D,),
        "text_model.head.weight": (D, D), "text_model.head.bias": (D,),
        "logit_scale": (1,), "logit_bias": (1,),
        "longtext_head.weight": (D, D), "longtext_head.bias": (D,),
        "boxtext_head.weight": (D, D), "boxtext_head.bias": (D,),
        **_map_head("dense_feature_head"),
    }
    if with_scales:
        shapes |= {"logit_scale_finegraind": (), "logit_scale_hardneg": ()}
    return shapes


def reference_folder(path, with_scales=True, seed=0, extra=None, drop=()):
    rng = np.random.default_rng(seed)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in spec_shapes(with_scales).items()}
    state |= extra or {}
    for k in drop:
        del state[k]
    path.mkdir(parents=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    text = dict(model_type="fgclip2_text_model", vocab_size=V, hidden_size=D, intermediate_size=MLP,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16, projection_size=D,
                keep_len=4, longtext_len=52, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    vision = dict(model_type="fgclip2_vision_model", hidden_size=D, intermediate_size=MLP, num_hidden_layers=2,
                  num_attention_heads=2, num_channels=3, patch_size=4, num_patches=256,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    (path / "config.json").write_text(json.dumps(dict(model_type="fgclip2", architectures=["FG_CLIP2_Model"],
                                                      auto_map=AUTO_MAP, text_config=text, vision_config=vision)))
    return state


def assert_same(got, want):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("with_scales", [True, False])
def test_theirs_to_ours_to_theirs_is_bitwise(tmp_path, with_scales):
    want = reference_folder(tmp_path / "ref", with_scales)
    assert fgclip2_hf.is_fgclip2_folder(tmp_path / "ref")
    ckpt = fgclip2_hf.read(tmp_path / "ref")
    assert ckpt.config == CONFIG
    assert ckpt.meta["fgclip2"]["fine_grained_scales_saved"] is with_scales
    p = ckpt.params
    np.testing.assert_array_equal(p["longtext_head/kernel"], want["longtext_head.weight"].T)
    np.testing.assert_array_equal(p["dense_feature_head/attention/k_proj/kernel"],
                                  want["dense_feature_head.attention.in_proj_weight"][D:2 * D].T)
    np.testing.assert_array_equal(p["text_model/position_embedding_ori"],
                                  want["text_model.embeddings.position_embedding_ori.weight"])
    assert p["logit_scale"].shape == ()
    if with_scales:
        np.testing.assert_array_equal(p["logit_scale_hard_negative"], want["logit_scale_hardneg"])
    else:
        assert float(p["logit_scale_fine_grained"]) == np.float32(FINE_GRAINED_SCALE_INIT)
    fgclip2_hf.write(ckpt, tmp_path / "back")
    assert_same(load_file(str(tmp_path / "back" / "model.safetensors")), want)
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back["auto_map"] == AUTO_MAP and back["architectures"] == ["FG_CLIP2_Model"]
    assert back["model_type"] == "fgclip2" and back["text_config"]["model_type"] == "fgclip2_text_model"
    assert (back["text_config"]["keep_len"], back["text_config"]["longtext_len"]) == (4, 52)
    assert back["vision_config"]["model_type"] == "fgclip2_vision_model"


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_ours_to_theirs_to_ours_is_bitwise(tmp_path, dtype):
    rng = np.random.default_rng(1)
    flat = {k: rng.standard_normal(v.shape).astype(dtype)
            for k, v in traverse_util.flatten_dict(abstract_params(CONFIG), sep="/").items()}
    fgclip2_hf.write(Checkpoint(CONFIG, flat), tmp_path / "hf")
    on_disk = load_file(str(tmp_path / "hf" / "model.safetensors")) if dtype == np.float32 else None
    if on_disk is not None:
        assert {k: v.shape for k, v in on_disk.items()} == spec_shapes()
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert raw["auto_map"] == fgclip2_hf.DEFAULT_AUTO_MAP and raw["model_type"] == "fgclip2"
    back = fgclip2_hf.read(tmp_path / "hf")
    assert back.config == CONFIG
    assert_same(back.params, flat)


def test_config_json_round_trip_keeps_long_fields():
    for config in (CONFIG, dataclasses.replace(CONFIG, keep_len=20, long_context_length=196)):
        assert fgclip2_hf.config_from_json(fgclip2_hf.config_to_json(config, "float32"), "x") == config
    with pytest.raises(ValueError, match="fgclip2"):
        fgclip2_hf.config_from_json({"model_type": "siglip2"}, "x")


def test_bad_keys_are_all_named(tmp_path):
    reference_folder(tmp_path / "bad", drop=("boxtext_head.bias", "dense_feature_head.probe"),
                     extra={"bogus.weight": np.zeros(3, np.float32),
                            "longtext_head.weight": np.zeros((D, D + 1), np.float32)})
    with pytest.raises(CheckpointMismatchError) as info:
        fgclip2_hf.read(tmp_path / "bad")
    err = info.value
    assert set(err.missing) == {"boxtext_head.bias", "dense_feature_head.probe"}
    assert err.unexpected == ["bogus.weight"]
    assert [k for k, _, _ in err.misshaped] == ["longtext_head.weight"]
    for key in ("boxtext_head.bias", "dense_feature_head.probe", "bogus.weight", "longtext_head.weight"):
        assert key in str(err)


def test_one_fine_grained_scale_alone_is_missing_the_other(tmp_path):
    reference_folder(tmp_path / "half", drop=("logit_scale_hardneg",))
    with pytest.raises(CheckpointMismatchError) as info:
        fgclip2_hf.read(tmp_path / "half")
    assert info.value.missing == ["logit_scale_hardneg"] and not info.value.unexpected


def test_siglip2_folder_is_not_fgclip2_and_wrong_config_is_refused(tmp_path):
    state = reference_folder(tmp_path / "s")
    raw = json.loads((tmp_path / "s" / "config.json").read_text())
    (tmp_path / "s" / "config.json").write_text(json.dumps({**raw, "model_type": "siglip2"}))
    assert fgclip2_hf.is_fgclip2_folder(tmp_path / "s")  # the weights give it away
    save_file({k: v for k, v in state.items() if "longtext" not in k}, str(tmp_path / "s" / "model.safetensors"))
    assert not fgclip2_hf.is_fgclip2_folder(tmp_path / "s")
    assert not fgclip2_hf.is_fgclip2_folder(tmp_path / "nothing")
    with pytest.raises(TypeError, match="Fgclip2Config"):
        fgclip2_hf.write(Checkpoint(get_siglip_config("tiny"), {}), tmp_path / "out")


def test_hf_family_reads_and_writes_fgclip2_folders(tmp_path):
    from vlalign_jax import converters
    from vlalign_jax.cli import main
    from vlalign_jax.models.fgclip2 import FGCLIP2

    reference_folder(tmp_path / "ref")
    assert converters.families.detect_family(tmp_path / "ref") == "hf"
    model, _ = converters.load(tmp_path / "ref")
    assert isinstance(model, FGCLIP2)
    assert main(["convert", str(tmp_path / "ref"), str(tmp_path / "flax"), "--to", "flax"]) == 0
    assert main(["convert", str(tmp_path / "flax"), str(tmp_path / "back"), "--to", "hf"]) == 0
    want = load_file(tmp_path / "ref" / "model.safetensors")
    got = load_file(tmp_path / "back" / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
