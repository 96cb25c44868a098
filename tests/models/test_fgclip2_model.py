"""FG-CLIP 2: the SigLIP 2 parts against our SigLIP (bitwise), the box/long walks and the dense head
against torch re-implementations built from transformers' SigLIP 2 modules, the long-table init
against a loop written like the reference's `resize_postion_embeding`.

Tolerance for the torch comparisons: 1e-5 absolute in fp32 (conftest runs matmuls at full precision).
"""

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vlalign_jax.converters import fgclip2_hf, siglip2_hf
from vlalign_jax.models.fgclip2 import (
    FGCLIP2,
    FINE_GRAINED_SCALE_INIT,
    Fgclip2Config,
    abstract_params,
    fgclip2_config_from_siglip,
    fgclip2_params_from_siglip,
)
from vlalign_jax.models.siglip import SigLIP
from vlalign_jax.models.siglip import abstract_params as siglip_abstract_params
from vlalign_jax.models.siglip_configs import get_siglip_config

ATOL = 1e-5
KEEP = 4  # tiny: 16 short positions -> 4 * 16 - 3 * 4 = 52 long ones
SIGLIP_CONFIG = get_siglip_config("tiny")
CONFIG = fgclip2_config_from_siglip(SIGLIP_CONFIG, keep_len=KEEP)
SPATIAL_SHAPES = np.array([[3, 5], [4, 4], [2, 7]], np.int32)  # 15, 16, 14 real patches of 20
MAX_PATCHES = 20


def random_tree(abstract, seed):
    """Every leaf random (biases, LayerNorm scales around 1, the scalars too)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract, sep="/")
    out = {}
    for k, v in flat.items():
        x = rng.normal(0, 0.1, v.shape).astype(np.float32)
        out[k] = x + 1.0 if k.endswith("/scale") else x
    return traverse_util.unflatten_dict(out, sep="/")


def naflex_inputs(seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.normal(0, 1, (len(SPATIAL_SHAPES), MAX_PATCHES, CONFIG.vision.patch_dim)).astype(np.float32)
    mask = (np.arange(MAX_PATCHES)[None] < SPATIAL_SHAPES.prod(-1)[:, None]).astype(np.int32)
    return pixels, mask, SPATIAL_SHAPES


@pytest.fixture(scope="module")
def siglip_params():
    return random_tree(siglip_abstract_params(SIGLIP_CONFIG), 0)


@pytest.fixture(scope="module")
def fg_params():
    """An FG-CLIP 2 tree whose extra parts are random too (not copies), for the torch comparisons."""
    return jax.tree.map(np.asarray, random_tree(abstract_params(CONFIG), 1))


def apply(params, method, *args, **kwargs):
    return np.asarray(FGCLIP2(CONFIG).apply({"params": params}, *args, method=method, **kwargs))


# ---- (a) grown from SigLIP: the SigLIP paths are SigLIP's, exactly --------------------------------

def test_grown_from_siglip_matches_siglip_exactly(siglip_params):
    params = fgclip2_params_from_siglip(siglip_params, keep=KEEP)
    shapes = lambda t: jax.tree.map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), t)
    assert shapes(params) == shapes(abstract_params(CONFIG))
    pixels, mask, spatial = naflex_inputs()
    token_ids = np.random.default_rng(2).integers(0, CONFIG.text.vocab_size, (3, CONFIG.text.context_length))
    siglip = SigLIP(SIGLIP_CONFIG)
    siglip_image = siglip.apply({"params": siglip_params}, pixels, mask, spatial, method="encode_image")
    siglip_text = siglip.apply({"params": siglip_params}, token_ids, method="encode_text")
    np.testing.assert_array_equal(apply(params, "get_image_features", pixels, mask, spatial), siglip_image)
    np.testing.assert_array_equal(apply(params, "get_text_features", token_ids, "short"), siglip_text)
    # Copied heads: box = the short walk's head on the same pooled state; dense head = the vision head.
    np.testing.assert_allclose(apply(params, "get_text_features", token_ids, "box"), siglip_text, rtol=0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params["dense_feature_head"]), jax.tree.leaves(siglip_params["vision_model"]["head"])):
        np.testing.assert_array_equal(a, b)
    assert float(params["logit_scale_fine_grained"]) == float(params["logit_scale_hard_negative"]) == \
        pytest.approx(FINE_GRAINED_SCALE_INIT)
    # The caller's tree is untouched.
    assert "longtext_head" not in siglip_params and "position_embedding_ori" not in siglip_params["text_model"]


# ---- (b) box / long walks and the dense head against torch -----------------------------------------

def _hf_text_model(state, length, position_table):
    """transformers' SigLIP 2 text tower with `length` positions whose table is `position_table`."""
    hf_cfg = transformers.Siglip2Config(**siglip2_hf.config_to_json(
        dataclasses.replace(SIGLIP_CONFIG, text=dataclasses.replace(SIGLIP_CONFIG.text, context_length=length)),
        "float32"))
    model = transformers.Siglip2Model(hf_cfg).text_model.eval()
    prefix = "text_model."
    sub = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in state.items()
           if k.startswith(prefix) and "position_embedding_" not in k}
    sub["embeddings.position_embedding.weight"] = torch.from_numpy(position_table)
    missing, unexpected = model.load_state_dict(sub, strict=False)
    assert not unexpected and set(missing) <= {"embeddings.position_ids"}, (missing, unexpected)
    return model


def _torch_linear(state, name, x):
    return x @ torch.from_numpy(np.array(state[f"{name}.weight"])).T + torch.from_numpy(np.array(state[f"{name}.bias"]))


@pytest.mark.parametrize("walk,length", [("box", 16), ("box", 9), ("long", 52), ("long", 30), ("long", 3)])
def test_box_and_long_walks_match_torch(fg_params, walk, length):
    state = fgclip2_hf.state_from_params(traverse_util.flatten_dict(fg_params, sep="/"), CONFIG)
    if walk == "long":  # the reference's mask1/mask2, written as a loop
        ori = state["text_model.embeddings.position_embedding_ori.weight"]
        res = state["text_model.embeddings.position_embedding_res.weight"]
        table = np.stack([ori[i] if i < KEEP else res[i] for i in range(CONFIG.long_context_length)])
        head = "longtext_head"
    else:
        table, head = state["text_model.embeddings.position_embedding.weight"], "boxtext_head"
    ref = _hf_text_model(state, table.shape[0], np.ascontiguousarray(table))
    token_ids = np.random.default_rng(3).integers(0, CONFIG.text.vocab_size, (3, length))
    with torch.no_grad():
        hidden = ref(input_ids=torch.from_numpy(token_ids)).last_hidden_state  # after final_layer_norm
        want = _torch_linear(state, head, hidden[:, -1]).numpy()  # text_model.head skipped
    got = apply(fg_params, "get_text_features", token_ids, walk)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_walk_lengths_and_names_are_checked(fg_params):
    with pytest.raises(ValueError, match="walk"):
        apply(fg_params, "get_text_features", np.zeros((1, 4), np.int32), "medium")
    with pytest.raises(ValueError, match="<= 16"):
        apply(fg_params, "get_text_features", np.zeros((1, 17), np.int32), "box")
    with pytest.raises(ValueError, match="<= 52"):
        apply(fg_params, "get_text_features", np.zeros((1, 53), np.int32), "long")


def test_dense_features_match_torch_multihead_attention(fg_params):
    state = fgclip2_hf.state_from_params(traverse_util.flatten_dict(fg_params, sep="/"), CONFIG)
    t = lambda k: torch.from_numpy(np.array(state[k]))
    hf_cfg = transformers.Siglip2Config(**siglip2_hf.config_to_json(SIGLIP_CONFIG, "float32"))
    vision = transformers.Siglip2Model(hf_cfg).vision_model.eval()
    prefix = "vision_model."
    vision.load_state_dict({k[len(prefix):]: t(k) for k in state if k.startswith(prefix)}, strict=True)
    width, heads = CONFIG.vision.width, CONFIG.vision.heads
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True).eval()
    mha.load_state_dict({k: t(f"dense_feature_head.attention.{k}")
                         for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
    pixels, mask, spatial = naflex_inputs()
    with torch.no_grad():
        tokens = vision(pixel_values=torch.from_numpy(pixels), pixel_attention_mask=torch.from_numpy(mask),
                        spatial_shapes=torch.from_numpy(spatial).long()).last_hidden_state  # post-LN tokens
        a = mha(tokens, tokens, tokens, key_padding_mask=torch.from_numpy(mask == 0), need_weights=False)[0]
        h = torch.nn.functional.layer_norm(a, (width,), t("dense_feature_head.layernorm.weight"),
                                           t("dense_feature_head.layernorm.bias"), CONFIG.layer_norm_eps)
        h = torch.nn.functional.gelu(_torch_linear(state, "dense_feature_head.mlp.fc1", h), approximate="tanh")
        want = (a + _torch_linear(state, "dense_feature_head.mlp.fc2", h)).numpy()
    got = apply(fg_params, "get_image_dense_features", pixels, mask, spatial)
    assert got.shape == (len(spatial), MAX_PATCHES, width)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    pooled, dense = FGCLIP2(CONFIG).apply({"params": fg_params}, pixels, mask, spatial,
                                          method="get_image_features_and_dense")
    np.testing.assert_array_equal(np.asarray(dense), got)
    np.testing.assert_array_equal(np.asarray(pooled), apply(fg_params, "get_image_features", pixels, mask, spatial))


def test_call_returns_normalised_embeddings_and_scalars(fg_params):
    pixels, mask, spatial = naflex_inputs()
    rng = np.random.default_rng(4)
    short = rng.integers(0, CONFIG.text.vocab_size, (3, CONFIG.text.context_length))
    long = rng.integers(0, CONFIG.text.vocab_size, (3, CONFIG.long_context_length))
    model = FGCLIP2(CONFIG)
    image, s, l, scale, bias = model.apply({"params": fg_params}, pixels, mask, spatial, short, long)
    unit = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)
    np.testing.assert_allclose(image, unit(apply(fg_params, "get_image_features", pixels, mask, spatial)), atol=1e-6)
    np.testing.assert_allclose(s, unit(apply(fg_params, "get_text_features", short, "short")), atol=1e-6)
    np.testing.assert_allclose(l, unit(apply(fg_params, "get_text_features", long, "long")), atol=1e-6)
    assert scale == fg_params["logit_scale"] and bias == fg_params["logit_bias"]
    # A plain init creates every parameter (the box head, dense head and fine-grained scales too).
    init = jax.eval_shape(model.init, jax.random.key(0), pixels, mask, spatial, short, long)["params"]
    assert set(traverse_util.flatten_dict(init, sep="/")) == set(traverse_util.flatten_dict(fg_params, sep="/"))


# ---- (c) long tables -------------------------------------------------------------------------------

def _reference_resize(table: np.ndarray, keep: int) -> np.ndarray:
    """fgclip2.py `resize_postion_embeding`, row by row, in torch (the reference's own arithmetic)."""
    pre = torch.from_numpy(table)
    length, dim = pre.shape
    new = torch.zeros([4 * length - 3 * keep, dim], dtype=pre.dtype)
    for i in range(keep):
        new[i] = pre[i]
    for i in range(length - 1 - keep):
        new[4 * i + keep] = pre[i + keep]
        new[4 * i + 1 + keep] = 3 * pre[i + keep] / 4 + 1 * pre[i + 1 + keep] / 4
        new[4 * i + 2 + keep] = 2 * pre[i + keep] / 4 + 2 * pre[i + 1 + keep] / 4
        new[4 * i + 3 + keep] = 1 * pre[i + keep] / 4 + 3 * pre[i + 1 + keep] / 4
    for r in range(4):
        new[4 * length - 3 * keep - 4 + r] = pre[length - 1] + r * (pre[length - 1] - pre[length - 2]) / 4
    return new.numpy()


@pytest.mark.parametrize("length,keep", [(16, KEEP), (64, 20)])
def test_long_tables_match_reference_loop(length, keep):
    config = dataclasses.replace(SIGLIP_CONFIG, text=dataclasses.replace(SIGLIP_CONFIG.text, context_length=length))
    siglip_params = jax.tree.map(np.asarray, random_tree(siglip_abstract_params(config), 5))
    params = fgclip2_params_from_siglip(siglip_params, keep=keep)
    table = siglip_params["text_model"]["embeddings"]["position_embedding"]["embedding"]
    want = _reference_resize(table, keep)
    assert want.shape == (4 * length - 3 * keep, table.shape[1])
    assert fgclip2_config_from_siglip(config, keep).long_context_length == want.shape[0]
    for name in ("position_embedding_ori", "position_embedding_res"):
        np.testing.assert_array_equal(params["text_model"][name], want)
    assert params["text_model"]["position_embedding_ori"] is not params["text_model"]["position_embedding_res"]
    for name in ("longtext_head", "boxtext_head"):
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(params[name][k], siglip_params["text_model"]["head"][k])


def test_config_checks_and_dict_round_trip():
    assert Fgclip2Config.from_dict(CONFIG.to_dict()) == CONFIG
    assert Fgclip2Config().long_context_length == 196 and Fgclip2Config().keep_len == 20
    with pytest.raises(ValueError, match="keep_len"):
        dataclasses.replace(CONFIG, keep_len=60)
    with pytest.raises(ValueError, match="projection_dim"):
        Fgclip2Config(text=dataclasses.replace(CONFIG.text, width=64, heads=2, projection_dim=768))
