"""SigLIP 2 NaFlex against transformers' `Siglip2Model` (random weights, no downloads).

Tolerance: 1e-5 absolute in fp32 (conftest runs matmuls at full precision). The remaining differences
are summation order (separable vs one-matmul resize, attention kernels), measured at <= 4e-6 on
features of magnitude ~3 and <= 5e-7 on logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vlalign_jax.converters import siglip2_hf  # noqa: E402
from vlalign_jax.data.naflex import NAFLEX_BUCKETS, naflex_preprocess  # noqa: E402
from vlalign_jax.models.siglip import (SigLIP, SiglipConfig, SiglipTextConfig,  # noqa: E402
                                       abstract_params, key_mask, resize_position_embeddings, sigmoid_logits)
from vlalign_jax.models.siglip_configs import get_siglip_config  # noqa: E402
from vlalign_jax.models.transformer import Encoder  # noqa: E402

ATOL = 1e-5
# (height, width) of raw images: square, 1:5, 10:1, 1:500 (a one-row grid at 128 patches), 50:1, odd.
# No image is one patch wide: there torch's CPU antialiased resize is wrong (see the resize test).
IMAGE_SIZES = [(64, 64), (40, 200), (300, 30), (4, 2000), (2000, 40), (33, 47)]


def hf_model(config: SiglipConfig, seed: int = 0):
    """A transformers Siglip2Model of `config`'s size; every weight (biases, norms, scalars too) random."""
    torch.manual_seed(seed)
    hf_config = transformers.Siglip2Config(**siglip2_hf.config_to_json(config, "float32"))
    ref = transformers.Siglip2Model(hf_config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        ref.logit_scale.fill_(2.3)
        ref.logit_bias.fill_(-1.7)
    return ref


def ours_from(ref, config: SiglipConfig) -> dict:
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    return traverse_util.unflatten_dict(siglip2_hf.params_from_hf(state, config, "reference"), sep="/")


def naflex_batch(patch_size: int, max_num_patches: int, sizes=IMAGE_SIZES, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    examples = [naflex_preprocess(im, patch_size, max_num_patches) for im in images]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def hf_forward(ref, batch, token_ids, attention_mask=None):
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a))
    with torch.no_grad():
        out = ref(input_ids=t(token_ids).long(), attention_mask=t(attention_mask), pixel_values=t(batch["pixel_values"]),
                  pixel_attention_mask=t(batch["pixel_attention_mask"]), spatial_shapes=t(batch["spatial_shapes"]).long())
    return {"image": out.vision_model_output.pooler_output.numpy(), "text": out.text_model_output.pooler_output.numpy(),
            "logits": out.logits_per_image.numpy()}


def make_forward(model: SigLIP, via_call: bool = False):
    """Raw features and logits. By default each tower is its own jit (the text one compiles once for
    every bucket) and the logits are formed outside; `via_call` jits one call whose logits come from
    `SigLIP.__call__`'s normalised outputs instead (a second pass through both towers)."""
    if via_call:
        def forward(params, pixel_values, pixel_attention_mask, spatial_shapes, token_ids, attention_mask=None):
            def run(m):
                return {"image": m.encode_image(pixel_values, pixel_attention_mask, spatial_shapes),
                        "text": m.encode_text(token_ids, attention_mask),
                        "logits": sigmoid_logits(*m(pixel_values, pixel_attention_mask, spatial_shapes, token_ids,
                                                    attention_mask))}
            return model.apply({"params": params}, method=run)
        return jax.jit(forward)

    encode_image = jax.jit(lambda params, *args: model.apply({"params": params}, *args, method="encode_image"))
    encode_text = jax.jit(lambda params, *args: model.apply({"params": params}, *args, method="encode_text"))

    def forward(params, pixel_values, pixel_attention_mask, spatial_shapes, token_ids, attention_mask=None):
        image = np.asarray(encode_image(params, pixel_values, pixel_attention_mask, spatial_shapes))
        text = np.asarray(encode_text(params, token_ids, attention_mask))
        unit = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)
        return {"image": image, "text": text,
                "logits": sigmoid_logits(unit(image), unit(text), params["logit_scale"], params["logit_bias"])}
    return forward


def assert_close(ours: dict, theirs: dict):
    for key in theirs:
        np.testing.assert_allclose(np.asarray(ours[key]), theirs[key], rtol=0, atol=ATOL, err_msg=key)


@pytest.fixture(scope="module")
def tiny():
    config = get_siglip_config("tiny")
    ref = hf_model(config)
    return config, ref, ours_from(ref, config), make_forward(SigLIP(config))


# ---- position embeddings ------------------------------------------------------------------------

def test_position_resize_matches_torch_and_pil_antialiased_bilinear():
    """Every grid up to 40 rows, up- and downsampling, against F.interpolate(bilinear, antialias=True)
    and PIL's float bilinear resize (the filter torch's antialias copies; big_vision's jax.image.resize
    agrees with both).

    torch's CPU kernel is wrong for a one-column output of another height (torch 2.14: every row gets
    row 0's filter, e.g. a 16 x 16 ramp resized to 4 x 1 is constant), so one-patch-wide images are
    compared with PIL only; transformers on CPU gives such images wrong position embeddings.
    """
    grid, width, max_num_patches = 16, 8, 1024
    table = np.random.default_rng(0).standard_normal((grid * grid, width)).astype(np.float32)
    shapes = np.array([(h, w) for h in range(1, 41) for w in (1, 2, 3, 5, 7, 8, 15, 16, 17, 24, 31, 33, 64)
                       if h * w <= max_num_patches], np.int32)
    resize = jax.jit(resize_position_embeddings, static_argnums=2)
    ours = np.concatenate([np.asarray(resize(table, shapes[i:i + 128], max_num_patches))
                           for i in range(0, len(shapes), 128)])
    source = torch.from_numpy(table).reshape(grid, grid, width).permute(2, 0, 1)[None]
    for (h, w), got in zip(shapes, ours):
        np.testing.assert_array_equal(got[h * w:], np.broadcast_to(got[0], got[h * w:].shape))
        if w == 1 or (h, w) in ((1, 64), (7, 33), (33, 31)):
            # PIL sums its taps in float32 in its own order: 1e-5 covers that rounding.
            want = np.stack([np.asarray(Image.fromarray(table.reshape(grid, grid, width)[..., c], mode="F")
                                        .resize((int(w), int(h)), Image.Resampling.BILINEAR))
                             for c in range(width)], axis=-1)
            np.testing.assert_allclose(got[:h * w], want.reshape(h * w, width), rtol=0, atol=1e-5,
                                       err_msg=f"{h}x{w} vs PIL")
        if w > 1 or h == grid:
            want = torch.nn.functional.interpolate(source, size=(int(h), int(w)), mode="bilinear",
                                                   align_corners=False, antialias=True)
            np.testing.assert_allclose(got[:h * w], want[0].reshape(width, h * w).T.numpy(), rtol=0, atol=1e-6,
                                       err_msg=f"{h}x{w} vs torch")


# ---- parity with transformers ---------------------------------------------------------------------

@pytest.mark.parametrize("max_num_patches", NAFLEX_BUCKETS)
def test_tiny_matches_hf_at_every_bucket(tiny, max_num_patches):
    config, ref, params, forward = tiny
    batch = naflex_batch(config.vision.patch_size, max_num_patches)
    assert len({tuple(s) for s in batch["spatial_shapes"]}) == len(IMAGE_SIZES)  # one grid per aspect ratio
    token_ids = np.random.default_rng(1).integers(0, config.text.vocab_size, (4, config.text.context_length))
    ours = forward(params, batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"], token_ids)
    assert_close(ours, hf_forward(ref, batch, token_ids))


def test_tiny_text_attention_mask_and_call_match_hf(tiny):
    """A padded text batch with its mask; the logits here come from `SigLIP.__call__`."""
    config, ref, params, _ = tiny
    batch = naflex_batch(config.vision.patch_size, 128, sizes=IMAGE_SIZES[:2])
    token_ids = np.random.default_rng(2).integers(0, config.text.vocab_size, (3, 12))
    attention_mask = (np.arange(12)[None] < np.array([[12], [5], [1]])).astype(np.int32)
    ours = make_forward(SigLIP(config), via_call=True)(params, batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"], token_ids,
                   attention_mask)
    assert_close(ours, hf_forward(ref, batch, token_ids, attention_mask))


def test_base_patch16_is_siglip2_base_naflex_and_matches_hf():
    """The released size, once: config fields, parameter count, one forward."""
    config = get_siglip_config("base-patch16")
    hf_config = transformers.Siglip2Config(**siglip2_hf.config_to_json(config, "float32"))
    # The fields of google/siglip2-base-patch16-naflex's config.json.
    common = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    for tower, fields in (("vision_config", dict(num_patches=256, patch_size=16, num_channels=3)),
                          ("text_config", dict(vocab_size=256000, max_position_embeddings=64, projection_size=768))):
        for name, value in {**common, **fields}.items():
            assert getattr(getattr(hf_config, tower), name) == value, (tower, name)
    with torch.device("meta"):
        ref = transformers.Siglip2Model(hf_config)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config)))
    assert ours == sum(p.numel() for p in ref.parameters()) == 375_234_050
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, p in ref.named_parameters():
        value = torch.empty(p.shape).uniform_(-0.035, 0.035, generator=generator)  # std 0.02, cheaper than normal
        state[key] = value + 1.0 if "norm" in key and key.endswith(".weight") else value
    ref.load_state_dict(state, assign=True, strict=True)
    ref.text_model.embeddings.position_ids = torch.arange(config.text.context_length)[None]  # not saved
    ref.eval()
    params = ours_from(ref, config)
    batch = naflex_batch(16, 128, sizes=[(300, 200), (90, 500)])
    token_ids = np.random.default_rng(3).integers(0, config.text.vocab_size, (2, config.text.context_length))
    ours = make_forward(SigLIP(config))(params, batch["pixel_values"], batch["pixel_attention_mask"],
                                        batch["spatial_shapes"], token_ids)
    assert_close(ours, hf_forward(ref, batch, token_ids))


# ---- jit behaviour, precision, remat --------------------------------------------------------------

def test_spatial_shapes_are_data_under_jit(tiny):
    config, _, params, _ = tiny
    traces = []

    @jax.jit
    def encode(params, batch):
        traces.append(1)
        return SigLIP(config).apply({"params": params}, batch["pixel_values"], batch["pixel_attention_mask"],
                                    batch["spatial_shapes"], method="encode_image")

    a = encode(params, naflex_batch(4, 128, sizes=[(64, 64), (40, 200)]))
    b = encode(params, naflex_batch(4, 128, sizes=[(200, 40), (30, 90)]))
    assert len(traces) == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(tiny):
    config, _, params, forward32 = tiny
    batch = naflex_batch(config.vision.patch_size, 128)  # the shapes of a parity test: no new fp32 compile
    token_ids = np.random.default_rng(1).integers(0, config.text.vocab_size, (4, config.text.context_length))
    args = (batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"], token_ids)
    fp32 = forward32(params, *args)
    img16, txt16, scale, _ = jax.jit(SigLIP(config, dtype=jnp.bfloat16).apply)({"params": params}, *args)
    assert img16.dtype == jnp.float32 and scale.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    # Unit-norm embeddings: bf16's 8-bit mantissa keeps cosine agreement well above 0.99.
    unit = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    assert float(jnp.min(jnp.sum(unit(fp32["image"]) * img16, -1))) > 0.99
    assert float(jnp.min(jnp.sum(unit(fp32["text"]) * txt16, -1))) > 0.99


def test_remat_changes_neither_outputs_nor_gradients():
    """The masked encoder (one layer, so compiles stay short) with and without rematerialisation."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    mask = key_mask(jnp.array([[1] * 8, [1] * 3 + [0] * 5]))
    make = lambda r: Encoder(1, 2, 64, "gelu_pytorch_tanh", layer_norm_eps=1e-6, remat=r)
    params = jax.jit(make("none").init)(jax.random.key(1), x, mask)

    def loss(params, x, r):
        return jnp.sum(jnp.sin(make(r).apply(params, x, mask)))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    (l0, g0), (l1, g1) = grad(params, x, "none"), grad(params, x, "full")
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---- errors ---------------------------------------------------------------------------------------

def test_wrong_inputs_and_configs_are_named(tiny):
    config, _, params, _ = tiny
    model = SigLIP(config)
    batch = naflex_batch(4, 128, sizes=IMAGE_SIZES[:1])
    with pytest.raises(ValueError, match=r"pixel_values \[batch, max_num_patches, 48\]"):
        model.apply({"params": params}, batch["pixel_values"][..., :47], batch["pixel_attention_mask"],
                    batch["spatial_shapes"], method="encode_image")
    with pytest.raises(ValueError, match=r"token_ids must be \[batch, <= 16\]"):
        model.apply({"params": params}, np.zeros((1, 17), np.int32), method="encode_text")
    with pytest.raises(ValueError, match="not a square grid"):
        SiglipConfig(vision=config.vision.__class__(num_patches=200))
    with pytest.raises(ValueError, match="projection_dim=512 must equal vision.width=768"):
        SiglipConfig(text=SiglipTextConfig(projection_dim=512))
    assert nn.meta.unbox(params)["logit_scale"].shape == ()
