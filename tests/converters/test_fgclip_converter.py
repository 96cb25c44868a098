"""FG-CLIP 1 Hugging Face folders: exact round trips both ways, and every bad key named."""

import json

import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from vlalign_jax.converters import clip_hf, fgclip_hf  # noqa: E402
from vlalign_jax.converters.families import Checkpoint  # noqa: E402
from vlalign_jax.converters.table import CheckpointMismatchError  # noqa: E402
from vlalign_jax.models.clip import ClipConfig, TextConfig, VisionConfig  # noqa: E402
from vlalign_jax.models.fgclip import FGCLIP, abstract_params, fgclip_config_from_clip  # noqa: E402

EOS = 49407
EXTRA_KEYS = ("text_model.embeddings.position_embedding_res.weight",
              "text_model.embeddings.position_embedding_ori.weight", "text_filip_projection.weight",
              "logit_scale_finegraind", "logit_scale_hardneg")
AUTO_MAP = {"AutoConfig": "configuration_clip.CLIPConfig", "AutoModelForCausalLM": "modeling_fgclip.FGCLIPModel"}


def _reference_folder(path, seed: int = 0):
    """What the remote-code model's save_pretrained would write: CLIP keys + the five extras, a
    CLIPConfig config.json with auto_map. Built from a random tiny transformers CLIPModel."""
    common = dict(hidden_act="quick_gelu", num_hidden_layers=2, num_attention_heads=2, hidden_size=64)
    config = transformers.CLIPConfig(
        text_config=dict(intermediate_size=128, max_position_embeddings=77, eos_token_id=2, **common),
        vision_config=dict(intermediate_size=128, image_size=32, patch_size=8, **common), projection_dim=32)
    torch.manual_seed(seed)
    ref = transformers.CLIPModel(config)
    ref.save_pretrained(path)
    rng = np.random.default_rng(seed)
    state = {k: np.asarray(v + rng.normal(0, 0.02, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
             for k, v in load_file(path / "model.safetensors").items()}
    for key, shape in zip(EXTRA_KEYS, [(248, 64), (248, 64), (32, 64), (), ()]):
        state[key] = np.asarray(rng.normal(0, 0.5, shape), np.float32)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    raw = json.loads((path / "config.json").read_text())
    raw.update(architectures=["FGCLIPModel"], auto_map=AUTO_MAP)
    (path / "config.json").write_text(json.dumps(raw))
    return state


def test_theirs_to_ours_to_theirs_is_bitwise_and_keeps_auto_map(tmp_path):
    want = _reference_folder(tmp_path / "ref")
    ckpt = fgclip_hf.read(tmp_path / "ref")
    assert ckpt.config.text.pool == "eos" and ckpt.config.text.eos_token_id == EOS  # forced, as the model does
    assert ckpt.meta["hf_config"]["auto_map"] == AUTO_MAP
    np.testing.assert_array_equal(ckpt.params["logit_scale_fine_grained"], want["logit_scale_finegraind"])
    np.testing.assert_array_equal(ckpt.params["text_filip_projection/kernel"], want["text_filip_projection.weight"].T)
    fgclip_hf.write(ckpt, tmp_path / "back")
    got = load_file(tmp_path / "back" / "model.safetensors")
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back["auto_map"] == AUTO_MAP and back["architectures"] == ["FGCLIPModel"]
    assert back["model_type"] == "clip" and "auto_map" not in back["text_config"]
    assert (back["text_config"]["eos_token_id"], back["text_config"]["pad_token_id"]) == (EOS, EOS)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_ours_to_theirs_to_ours_is_bitwise(tmp_path, dtype):
    config = fgclip_config_from_clip(ClipConfig(32, VisionConfig(32, 8, 64, 2, 2, 128),
                                                TextConfig(width=64, layers=2, heads=2, mlp_dim=128)))
    rng = np.random.default_rng(1)
    flat = {k: rng.normal(0, 0.05, v.shape).astype(dtype)
            for k, v in traverse_util.flatten_dict(abstract_params(config), sep="/").items()}
    fgclip_hf.write(Checkpoint(config, flat), tmp_path / "hf")
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert raw["auto_map"] == fgclip_hf.DEFAULT_AUTO_MAP  # nothing carried: the (unverified) default
    back = fgclip_hf.read(tmp_path / "hf")
    assert back.config == config
    assert set(back.params) == set(flat)
    for key, value in flat.items():
        assert back.params[key].dtype == value.dtype, key
        np.testing.assert_array_equal(back.params[key], value, err_msg=key)


def test_missing_unexpected_and_misshaped_keys_are_all_named(tmp_path):
    state = _reference_folder(tmp_path / "ref")
    del state["text_filip_projection.weight"], state["logit_scale_hardneg"]
    state["text_model.embeddings.position_embedding_ori.weight"] = np.zeros((77, 64), np.float32)
    state["text_model.embeddings.mask1"] = np.zeros((248, 1), np.float32)
    state["text_model.embeddings.position_ids"] = np.arange(248)[None]  # a buffer: dropped, not an error
    save_file(state, tmp_path / "ref" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        fgclip_hf.read(tmp_path / "ref")
    assert set(err.value.missing) == {"text_filip_projection.weight", "logit_scale_hardneg"}
    assert err.value.unexpected == ["text_model.embeddings.mask1"]
    assert err.value.misshaped == [("text_model.embeddings.position_embedding_ori.weight", (248, 64), (77, 64))]
    for key in ("text_filip_projection.weight", "logit_scale_hardneg", "text_model.embeddings.mask1"):
        assert key in str(err.value)


def test_plain_clip_folder_is_told_apart_and_lacks_exactly_the_extras(tmp_path):
    state = _reference_folder(tmp_path / "fg")
    (tmp_path / "clip").mkdir()
    save_file({k: v for k, v in state.items() if k not in EXTRA_KEYS}, tmp_path / "clip" / "model.safetensors")
    raw = json.loads((tmp_path / "fg" / "config.json").read_text())
    del raw["auto_map"], raw["architectures"]
    (tmp_path / "clip" / "config.json").write_text(json.dumps(raw))
    assert fgclip_hf.is_fgclip_folder(tmp_path / "fg") and not fgclip_hf.is_fgclip_folder(tmp_path / "clip")
    (tmp_path / "fg" / "config.json").write_text(json.dumps(raw))  # no architectures: found by its weights
    assert fgclip_hf.is_fgclip_folder(tmp_path / "fg")
    with pytest.raises(CheckpointMismatchError) as err:
        fgclip_hf.read(tmp_path / "clip")
    assert set(err.value.missing) == set(EXTRA_KEYS) and not err.value.unexpected


def test_exported_folder_loads_in_transformers_clip_with_only_the_extras_left_over(tmp_path):
    """The CLIP half of the export is a valid transformers CLIPModel with the same short-text and
    image features as ours (the remote FGCLIPModel itself cannot be run here)."""
    _reference_folder(tmp_path / "ref", seed=3)
    ckpt = fgclip_hf.read(tmp_path / "ref")
    fgclip_hf.write(ckpt, tmp_path / "out")
    hf, info = transformers.CLIPModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert set(info["unexpected_keys"]) == set(EXTRA_KEYS) and not info["missing_keys"]
    pixels = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
    tokens = np.full((2, 77), EOS, np.int64)
    tokens[:, 0], tokens[0, 1:9], tokens[1, 1:30] = 49406, 320, 1125
    model, params = FGCLIP(ckpt.config), traverse_util.unflatten_dict(ckpt.params, sep="/")
    with torch.no_grad():
        want_image = hf.eval().get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        want_text = hf.get_text_features(input_ids=torch.from_numpy(tokens))
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, pixels, method="encode_image")),
                               want_image.pooler_output.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, tokens.astype(np.int32),
                                                      method="encode_text")),
                               want_text.pooler_output.numpy(), rtol=0, atol=1e-5)


def test_writer_refuses_what_the_remote_code_cannot_load(tmp_path):
    clip = ClipConfig(32, VisionConfig(32, 8, 64, 1, 1, 128), TextConfig(context_length=16, width=64, layers=1,
                                                                          heads=1, mlp_dim=128))
    config = fgclip_config_from_clip(clip, keep_len=5)  # 49 long positions; the remote code hard-codes 248
    flat = {k: np.zeros(v.shape, np.float32)
            for k, v in traverse_util.flatten_dict(abstract_params(config), sep="/").items()}
    with pytest.raises(ValueError, match="hard-codes 248"):
        fgclip_hf.write(Checkpoint(config, flat), tmp_path / "x")
    with pytest.raises(ValueError, match="FgClipConfig"):
        fgclip_hf.write(Checkpoint(clip, {}), tmp_path / "y")
    assert not (tmp_path / "x").exists()
    # The CLIP rules are reused unchanged; only the five extras are new.
    assert fgclip_hf.RULES[:len(clip_hf.RULES)] == clip_hf.RULES
    assert sorted(t for r in fgclip_hf.EXTRA_RULES for t in r.theirs) == sorted(EXTRA_KEYS)


def test_registered_family_detects_loads_and_round_trips_through_flax(tmp_path):
    from vlalign_jax import converters
    from vlalign_jax.cli import main

    state = _reference_folder(tmp_path / "ref")
    assert converters.families.detect_family(tmp_path / "ref") == "fgclip"
    model, params = converters.load(tmp_path / "ref")
    assert isinstance(model, FGCLIP)
    assert main(["convert", str(tmp_path / "ref"), str(tmp_path / "flax"), "--to", "flax"]) == 0
    assert main(["convert", str(tmp_path / "flax"), str(tmp_path / "back"), "--to", "fgclip"]) == 0
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert back.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    with pytest.raises(ValueError, match="a fgclip model cannot be written as 'hf'"):
        converters.convert(tmp_path / "flax", tmp_path / "plain", None, "hf")  # a CLIP folder cannot hold it
