"""SigLIP 2 <-> Hugging Face `Siglip2Model` folders: bitwise round trips both ways, config.json,
and every missing, unexpected or mis-shaped key named in one error."""

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from vlalign_jax.converters import siglip2_hf  # noqa: E402
from vlalign_jax.converters.families import Checkpoint  # noqa: E402
from vlalign_jax.converters.table import CheckpointMismatchError  # noqa: E402
from vlalign_jax.models.siglip import abstract_params  # noqa: E402
from vlalign_jax.models.siglip_configs import get_siglip_config  # noqa: E402

CONFIG = get_siglip_config("tiny")


def hf_folder(path, config=CONFIG, seed=0, **save_kwargs):
    """A tiny Siglip2Model saved by transformers itself, every weight random (biases, scalars too)."""
    torch.manual_seed(seed)
    ref = transformers.Siglip2Model(transformers.Siglip2Config(**siglip2_hf.config_to_json(config, "float32")))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p))
    ref.save_pretrained(path, **save_kwargs)
    return path


def our_params(config=CONFIG, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = traverse_util.flatten_dict(abstract_params(config), sep="/")
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}


def assert_tensors_equal(got: dict, want: dict):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


def assert_arrays_equal(got: dict, want: dict):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# ---- round trips ----------------------------------------------------------------------------------

def test_hf_to_ours_to_hf_is_bitwise(tmp_path):
    src = hf_folder(tmp_path / "hf")
    ckpt = siglip2_hf.read_siglip2_hf(src, None)
    # transformers writes its (CLIP-era) default token ids; they are kept as metadata.
    token_ids = dict(pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
    assert ckpt.config == dataclasses.replace(CONFIG, text=dataclasses.replace(CONFIG.text, **token_ids))
    assert ckpt.params["logit_scale"].shape == () and ckpt.params["vision_model/head/probe"].shape == (1, 1, 64)
    siglip2_hf.write_siglip2_hf(ckpt, tmp_path / "back", overwrite=False)
    assert_tensors_equal(load_file(tmp_path / "back" / "model.safetensors"), load_file(src / "model.safetensors"))
    want = json.loads((src / "config.json").read_text())
    got = json.loads((tmp_path / "back" / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        assert got[tower] == {k: v for k, v in want[tower].items() if k in got[tower]}, tower
    assert {k: got[k] for k in ("architectures", "model_type", "dtype")} == {
        k: want[k] for k in ("architectures", "model_type", "dtype")}


def test_ours_to_hf_to_ours_is_bitwise_and_transformers_loads_it(tmp_path):
    config = dataclasses.replace(CONFIG, text=dataclasses.replace(CONFIG.text, pad_token_id=0, eos_token_id=1))
    params = our_params(config)
    siglip2_hf.write_siglip2_hf(Checkpoint(config, params), tmp_path / "hf", overwrite=False)
    back = siglip2_hf.read_siglip2_hf(tmp_path / "hf", "gelu_pytorch_tanh")
    assert back.config == config
    assert_arrays_equal(back.params, params)
    ref, info = transformers.Siglip2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    in_proj = ref.vision_model.head.attention.in_proj_weight.detach().numpy()
    np.testing.assert_array_equal(in_proj[64:128], params["vision_model/head/attention/k_proj/kernel"].T)
    assert ref.logit_bias.item() == params["logit_bias"]


def test_bf16_round_trip_is_bitwise(tmp_path):
    src = hf_folder(tmp_path / "hf")
    ckpt = siglip2_hf.read_siglip2_hf(src, None).cast(ml_dtypes.bfloat16)
    siglip2_hf.write_siglip2_hf(ckpt, tmp_path / "bf16", overwrite=False)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    again = siglip2_hf.read_siglip2_hf(tmp_path / "bf16", None)
    assert_arrays_equal(again.params, ckpt.params)
    siglip2_hf.write_siglip2_hf(again, tmp_path / "bf16_back", overwrite=False)
    assert_tensors_equal(load_file(tmp_path / "bf16_back" / "model.safetensors"),
                         load_file(tmp_path / "bf16" / "model.safetensors"))


def test_sharded_folder_reads_like_a_single_file(tmp_path):
    single = siglip2_hf.read_siglip2_hf(hf_folder(tmp_path / "one"), None)
    sharded = hf_folder(tmp_path / "shards", max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert_arrays_equal(siglip2_hf.read_siglip2_hf(sharded, None).params, single.params)


def test_write_refuses_an_existing_folder_and_leaves_nothing_on_failure(tmp_path):
    ckpt = Checkpoint(CONFIG, our_params())
    siglip2_hf.write_siglip2_hf(ckpt, tmp_path / "hf", overwrite=False)
    with pytest.raises(FileExistsError):
        siglip2_hf.write_siglip2_hf(ckpt, tmp_path / "hf", overwrite=False)
    broken = Checkpoint(CONFIG, {k: v for k, v in ckpt.params.items() if k != "logit_bias"})
    with pytest.raises(CheckpointMismatchError, match="missing key: logit_bias"):
        siglip2_hf.write_siglip2_hf(broken, tmp_path / "out", overwrite=False)
    assert not (tmp_path / "out").exists()


# ---- mismatches -----------------------------------------------------------------------------------

def test_missing_unexpected_and_misshaped_keys_are_all_listed(tmp_path):
    src = hf_folder(tmp_path / "hf")
    state = load_file(src / "model.safetensors")
    del state["vision_model.head.attention.in_proj_bias"]
    del state["text_model.encoder.layers.1.mlp.fc2.weight"]
    state["vision_model.head.extra_probe"] = torch.zeros(3)
    state["text_model.embeddings.position_embedding.weight"] = torch.zeros(20, 64)
    save_file(state, src / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        siglip2_hf.read_siglip2_hf(src, None)
    message = str(e.value)
    for line in ("missing key: vision_model.head.attention.in_proj_bias",
                 "missing key: text_model.encoder.layers.1.mlp.fc2.weight",
                 "unexpected key: vision_model.head.extra_probe",
                 "wrong shape: text_model.embeddings.position_embedding.weight: expected (16, 64), found (20, 64)"):
        assert line in message
    assert len(e.value.missing) == 2 and len(e.value.unexpected) == 1 and len(e.value.misshaped) == 1


def test_our_side_mismatches_are_listed_too():
    params = our_params()
    params.pop("vision_model/head/probe")
    params["vision_model/head/extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        siglip2_hf.params_to_hf(params, CONFIG)
    assert e.value.missing == ["vision_model/head/probe"] and e.value.unexpected == ["vision_model/head/extra"]


def test_position_ids_buffer_from_older_transformers_is_ignored():
    state = siglip2_hf.params_to_hf(our_params(), CONFIG)
    state["text_model.embeddings.position_ids"] = np.arange(16)[None]
    assert set(siglip2_hf.params_from_hf(state, CONFIG, "state")) == set(our_params())


# ---- config.json ----------------------------------------------------------------------------------

def test_config_json_round_trip_and_transformers_defaults():
    base = get_siglip_config("base-patch16")
    assert siglip2_hf.config_from_json(siglip2_hf.config_to_json(base, "float32"), "x") == base
    # A config.json that leaves fields out gets transformers' defaults (vocab 32000, 16 x 16 grid).
    minimal = siglip2_hf.config_from_json({"model_type": "siglip2"}, "x")
    hf = transformers.Siglip2Config()
    assert minimal.text.vocab_size == hf.text_config.vocab_size == 32000
    assert minimal.vision.num_patches == hf.vision_config.num_patches == 256
    assert minimal.text.projection_dim == hf.text_config.projection_size == 768


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(model_type="siglip"), "not a SigLIP 2 model"),
    (lambda c: c["vision_config"].update(vision_use_head=False), "vision_use_head=false"),
    (lambda c: c["text_config"].update(hidden_act="gelu"), "different activations"),
    (lambda c: c["vision_config"].update(num_patches=200), "not a square grid"),
    (lambda c: c["text_config"].update(projection_size=32), "projection_dim=32 must equal vision.width=64"),
])
def test_config_json_that_we_cannot_represent_is_refused(change, message):
    cfg = siglip2_hf.config_to_json(CONFIG, "float32")
    change(cfg)
    with pytest.raises(ValueError, match=message):
        siglip2_hf.config_from_json(cfg, "config.json")


def test_act_override_must_agree_with_config_json(tmp_path):
    siglip2_hf.write_siglip2_hf(Checkpoint(CONFIG, our_params()), tmp_path / "hf", overwrite=False)
    with pytest.raises(ValueError, match="hidden_act='gelu_pytorch_tanh', but act='quick_gelu'"):
        siglip2_hf.read_siglip2_hf(tmp_path / "hf", "quick_gelu")


def test_hf_family_reads_and_writes_siglip2_folders(tmp_path):
    from vlalign_jax import converters
    from vlalign_jax.cli import main
    from vlalign_jax.models.siglip import SigLIP

    hf_folder(tmp_path / "hf")
    assert converters.families.detect_family(tmp_path / "hf") == "hf"
    model, _ = converters.load(tmp_path / "hf")
    assert isinstance(model, SigLIP)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "flax"), "--to", "flax"]) == 0
    assert main(["convert", str(tmp_path / "flax"), str(tmp_path / "back"), "--to", "hf"]) == 0
    assert_tensors_equal(load_file(tmp_path / "back" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ValueError, match="siglip2 model cannot be written as 'open_clip'"):
        converters.convert(tmp_path / "flax", tmp_path / "x.pt", None, "open_clip")
