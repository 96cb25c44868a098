"""FG-CLIP 1 against independent PyTorch computations (shared/research/fgclip.md section 1).

The CLIP parts are compared with transformers' `CLIPModel`; the long text path with a transformers
CLIP text model whose 248-row position table is the ori/res combination; the dense map with
transformers' vision layers (hidden_states[-2], then the value-path block written out here). fp32 with
matmuls at full precision (conftest): 1e-5 absolute is accumulation-order noise over two layers.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from vlalign_jax.models.clip import CLIP, ClipConfig, TextConfig, VisionConfig
from vlalign_jax.models.clip import abstract_params as clip_abstract_params
from vlalign_jax.models.fgclip import (FGCLIP, FgClipConfig, abstract_params, extend_text_positions,
                                       fgclip_config_from_clip, fgclip_params_from_clip)
from vlalign_jax.models.transformer import Encoder

TOL = 1e-5
EOS, BOS = 49407, 49406
EXTRA_KEYS = {"text_model.embeddings.position_embedding_res.weight",
              "text_model.embeddings.position_embedding_ori.weight", "text_filip_projection.weight",
              "logit_scale_finegraind", "logit_scale_hardneg"}


def _hf_config(text_positions: int):
    import transformers

    common = dict(hidden_act="quick_gelu", num_hidden_layers=2, num_attention_heads=2, hidden_size=64)
    return transformers.CLIPConfig(
        text_config=dict(intermediate_size=128, max_position_embeddings=text_positions, eos_token_id=EOS,
                         bos_token_id=BOS, pad_token_id=EOS, **common),
        vision_config=dict(intermediate_size=128, image_size=32, patch_size=8, **common),
        projection_dim=32)


@pytest.fixture(scope="module")
def reference():
    """A random tiny transformers CLIPModel, its state_dict plus random FG-CLIP extras, and our params."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vlalign_jax.converters import fgclip_hf

    torch.manual_seed(0)
    ref = transformers.CLIPModel(_hf_config(77)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move LayerNorms, biases and scales off their init values
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    rng = np.random.default_rng(2)
    state["text_model.embeddings.position_embedding_ori.weight"] = rng.normal(0, 0.02, (248, 64)).astype(np.float32)
    state["text_model.embeddings.position_embedding_res.weight"] = rng.normal(0, 0.02, (248, 64)).astype(np.float32)
    state["text_filip_projection.weight"] = rng.normal(0, 0.1, (32, 64)).astype(np.float32)
    state["logit_scale_finegraind"] = np.array(3.0, np.float32)
    state["logit_scale_hardneg"] = np.array(3.5, np.float32)
    config = fgclip_hf.config_from_json(ref.config.to_dict(), "test")
    flat = fgclip_hf.params_from_state(state, config, "test")
    return ref, state, FGCLIP(config), traverse_util.unflatten_dict(flat, sep="/")


def _tokens(batch: int, length: int, seed: int) -> np.ndarray:
    """Tokenizer-shaped rows: bos, text, eos, then padding with eos (FG-CLIP's pad = eos)."""
    rng = np.random.default_rng(seed)
    tokens = np.full((batch, length), EOS, np.int64)
    for row in range(batch):
        n = int(rng.integers(2, length))  # eos position; rows reach past keep_len (20) too
        tokens[row, 0] = BOS
        tokens[row, 1:n] = rng.integers(1, 49000, n - 1)
    return tokens


def _pixels(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 32, 32, 3)).astype(np.float32)


def _torch(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def test_short_text_and_image_features_match_transformers(reference):
    import torch

    ref, _, model, params = reference
    pixels, tokens = _pixels(), _tokens(3, 77, seed=3)
    with torch.no_grad():
        want_image = ref.get_image_features(pixel_values=_torch(pixels).permute(0, 3, 1, 2)).pooler_output
        want_text = ref.get_text_features(input_ids=_torch(tokens)).pooler_output
    got_image = model.apply({"params": params}, pixels, method="encode_image")
    got_text = model.apply({"params": params}, tokens.astype(np.int32), "short", method="encode_text")
    np.testing.assert_allclose(np.asarray(got_image), want_image.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(got_text), want_text.numpy(), rtol=0, atol=TOL)


def test_long_text_features_match_a_clip_text_model_with_the_ori_res_table(reference):
    """A transformers CLIP with 248 positions, its table = ori below 20 and res from 20, projected by
    text_filip_projection, is the reference's long walk written independently."""
    import torch
    import transformers

    _, state, model, params = reference
    long_ref = transformers.CLIPModel(_hf_config(248)).eval()
    rows = torch.arange(248)[:, None]
    combined = torch.where(rows < 20, _torch(state["text_model.embeddings.position_embedding_ori.weight"]),
                           _torch(state["text_model.embeddings.position_embedding_res.weight"]))
    long_state = {k: _torch(v) for k, v in state.items() if k not in EXTRA_KEYS}
    long_state["text_model.embeddings.position_embedding.weight"] = combined
    long_state["text_projection.weight"] = _torch(state["text_filip_projection.weight"])
    missing, unexpected = long_ref.load_state_dict(long_state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    tokens = _tokens(3, 248, seed=4)
    with torch.no_grad():
        want = long_ref.get_text_features(input_ids=_torch(tokens)).pooler_output.numpy()
    got = model.apply({"params": params}, tokens.astype(np.int32), "long", method="encode_text")
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOL)
    # The short walk of the same ids differs (other table and projection): the walk is not ignored.
    short = model.apply({"params": params}, tokens[:, :77].astype(np.int32), method="encode_text")
    assert np.abs(np.asarray(short) - want).max() > 1e-3


def test_dense_features_match_the_value_path_on_transformers_layers(reference):
    import torch

    ref, _, model, params = reference
    pixels = _pixels(seed=5)
    with torch.no_grad():
        vision = ref.vision_model
        out = vision(pixel_values=_torch(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
        x = out.hidden_states[-2]  # the input of the last encoder block
        last = vision.encoder.layers[-1]
        x = x + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))
        x = x + last.mlp(last.layer_norm2(x))
        want = ref.visual_projection(vision.post_layernorm(x[:, 1:])).reshape(2, 4, 4, 32).numpy()
    got = model.apply({"params": params}, pixels, method="encode_image_dense")
    assert got.shape == (2, 4, 4, 32)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOL)


def _extend_brute_force(table: np.ndarray, k: int) -> np.ndarray:
    """Spec 1.2 written out one row at a time."""
    length, _ = table.shape
    new = np.zeros((4 * length - 3 * k, table.shape[1]), table.dtype)
    for i in range(k):
        new[i] = table[i]
    for j in range(length - k - 1):
        for r in range(4):
            new[k + 4 * j + r] = (1 - r / 4) * table[k + j] + (r / 4) * table[k + j + 1]
    for r in range(4):
        new[4 * length - 3 * k - 4 + r] = table[length - 1] + (r / 4) * (table[length - 1] - table[length - 2])
    return new


@pytest.mark.parametrize("length,keep", [(77, 20), (16, 5)])
def test_extend_text_positions_matches_the_spec_bit_for_bit(length, keep):
    table = np.random.default_rng(6).normal(0, 0.02, (length, 24)).astype(np.float32)
    want = _extend_brute_force(table.astype(np.float32), keep)
    got = extend_text_positions(table, keep)
    assert got.shape == (4 * length - 3 * keep, 24) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(extend_text_positions(jnp.asarray(table), keep)), want)
    # bf16 stays bf16, rounded per operation as torch does it (so not bitwise to a float64-rounded loop).
    # Each op rounds to 8 bits of mantissa: a few half-ulps of the largest value (rows extrapolate to 1.75x).
    table16 = table.astype(ml_dtypes.bfloat16)
    bf16 = extend_text_positions(table16, keep)
    assert bf16.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(bf16.astype(np.float32), _extend_brute_force(table16.astype(np.float32), keep),
                               rtol=0, atol=4 * 2 ** -8 * float(np.abs(table).max()))


def _tiny_clip_config() -> ClipConfig:
    return ClipConfig(32, VisionConfig(32, 8, 64, 2, 2, 128), TextConfig(width=64, layers=2, heads=2, mlp_dim=128))


def test_fgclip_params_from_clip_follows_the_reference_init():
    clip_config = _tiny_clip_config()
    clip_params = _random_like(clip_abstract_params(clip_config), seed=10)
    before = jax.tree.map(np.copy, clip_params)
    config = fgclip_config_from_clip(clip_config)
    assert (config.long_context_length, config.keep_len, config.text.pool) == (248, 20, "eos")
    params = fgclip_params_from_clip(clip_params)

    flat, clip_flat = (traverse_util.flatten_dict(t, sep="/") for t in (params, clip_params))
    shapes = traverse_util.flatten_dict(abstract_params(config), sep="/")
    assert set(flat) == set(shapes) and all(flat[k].shape == shapes[k].shape for k in flat)
    for key, value in clip_flat.items():  # every CLIP leaf carried over unchanged
        np.testing.assert_array_equal(flat[key], value)
    extended = _extend_brute_force(clip_flat["text_model/position_embedding"], 20)
    np.testing.assert_array_equal(flat["text_model/position_embedding_ori"], extended)
    np.testing.assert_array_equal(flat["text_model/position_embedding_res"], extended)
    np.testing.assert_array_equal(flat["text_filip_projection/kernel"], clip_flat["text_projection/kernel"])
    assert flat["logit_scale_fine_grained"] == flat["logit_scale_hard_negative"] == clip_flat["logit_scale"]
    jax.tree.map(np.testing.assert_array_equal, clip_params, before)  # the input tree is not modified
    assert "position_embedding_ori" not in clip_params["text_model"]

    # Before any fine-tuning, FG-CLIP's short walk is the CLIP it came from.
    pixels, tokens = _pixels(seed=7), _tokens(2, 77, seed=7).astype(np.int32)
    ours = FGCLIP(config).apply({"params": params}, tokens, method="encode_text")
    eos_pooled = dataclasses.replace(clip_config, text=dataclasses.replace(clip_config.text, pool="eos"))
    clip = CLIP(eos_pooled).apply({"params": clip_params}, tokens, method="encode_text")
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(clip))
    np.testing.assert_array_equal(
        np.asarray(FGCLIP(config).apply({"params": params}, pixels, method="encode_image")),
        np.asarray(CLIP(clip_config).apply({"params": clip_params}, pixels, method="encode_image")))


def test_fgclip_names_are_clip_names_plus_five():
    config = fgclip_config_from_clip(_tiny_clip_config())
    ours = set(traverse_util.flatten_dict(abstract_params(config), sep="/"))
    clip = set(traverse_util.flatten_dict(clip_abstract_params(_tiny_clip_config()), sep="/"))
    assert ours - clip == {"text_model/position_embedding_ori", "text_model/position_embedding_res",
                           "text_filip_projection/kernel", "logit_scale_fine_grained",
                           "logit_scale_hard_negative"}
    assert clip <= ours


def _random_like(abstract, seed: int):
    """Random arrays shaped like an abstract tree (eval_shape output): no slow eager or compiled init."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), abstract)


def test_call_and_input_checks():
    config = fgclip_config_from_clip(_tiny_clip_config())
    model = FGCLIP(config)
    boxed_abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)),
                                    jnp.zeros((2, 77), jnp.int32), jnp.zeros((2, 248), jnp.int32))["params"]
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed_abstract), sep="/")
    assert tuple(specs["text_model/position_embedding_res"]) == (None, "embed")
    params = _random_like(nn.meta.unbox(boxed_abstract), seed=11)
    image, short, long, scale = jax.jit(model.apply)({"params": params}, _pixels(2),
                                                     _tokens(2, 77, 8).astype(np.int32),
                                                     _tokens(2, 248, 9).astype(np.int32))
    for e in (image, short, long):
        np.testing.assert_allclose(np.linalg.norm(np.asarray(e), axis=-1), 1.0, rtol=1e-5)
    assert float(scale) == float(params["logit_scale"])
    # Boxed (logically partitioned) params work for the dense path too, and so does remat.
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    boxed = jax.tree.map(lambda b, v: b.replace_boxed(v) if is_box(b) else v, boxed_abstract, params, is_leaf=is_box)
    dense = FGCLIP(config, remat="full").apply({"params": boxed}, _pixels(2), method="encode_image_dense")
    np.testing.assert_array_equal(np.asarray(dense),
                                  np.asarray(model.apply({"params": params}, _pixels(2), method="encode_image_dense")))
    with pytest.raises(ValueError, match=r"<= 77\] on the short walk"):
        model.apply({"params": params}, jnp.zeros((1, 78), jnp.int32), method="encode_text")
    with pytest.raises(ValueError, match=r"<= 248\] on the long walk"):
        model.apply({"params": params}, jnp.zeros((1, 249), jnp.int32), "long", method="encode_text")
    with pytest.raises(ValueError, match="unknown text walk"):
        model.apply({"params": params}, jnp.zeros((1, 8), jnp.int32), "box", method="encode_text")
    with pytest.raises(ValueError, match="pools text at the first eos"):
        FgClipConfig(text=TextConfig(pool="argmax"))


def test_encoder_return_penultimate_is_off_by_default_and_adds_nothing():
    x = jax.random.normal(jax.random.key(1), (2, 5, 64))
    plain, both = Encoder(3, 2, 128), Encoder(3, 2, 128, return_penultimate=True)
    abstract = jax.eval_shape(plain.init, jax.random.key(0), x)
    assert jax.tree.structure(jax.eval_shape(both.init, jax.random.key(0), x)) == jax.tree.structure(abstract)
    params = _random_like(abstract, seed=12)
    out = plain.apply(params, x)
    final, penultimate = both.apply(params, x)
    np.testing.assert_array_equal(np.asarray(final), np.asarray(out))
    two_layers = {"params": {k: v for k, v in params["params"].items() if k != "layers_2"}}
    np.testing.assert_array_equal(np.asarray(penultimate), np.asarray(Encoder(2, 2, 128).apply(two_layers, x)))
