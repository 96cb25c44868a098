"""The CLIP-VG module: the reference's parameter counts and trainable set, masking, dropout, gradients."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from vlalign_jax.models import clip
from vlalign_jax.models.grounding import (CLIPVG, FREEZE, GROUNDING_CONFIGS, FusionLayer, GroundingConfig,
                                          abstract_params, default_feature_layers, parameter_counts,
                                          patch_padding_mask, trainable)
from vlalign_jax.train.optim import FROZEN, param_labels

TINY = GROUNDING_CONFIGS["tiny"]


@pytest.mark.parametrize("name,total,updated", [("ViT-B-16", 171_302_405, 21_832_964),
                                                ("ViT-L-14", 466_273_797, 38_920_452)])
def test_parameter_counts_equal_the_reference_measurement(name, total, updated):
    """clipvg.md §1.7: deduplicated `model.parameters()` and `requires_grad` counts of ML_CLIP_VG."""
    got = parameter_counts(GROUNDING_CONFIGS[name])
    print(f"{name}: {got[0]:,} parameters, {got[1]:,} trainable")
    assert got == (total, updated)


def test_only_the_visual_position_table_of_clip_trains_and_freeze_works_as_optim_config():
    flat = traverse_util.flatten_dict(abstract_params(TINY), sep="/")
    clip_trained = [k for k in flat if k.startswith("clip/") and trainable(k)]
    assert clip_trained == ["clip/vision_model/embeddings/position_embedding"]
    assert all(trainable(k) for k in flat if not k.startswith("clip/"))
    labels = traverse_util.flatten_dict(param_labels(abstract_params(TINY), {}, FREEZE), sep="/")
    assert {k for k, v in labels.items() if v != FROZEN} == {k for k in flat if trainable(k)}


def test_clip_subtree_is_a_whole_clip_and_the_fusion_is_named_like_the_reference():
    ours = abstract_params(TINY)
    want = clip.abstract_params(TINY.clip)
    shapes = lambda t: {k: v.shape for k, v in traverse_util.flatten_dict(t, sep="/").items()}
    assert shapes(ours["clip"]) == shapes(want)
    assert set(ours) == {"clip", "visu_proj", "text_proj", "reg_token", "vl_pos_embed", "vl_transformer",
                         "bbox_embed", "ml_visu_proj"}
    assert ours["vl_pos_embed"].shape == (TINY.num_tokens, 32) == (1 + 16 + 1 + 16, 32)
    assert set(ours["vl_transformer"]["layers_0"]) == {"self_attn", "linear1", "linear2", "norm1", "norm2"}
    assert ours["ml_visu_proj"]["kernel"].shape == (4 * 128, 32)


@functools.lru_cache(maxsize=None)
def _init(config=TINY, batch=2, seed=0):
    """Model, random params and inputs. Params are drawn in numpy on the abstract tree: `model.init`'s
    hundred small random ops take ~10 s to compile on a CPU (init itself is tested on one layer)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract_params(config), sep="/")
    params = traverse_util.unflatten_dict(
        {k: jnp.asarray((k.endswith("/scale")) + rng.normal(0, 0.3 if k == "vl_pos_embed" else 0.05, v.shape),
                        jnp.float32) for k, v in flat.items()}, sep="/")
    size, ctx = config.clip.vision.image_size, config.clip.text.context_length
    pixels = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
    ids = np.zeros((batch, ctx), np.int32)
    ids[:, :6] = [49406, 320, 1929, 530, 518, 49407]
    return CLIPVG(config), params, pixels, jnp.asarray(ids)


@functools.lru_cache(maxsize=None)
def _apply(config=TINY):
    """`CLIPVG(config).apply`, compiled once: cold eager dispatch of a tiny model is slower than a compile."""
    return jax.jit(CLIPVG(config).apply, static_argnames=("method", "deterministic"))


def test_fusion_layer_init_follows_the_reference_reset():
    """xavier_uniform on each matrix (the fused [3D, D] in_proj as one), zero MHA biases, torch's default
    U(+-1/sqrt(fan_in)) for the FFN biases, unit LayerNorms."""
    d, ffn = 32, 64
    x = jnp.zeros((1, 3, d))
    params = nn.meta.unbox(FusionLayer(4, ffn, 0.1, 1e-5).init(jax.random.key(0), x, x, jnp.ones((1, 3), bool),
                                                                   True)["params"])
    bound = lambda fan_in, fan_out: np.sqrt(6 / (fan_in + fan_out))
    attn = params["self_attn"]
    for name in "qkv":
        kernel = attn[f"{name}_proj"]["kernel"]
        assert np.abs(kernel).max() <= bound(d, 3 * d) and np.abs(kernel).max() > 0.8 * bound(d, 3 * d)
        assert not np.any(attn[f"{name}_proj"]["bias"])
    assert np.abs(attn["out_proj"]["kernel"]).max() <= bound(d, d) and not np.any(attn["out_proj"]["bias"])
    assert np.abs(params["linear1"]["kernel"]).max() <= bound(d, ffn)
    assert 0 < np.abs(params["linear1"]["bias"]).max() <= d ** -0.5
    assert 0 < np.abs(params["linear2"]["bias"]).max() <= ffn ** -0.5
    assert np.all(params["norm1"]["scale"] == 1) and not np.any(params["norm2"]["bias"])


def test_boxes_are_normalised_deterministic_in_eval_and_dropout_needs_a_key():
    model, params, pixels, ids = _init()
    apply = _apply()
    boxes = apply({"params": params}, pixels, ids)
    assert boxes.shape == (2, 4) and boxes.dtype == jnp.float32
    assert bool(jnp.all((boxes > 0) & (boxes < 1)))
    np.testing.assert_array_equal(boxes, apply({"params": params}, pixels, ids))
    train = lambda seed: apply({"params": params}, pixels, ids, deterministic=False,
                               rngs={"dropout": jax.random.key(seed)})
    assert not np.array_equal(train(0), boxes) and not np.array_equal(train(0), train(1))
    np.testing.assert_array_equal(train(0), train(0))
    features = jnp.zeros((2, 17, 32)), jnp.zeros((2, 16, 32)), jnp.ones((2, 34), bool)
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, *features, deterministic=False, method="fuse")


def test_masked_tokens_cannot_reach_the_reg_token():
    """Perturbing masked text or image features leaves the boxes unchanged; perturbing kept ones does not."""
    model, params, pixels, ids = _init()
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.standard_normal((2, 17, 32)), jnp.float32)
    text = jnp.asarray(rng.standard_normal((2, 16, 32)), jnp.float32)
    keep = np.ones((2, 1 + 16 + 17), bool)
    keep[:, 1 + 6:1 + 16] = False  # text padding
    keep[:, 1 + 16 + 1 + 12:] = False  # the last 4 patches
    fuse = lambda i, t: _apply()({"params": params}, i, t, jnp.asarray(keep), method="fuse")
    boxes = fuse(image, text)
    noisy_text = text.at[:, 6:].add(5.0)
    noisy_image = image.at[:, 13:].add(5.0)
    # Masked keys get exactly zero weight; 1e-6 only allows for a different matmul blocking.
    np.testing.assert_allclose(fuse(noisy_image, noisy_text), boxes, atol=1e-6, rtol=0)
    assert np.abs(fuse(image.at[:, 12:].add(5.0), text) - boxes).max() > 1e-3


def test_text_padding_mask_comes_from_token_id_zero_and_pixels_from_pad_mask():
    model, params, pixels, ids = _init()
    apply = _apply()
    base = apply({"params": params}, pixels, ids)
    pad = jnp.zeros((2, 32, 32), bool).at[:, :, 16:].set(True)
    assert np.abs(apply({"params": params}, pixels, ids, pad) - base).max() > 1e-4
    np.testing.assert_array_equal(apply({"params": params}, pixels, ids, jnp.zeros((2, 32, 32), bool)), base)
    unmasked = ids.at[:, 6:].set(1)  # id 0 is what marks padding; real tokens there change the boxes
    assert np.abs(apply({"params": params}, pixels, unmasked) - base).max() > 1e-4


def test_patch_mask_is_the_two_by_two_centre_rule():
    """16-px patches: bilinear to 14x14 samples rows/cols 16i+7, 16i+8; masked iff >= 3 of those 4 pad."""
    rng = np.random.default_rng(0)
    pad = rng.random((8, 224, 224)) < 0.5
    centre = pad.reshape(8, 14, 16, 14, 16)[:, :, 7:9][:, :, :, :, 7:9].sum(axis=(2, 4))
    np.testing.assert_array_equal(np.asarray(patch_padding_mask(pad, 14)), (centre >= 3).reshape(8, 196))


def test_blocks_after_the_last_feature_layer_are_never_run():
    config = dataclasses.replace(TINY, feature_layers=(0, 1, 3))
    model, params, pixels, ids = _init(config)
    apply = _apply(config)
    boxes = apply({"params": params}, pixels, ids)
    layers = params["clip"]["vision_model"]["encoder"]
    changed = jax.tree.map(lambda x: x + 1.0, {k: layers[k] for k in ("layers_4", "layers_5")})
    params = {**params, "clip": {**params["clip"], "vision_model": {**params["clip"]["vision_model"],
                                                                    "encoder": {**layers, **changed}}}}
    np.testing.assert_array_equal(apply({"params": params}, pixels, ids), boxes)


def test_gradients_reach_the_visual_positions_but_not_the_text_tower():
    model, params, pixels, ids = _init()
    grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, pixels, ids).sum()))(params)
    flat = traverse_util.flatten_dict(grads, sep="/")
    norm = lambda k: float(jnp.abs(flat[k]).max())
    assert norm("clip/vision_model/embeddings/position_embedding") > 0
    assert all(norm(k) == 0 for k in flat if k.startswith("clip/text_model/"))
    assert norm("text_proj/kernel") > 0 and norm("vl_pos_embed") > 0


def test_config_round_trips_and_rejects_bad_sizes():
    assert GroundingConfig.from_dict(TINY.to_dict()) == TINY
    assert default_feature_layers(12) == (0, 3, 7, 11) and default_feature_layers(24) == (0, 7, 15, 23)
    with pytest.raises(ValueError, match="feature_layers"):
        dataclasses.replace(TINY, feature_layers=(0, 6))
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(TINY, fusion_heads=5)
