"""SigLIP 2 dual encoder with the NaFlex vision tower (Tschannen et al. 2025, arXiv:2502.14786).

NaFlex keeps each image's aspect ratio: an image arrives as up to `max_num_patches` flattened patches
(`vlalign_jax.data.naflex`), a `pixel_attention_mask` marking the real ones and its patch grid
`spatial_shapes = (h_patches, w_patches)`. The learned square position grid is resized to every
image's own grid with torch's antialiased bilinear filter (what transformers' `Siglip2Model` does with
`F.interpolate(..., antialias=True)`), written here as one matrix product whose weights are computed
from the grid sizes inside jit, so per-image shapes are data and only `max_num_patches` is static.
Padded patches are masked as attention keys; the image embedding is a multihead attention pooling
head (MAP) over the tokens. The text tower is bidirectional and pools the last position, as SigLIP
was trained (padding to the full context). Logits are `exp(logit_scale) * cos + logit_bias`.

Parameter names follow transformers' `Siglip2Model` (`vision_model/head/attention/q_proj`,
`text_model/embeddings/token_embedding`), so `converters/siglip2_hf.py` is renames plus transposes
and the MAP head's fused `in_proj` split.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlalign_jax.models.transformer import ACTIVATIONS, Attention, Encoder, Mlp, dense, layer_norm

Dtype = Any



@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """NaFlex ViT: `num_patches` is the learned position grid (a square, 256 = 16 x 16)."""

    patch_size: int = 16
    num_patches: int = 256
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    num_channels: int = 3

    @property
    def position_grid(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.num_channels


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig:
    """Bidirectional text transformer; `projection_dim` is the output of its `head` Dense.

    The token ids are metadata for tokenizers and config.json; None means not recorded.
    """

    vocab_size: int = 256000
    context_length: int = 64
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    projection_dim: int = 768
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Whole-model hyperparameters. The logit inits are big_vision's: t = 10 (log 10), b = -10."""

    vision: SiglipVisionConfig = SiglipVisionConfig()
    text: SiglipTextConfig = SiglipTextConfig()
    act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    logit_scale_init: float = math.log(10.0)
    logit_bias_init: float = -10.0

    def __post_init__(self) -> None:
        v, t = self.vision, self.text
        problems = []
        if v.position_grid ** 2 != v.num_patches:
            problems.append(f"vision.num_patches={v.num_patches} is not a square grid")
        for name, tower in (("vision", v), ("text", t)):
            if tower.width % tower.heads:
                problems.append(f"{name}.width={tower.width} is not divisible by {name}.heads={tower.heads}")
        if t.projection_dim != v.width:
            problems.append(f"text.projection_dim={t.projection_dim} must equal vision.width={v.width} "
                            "(the image embedding is the MAP head output, width wide)")
        if self.act not in ACTIVATIONS:
            problems.append(f"unknown act {self.act!r}; expected one of {sorted(ACTIVATIONS)}")
        if problems:
            raise ValueError("invalid SiglipConfig: " + "; ".join(problems))

    @property
    def embed_dim(self) -> int:
        return self.vision.width

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SiglipConfig:
        d = dict(d)
        return cls(vision=SiglipVisionConfig(**d.pop("vision")), text=SiglipTextConfig(**d.pop("text")), **d)


# ---- NaFlex position embeddings --------------------------------------------------------------------

def antialiased_bilinear_weights(out_index: jax.Array, out_size: jax.Array, in_size: int) -> jax.Array:
    """Row `out_index` of torch's antialiased bilinear resize matrix from `in_size` to `out_size`.

    `out_index` and `out_size` are integer arrays of one shape (traced values are fine); returns
    `[..., in_size]` float32 weights summing to 1. Follows torch's `_compute_weights_aa`
    (align_corners=False): scale = in/out; when downsampling the triangle filter is widened by the
    scale (the antialiasing), when upsampling it is plain half-pixel-centre bilinear with edge clamp.
    """
    out_size = out_size.astype(jnp.float32)
    scale = in_size / out_size
    support = jnp.where(scale >= 1.0, scale, 1.0)
    inv_scale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale * (out_index.astype(jnp.float32) + 0.5)
    first = jnp.maximum(jnp.trunc(center - support + 0.5), 0.0)[..., None]
    stop = jnp.minimum(jnp.trunc(center + support + 0.5), in_size)[..., None]
    taps = jnp.arange(in_size, dtype=jnp.float32)
    weights = jnp.maximum(1.0 - jnp.abs((taps - center[..., None] + 0.5) * inv_scale[..., None]), 0.0)
    weights = jnp.where((taps >= first) & (taps < stop), weights, 0.0)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def resize_position_embeddings(table: jax.Array, spatial_shapes: jax.Array, max_num_patches: int) -> jax.Array:
    """Learned `[grid*grid, width]` table -> `[batch, max_num_patches, width]` per-image positions.

    Slot p < h*w holds the grid resized to `(h, w) = spatial_shapes[b]` at (p // w, p % w); the slots
    after the image repeat slot 0, as transformers does. Each slot is a fixed mix of the table's rows,
    with weights = the outer product of the row and column filters, so the whole resize is a
    `[batch, max_num_patches, grid*grid] @ [grid*grid, width]` matmul, run in fp32 at full precision.
    Requires h*w <= max_num_patches (the preprocessing guarantees it; it cannot be checked in jit).
    """
    grid = math.isqrt(table.shape[0])
    # [batch, 1]; an empty grid (a padding example) is treated as 1 x 1 rather than dividing by zero.
    heights, widths = (jnp.maximum(spatial_shapes[:, i:i + 1], 1) for i in (0, 1))
    slots = jnp.arange(max_num_patches)[None, :]
    valid = slots < heights * widths
    rows = jnp.where(valid, slots // widths, 0)
    cols = jnp.where(valid, slots % widths, 0)
    row_weights = antialiased_bilinear_weights(rows, jnp.broadcast_to(heights, rows.shape), grid)
    col_weights = antialiased_bilinear_weights(cols, jnp.broadcast_to(widths, cols.shape), grid)
    mix = (row_weights[..., :, None] * col_weights[..., None, :]).reshape(*rows.shape, grid * grid)
    return jnp.einsum("bpk,kc->bpc", mix, table.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)


def key_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """`[batch, length]` 1 = real token -> `[batch, 1, 1, length]` bool mask over attention keys."""
    if attention_mask is None:
        return None
    return attention_mask.astype(bool)[:, None, None, :]


# ---- towers ---------------------------------------------------------------------------------------

class VisionEmbeddings(nn.Module):
    """Linear patch embedding (with bias) + the position grid resized to each image."""

    config: SiglipVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, spatial_shapes: jax.Array) -> jax.Array:
        vc = self.config
        patches = dense(vc.width, (None, "embed"), "patch_embedding", self.dtype,
                        self.param_dtype)(pixel_values.astype(self.dtype))
        table = nn.Embed(vc.num_patches, vc.width, dtype=jnp.float32, param_dtype=self.param_dtype,
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(vc.width ** -0.5),
                                                                     (None, "embed")),
                         name="position_embedding")(jnp.arange(vc.num_patches))
        positions = resize_position_embeddings(table, spatial_shapes, pixel_values.shape[1])
        return patches + positions.astype(self.dtype)


class MultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned probe attends over the tokens, then `a + mlp(layernorm(a))`.

    `queries` replaces the probe (FG-CLIP 2's dense head attends from every token); the probe
    parameter exists either way so checkpoints keep one layout.
    """

    num_heads: int
    mlp_dim: int
    act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, queries: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                                 (None, None, "embed")),
                           (1, 1, width), self.param_dtype)
        if queries is None:
            queries = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0], 1, width))
        a = Attention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="attention")(queries, mask, context=x)
        h = layer_norm(self.layer_norm_eps, "layernorm", self.dtype, self.param_dtype)(a)
        return a + Mlp(self.mlp_dim, self.act, self.dtype, self.param_dtype, name="mlp")(h)


class VisionTransformer(nn.Module):
    """Embeddings, masked encoder, post-LN on every token, MAP head. Returns (tokens, pooled)."""

    config: SiglipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array,
                 spatial_shapes: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg, vc = self.config, self.config.vision
        batch = pixel_values.shape[0]
        if (pixel_values.ndim != 3 or pixel_values.shape[-1] != vc.patch_dim
                or pixel_attention_mask.shape != pixel_values.shape[:2] or spatial_shapes.shape != (batch, 2)):
            raise ValueError(f"expected pixel_values [batch, max_num_patches, {vc.patch_dim}], "
                             "pixel_attention_mask [batch, max_num_patches] and spatial_shapes [batch, 2]; got "
                             f"{pixel_values.shape}, {pixel_attention_mask.shape}, {spatial_shapes.shape}")
        x = VisionEmbeddings(vc, self.dtype, self.param_dtype, name="embeddings")(pixel_values, spatial_shapes)
        mask = key_mask(pixel_attention_mask)
        x = Encoder(vc.layers, vc.heads, vc.mlp_dim, cfg.act, False, cfg.layer_norm_eps, self.dtype,
                    self.param_dtype, self.remat, name="encoder")(x, mask)
        x = layer_norm(cfg.layer_norm_eps, "post_layernorm", self.dtype, self.param_dtype)(x)
        pooled = MultiheadAttentionPoolingHead(vc.heads, vc.mlp_dim, cfg.act, cfg.layer_norm_eps, self.dtype,
                                               self.param_dtype, name="head")(x, mask)
        return x, pooled[:, 0]


class TextEmbeddings(nn.Module):
    """Token embedding + learned absolute positions (the first `length` rows)."""

    config: SiglipTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, token_ids: jax.Array) -> jax.Array:
        tc = self.config
        embed = lambda n, name, axes: nn.Embed(
            n, tc.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(tc.width ** -0.5), axes))
        tokens = embed(tc.vocab_size, "token_embedding", ("vocab", "embed"))(token_ids)
        return tokens + embed(tc.context_length, "position_embedding", (None, "embed"))(
            jnp.arange(token_ids.shape[1]))


class TextTransformer(nn.Module):
    """Embeddings, bidirectional encoder, final LN, last position -> `head`. Returns (tokens, pooled)."""

    config: SiglipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, token_ids: jax.Array, attention_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        cfg, tc = self.config, self.config.text
        if token_ids.ndim != 2 or token_ids.shape[1] > tc.context_length:
            raise ValueError(f"token_ids must be [batch, <= {tc.context_length}], got {token_ids.shape}")
        if attention_mask is not None and attention_mask.shape != token_ids.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} must match token_ids {token_ids.shape}")
        x = TextEmbeddings(tc, self.dtype, self.param_dtype, name="embeddings")(token_ids)
        x = Encoder(tc.layers, tc.heads, tc.mlp_dim, cfg.act, False, cfg.layer_norm_eps, self.dtype,
                    self.param_dtype, self.remat, name="encoder")(x, key_mask(attention_mask))
        x = layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype, self.param_dtype)(x)
        # SigLIP pools the last position (a pad token when padded to the context, as in training).
        pooled = dense(tc.projection_dim, ("embed", None), "head", self.dtype, self.param_dtype)(x[:, -1])
        return x, pooled


class SigLIP(nn.Module):
    """The dual encoder. `__call__` returns both L2-normalised (fp32) embeddings, scale and bias.

    `remat` (none, full, save_dots) rematerialises the encoder layers of both towers.
    """

    config: SiglipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self) -> None:
        cfg = self.config
        self.vision_model = VisionTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        self.text_model = TextTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init), (),
                                      self.param_dtype)
        self.logit_bias = self.param("logit_bias", nn.initializers.constant(cfg.logit_bias_init), (),
                                     self.param_dtype)

    def encode_image(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array,
                     spatial_shapes: jax.Array) -> jax.Array:
        """NaFlex patches `[batch, max_num_patches, p*p*3]` -> `[batch, width]`, unnormalised."""
        return self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes)[1]

    def encode_text(self, token_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """`[batch, length]` ids -> `[batch, projection_dim]`, unnormalised. SigLIP is trained on text
        padded to the full context with no mask; pass `attention_mask` only to mirror a caller that does."""
        return self.text_model(token_ids, attention_mask)[1]

    def __call__(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array, spatial_shapes: jax.Array,
                 token_ids: jax.Array, attention_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        image = self.encode_image(pixel_values, pixel_attention_mask, spatial_shapes)
        text = self.encode_text(token_ids, attention_mask)
        normalize = lambda e: e / jnp.linalg.norm(e.astype(jnp.float32), axis=-1, keepdims=True)
        return normalize(image), normalize(text), self.logit_scale, self.logit_bias


def sigmoid_logits(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array,
                   logit_bias: jax.Array) -> jax.Array:
    """`[images, texts]` logits `exp(scale) * image @ text.T + bias` in fp32; sigmoid gives probabilities."""
    logits = image_embeds.astype(jnp.float32) @ text_embeds.astype(jnp.float32).T
    return logits * jnp.exp(jnp.asarray(logit_scale, jnp.float32)) + jnp.asarray(logit_bias, jnp.float32)


def abstract_params(config: SiglipConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """The parameter tree's shapes and dtypes, without allocating it."""
    model = SigLIP(config, param_dtype=param_dtype)
    n = config.vision.num_patches
    args = (jax.ShapeDtypeStruct((1, n, config.vision.patch_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, n), jnp.int32), jax.ShapeDtypeStruct((1, 2), jnp.int32),
            jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32))
    variables = jax.eval_shape(model.init, jax.random.key(0), *args)
    return nn.meta.unbox(variables["params"])
