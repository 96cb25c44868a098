"""CLIP dual encoder (Radford et al. 2021): a ViT image tower and a causal text transformer.

Both towers end in a bias-free projection to a shared embedding space; `logit_scale` is the learned
log inverse temperature. Parameter names follow Hugging Face's `CLIPModel`
(`vision_model/encoder/layers_3/self_attn/q_proj`), with `pre_layernorm` spelled correctly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlalign_jax.models.transformer import Encoder, dense, layer_norm

Dtype = Any
TEXT_POOLS = ("argmax", "eos")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """ViT image tower: `image_size`/`patch_size` fix the token grid, `width` the residual size."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Causal text transformer; `pool` says where the sentence embedding is read.

    `argmax` takes the position of the largest token id (OpenAI/open_clip: the end-of-text token has
    the largest id); `eos` takes the first position holding `eos_token_id` (newer HF configs).
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    pool: str = "argmax"
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Whole-model hyperparameters; everything a converter needs to rebuild the module."""

    embed_dim: int = 512
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    logit_scale_init: float = math.log(1 / 0.07)
    # SigLIP-style training adds a learned logit bias; None means the model has no such parameter.
    logit_bias_init: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClipConfig":
        d = dict(d)
        return cls(vision=VisionConfig(**d.pop("vision")), text=TextConfig(**d.pop("text")), **d)


class VisionTransformer(nn.Module):
    """Patchify, prepend the class token, add positions, pre-LN, encoder, LN of the class token."""

    config: ClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:  # pixels: [batch, H, W, 3] -> [batch, width]
        cfg, vc = self.config, self.config.vision
        x = VisionEmbeddings(vc, self.dtype, self.param_dtype, name="embeddings")(pixels)
        x = layer_norm(cfg.layer_norm_eps, "pre_layernorm", self.dtype, self.param_dtype)(x)
        x = Encoder(vc.layers, vc.heads, vc.mlp_dim, cfg.act, False, cfg.layer_norm_eps,
                    self.dtype, self.param_dtype, self.remat, name="encoder")(x)
        return layer_norm(cfg.layer_norm_eps, "post_layernorm", self.dtype, self.param_dtype)(x[:, 0])


class VisionEmbeddings(nn.Module):
    """Conv patch embedding (no bias) + class embedding + learned absolute positions."""

    config: VisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        vc = self.config
        if pixels.shape[1:] != (vc.image_size, vc.image_size, 3):
            raise ValueError(f"pixels must be [batch, {vc.image_size}, {vc.image_size}, 3], got {pixels.shape}")
        p = vc.patch_size
        patches = nn.Conv(
            vc.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
            param_dtype=self.param_dtype, name="patch_embedding",
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                     (None, None, None, "embed")),
        )(pixels.astype(self.dtype))
        patches = patches.reshape(patches.shape[0], -1, vc.width)
        init = nn.initializers.normal(vc.width ** -0.5)
        cls = self.param("class_embedding", nn.with_logical_partitioning(init, ("embed",)),
                         (vc.width,), self.param_dtype)
        num_positions = (vc.image_size // p) ** 2 + 1
        pos = self.param("position_embedding", nn.with_logical_partitioning(init, (None, "embed")),
                         (num_positions, vc.width), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (patches.shape[0], 1, vc.width))
        return jnp.concatenate([cls, patches], axis=1) + pos.astype(self.dtype)


class TextTransformer(nn.Module):
    """Token + position embeddings, causal encoder, final LN, pooled at the end-of-text token."""

    config: ClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, token_ids: jax.Array) -> jax.Array:  # [batch, length] -> [batch, width]
        cfg, tc = self.config, self.config.text
        if token_ids.ndim != 2 or token_ids.shape[1] > tc.context_length:
            raise ValueError(f"token_ids must be [batch, <= {tc.context_length}], got {token_ids.shape}")
        length = token_ids.shape[1]
        tok = nn.Embed(tc.vocab_size, tc.width, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                   ("vocab", "embed")),
                       name="token_embedding")
        pos = self.param("position_embedding",
                         nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
                         (tc.context_length, tc.width), self.param_dtype)
        x = tok(token_ids) + pos[:length].astype(self.dtype)
        x = Encoder(tc.layers, tc.heads, tc.mlp_dim, cfg.act, True, cfg.layer_norm_eps,
                    self.dtype, self.param_dtype, self.remat, name="encoder")(x)
        x = layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype, self.param_dtype)(x)
        return x[jnp.arange(x.shape[0]), pool_positions(token_ids, tc.pool, tc.eos_token_id)]


def pool_positions(token_ids: jax.Array, pool: str, eos_token_id: int) -> jax.Array:
    """Index of the token whose hidden state is the sentence embedding, per row."""
    if pool == "argmax":
        return jnp.argmax(token_ids, axis=-1)
    if pool == "eos":
        return jnp.argmax(token_ids == eos_token_id, axis=-1)
    raise ValueError(f"unknown text pool {pool!r}; expected one of {TEXT_POOLS}")


class CLIP(nn.Module):
    """The dual encoder. `__call__` returns both L2-normalised embeddings and the logit scale.

    `remat` (none, full, save_dots) rematerialises the encoder layers of both towers.
    """

    config: ClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self) -> None:
        cfg = self.config
        self.vision_model = VisionTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        self.text_model = TextTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        self.visual_projection = dense(cfg.embed_dim, ("embed", None), "visual_projection", self.dtype,
                                       self.param_dtype, use_bias=False)
        self.text_projection = dense(cfg.embed_dim, ("embed", None), "text_projection", self.dtype,
                                     self.param_dtype, use_bias=False)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init),
                                      (), self.param_dtype)
        if cfg.logit_bias_init is not None:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(cfg.logit_bias_init),
                                         (), self.param_dtype)

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """[batch, H, W, 3] normalized pixels -> [batch, embed_dim] projected, unnormalized."""
        return self.visual_projection(self.vision_model(pixels))

    def encode_text(self, token_ids: jax.Array) -> jax.Array:
        """[batch, length] int32 token ids -> [batch, embed_dim] projected, unnormalized."""
        return self.text_projection(self.text_model(token_ids))

    def __call__(self, pixels: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        image = self.encode_image(pixels)
        text = self.encode_text(token_ids)
        normalize = lambda e: e / jnp.linalg.norm(e.astype(jnp.float32), axis=-1, keepdims=True)
        return normalize(image), normalize(text), self.logit_scale


def abstract_params(config: ClipConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """The parameter tree's shapes and dtypes, without allocating it."""
    model = CLIP(config, param_dtype=param_dtype)
    pixels = jax.ShapeDtypeStruct((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), pixels, tokens)
    return nn.meta.unbox(variables["params"])
