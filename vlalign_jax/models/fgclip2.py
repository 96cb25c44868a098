"""FG-CLIP 2 (Xie et al. 2025, arXiv 2510.10921): SigLIP 2 NaFlex plus long text and dense features.

The reference is `360CVGroup/FG-CLIP@main:fgclip2/model/strcs/{modeling_fgclip2,fgclip2}.py`; notes in
`shared/research/fgclip.md` section 2. Relative to our `SigLIP` (same parameter names, so the
SigLIP 2 converter rules apply unchanged) it adds:

- two `long_context_length`-row (196) text position tables, `text_model/position_embedding_ori` and
  `text_model/position_embedding_res`: the long walk adds `ori[i]` for `i < keep_len` (20) and
  `res[i]` beyond (the reference's `mask1`/`mask2`);
- two model-level text heads (Dense D -> D with bias) that replace `text_model/head`:
  `boxtext_head` on the `box` walk (short positions) and `longtext_head` on the `long` walk;
- `dense_feature_head`, a second MAP head (same layout as `vision_model/head`) run with every
  token as a query (its `probe` is unused) over the masked tokens, then `a + mlp(layernorm(a))`:
  per-patch features `[batch, max_num_patches, width]`, neither projected nor normalised;
- `logit_scale_fine_grained` and `logit_scale_hard_negative` (the reference's `logit_scale_finegraind`
  / `logit_scale_hardneg`, 0-d, ln 100 as train_fgclip2.py sets them) for the region and
  hard-negative losses.

| walk    | positions                  | head                | length          |
|---------|----------------------------|---------------------|-----------------|
| `short` | `position_embedding` (64)  | `text_model/head`   | <= 64           |
| `box`   | `position_embedding` (64)  | `boxtext_head`      | <= 64           |
| `long`  | ori < keep_len, res beyond | `longtext_head`     | <= 196          |

Text pools the last position (after `final_layer_norm`), as SigLIP 2 does; the encoder is bidirectional.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlalign_jax.models.fgclip import _copy_tree, _fresh, extend_text_positions
from vlalign_jax.models.siglip import (
    MultiheadAttentionPoolingHead,
    SiglipConfig,
    VisionTransformer,
    key_mask,
)
from vlalign_jax.models.transformer import Encoder, dense, layer_norm

Dtype = Any
WALKS = ("short", "box", "long")
KEEP_LEN = 20  # reference: Fgclip2TextConfig.keep_len (and hard-coded 20 in resize_postion_embeding)
LONG_CONTEXT_LENGTH = 196  # reference: Fgclip2TextConfig.longtext_len = 4 * 64 - 3 * 20
FINE_GRAINED_SCALE_INIT = math.log(100.0)  # train_fgclip2.py `log_scale` = 4.6052


@dataclasses.dataclass(frozen=True)
class Fgclip2Config(SiglipConfig):
    """SigLIP 2 NaFlex hyperparameters plus the long text path.

    `long_context_length` rows in both long tables; the reference builds them as 4L - 3k from the
    L-row short table (`fgclip2_config_from_siglip`), but any length >= keep_len is representable.
    The extra text heads are width -> width, so text.projection_dim must equal text.width.
    """

    keep_len: int = KEEP_LEN
    long_context_length: int = LONG_CONTEXT_LENGTH
    fine_grained_scale_init: float = FINE_GRAINED_SCALE_INIT

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if not 0 <= self.keep_len <= self.long_context_length:
            problems.append(f"keep_len {self.keep_len} must lie in [0, long_context_length={self.long_context_length}]")
        if self.text.projection_dim != self.text.width:
            problems.append(f"text.projection_dim={self.text.projection_dim} must equal text.width={self.text.width} "
                            "(longtext_head and boxtext_head are width -> width and stand in for text_model/head)")
        if problems:
            raise ValueError("invalid Fgclip2Config: " + "; ".join(problems))


def fgclip2_config_from_siglip(config: SiglipConfig, keep_len: int = KEEP_LEN) -> Fgclip2Config:
    """The FG-CLIP 2 architecture grown from a SigLIP 2 one: long tables of 4L - 3k rows."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(SiglipConfig)}
    return Fgclip2Config(**fields, keep_len=keep_len,
                         long_context_length=4 * config.text.context_length - 3 * keep_len)


# ---- text -----------------------------------------------------------------------------------------

class _TextEmbeddings(nn.Module):
    """SigLIP's `embeddings` names (token_embedding, position_embedding); returns tokens and the short table."""

    config: Fgclip2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, token_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        tc = self.config.text
        embed = lambda n, name, axes: nn.Embed(
            n, tc.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(tc.width ** -0.5), axes))
        tokens = embed(tc.vocab_size, "token_embedding", ("vocab", "embed"))(token_ids)
        short = embed(tc.context_length, "position_embedding", (None, "embed"))(jnp.arange(tc.context_length))
        return tokens, short


class Fgclip2TextTransformer(nn.Module):
    """SigLIP's text tower with the two long tables; returns the pooled last position.

    `text_model/head` is applied on the `short` walk only (the reference's text transformer skips it
    for `box` and `long`, whose model-level heads replace it).
    """

    config: Fgclip2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, token_ids: jax.Array, walk: str = "short", attention_mask: jax.Array | None = None
                 ) -> jax.Array:
        cfg, tc = self.config, self.config.text
        if walk not in WALKS:
            raise ValueError(f"unknown text walk {walk!r}; expected one of {WALKS}")
        max_length = cfg.long_context_length if walk == "long" else tc.context_length
        if token_ids.ndim != 2 or token_ids.shape[1] > max_length:
            raise ValueError(f"token_ids must be [batch, <= {max_length}] on the {walk} walk, got {token_ids.shape}")
        if attention_mask is not None and attention_mask.shape != token_ids.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} must match token_ids {token_ids.shape}")
        length = token_ids.shape[1]
        tokens, short = _TextEmbeddings(cfg, self.dtype, self.param_dtype, name="embeddings")(token_ids)
        table = lambda name: self.param(
            name, nn.with_logical_partitioning(nn.initializers.normal(tc.width ** -0.5), (None, "embed")),
            (cfg.long_context_length, tc.width), self.param_dtype)
        ori, res = table("position_embedding_ori"), table("position_embedding_res")
        if walk == "long":  # reference: ori * mask1 + res * mask2
            pos = jnp.where(jnp.arange(length)[:, None] < cfg.keep_len, ori[:length], res[:length])
        else:
            pos = short[:length]
        x = tokens + pos.astype(self.dtype)
        x = Encoder(tc.layers, tc.heads, tc.mlp_dim, cfg.act, False, cfg.layer_norm_eps, self.dtype,
                    self.param_dtype, self.remat, name="encoder")(x, key_mask(attention_mask))
        x = layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype, self.param_dtype)(x)
        pooled = x[:, -1]  # the last position, usually a pad token (SigLIP 2 convention)
        head = dense(tc.projection_dim, ("embed", None), "head", self.dtype, self.param_dtype)
        if walk == "short" or self.is_initializing():
            short_pooled = head(pooled)
            if walk == "short":
                return short_pooled
        return pooled


# ---- the model ------------------------------------------------------------------------------------

class FGCLIP2(nn.Module):
    """FG-CLIP 2. `__call__` returns the L2-normalised image, short-text and long-text embeddings,
    `logit_scale` and `logit_bias` (SigLIP's sigmoid logits: `siglip.sigmoid_logits`).

    `remat` (none, full, save_dots) rematerialises the encoder layers of both towers.
    """

    config: Fgclip2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self) -> None:
        cfg, vc = self.config, self.config.vision
        self.vision_model = VisionTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        self.text_model = Fgclip2TextTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        text_head = lambda name: dense(cfg.text.width, ("embed", None), name, self.dtype, self.param_dtype)
        self.longtext_head = text_head("longtext_head")
        self.boxtext_head = text_head("boxtext_head")
        self.dense_feature_head = MultiheadAttentionPoolingHead(vc.heads, vc.mlp_dim, cfg.act, cfg.layer_norm_eps,
                                                                self.dtype, self.param_dtype)
        scalar = lambda name, value: self.param(name, nn.initializers.constant(value), (), self.param_dtype)
        self.logit_scale = scalar("logit_scale", cfg.logit_scale_init)
        self.logit_bias = scalar("logit_bias", cfg.logit_bias_init)
        self.logit_scale_fine_grained = scalar("logit_scale_fine_grained", cfg.fine_grained_scale_init)
        self.logit_scale_hard_negative = scalar("logit_scale_hard_negative", cfg.fine_grained_scale_init)

    # -- images --
    def get_image_features(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array,
                           spatial_shapes: jax.Array) -> jax.Array:
        """NaFlex patches `[batch, max_num_patches, p*p*3]` -> `[batch, width]` (vision MAP head), unnormalised."""
        return self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes)[1]

    def _dense(self, tokens: jax.Array, pixel_attention_mask: jax.Array) -> jax.Array:
        return self.dense_feature_head(tokens, key_mask(pixel_attention_mask), queries=tokens)

    def get_image_dense_features(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array,
                                 spatial_shapes: jax.Array) -> jax.Array:
        """-> `[batch, max_num_patches, width]`: `dense_feature_head` with every token as a query over the
        unpadded tokens, then `a + mlp(layernorm(a))`. Rows `< h*w` are the image's (h, w) grid,
        row-major; padded rows hold values too (they attend to real tokens) and should be ignored.
        Unprojected and unnormalised, as the reference's `get_image_dense_feature`."""
        tokens, _ = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes)
        return self._dense(tokens, pixel_attention_mask)

    def get_image_features_and_dense(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array,
                                     spatial_shapes: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`get_image_features` and `get_image_dense_features` from one pass through the vision tower."""
        tokens, pooled = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes)
        return pooled, self._dense(tokens, pixel_attention_mask)

    # -- text --
    def get_text_features(self, token_ids: jax.Array, walk_type: str = "short",
                          attention_mask: jax.Array | None = None) -> jax.Array:
        """`[batch, length]` ids -> `[batch, width]`, unnormalised.

        `short` (<= context_length, captions): short positions + `text_model/head`; `box` (<=
        context_length, region captions and hard negatives): short positions + `boxtext_head`; `long`
        (<= long_context_length): ori/res positions + `longtext_head`. Training pads to the full length
        with no mask; pass `attention_mask` only to mirror a caller that does.
        """
        pooled = self.text_model(token_ids, walk_type, attention_mask)
        if walk_type == "box":
            return self.boxtext_head(pooled)
        if walk_type == "long":
            return self.longtext_head(pooled)
        return pooled

    # SigLIP-compatible names, so code written against `SigLIP` runs unchanged.
    def encode_image(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array,
                     spatial_shapes: jax.Array) -> jax.Array:
        return self.get_image_features(pixel_values, pixel_attention_mask, spatial_shapes)

    def encode_text(self, token_ids: jax.Array, attention_mask: jax.Array | None = None,
                    walk_type: str = "short") -> jax.Array:
        return self.get_text_features(token_ids, walk_type, attention_mask)

    def __call__(self, pixel_values: jax.Array, pixel_attention_mask: jax.Array, spatial_shapes: jax.Array,
                 token_ids: jax.Array, long_token_ids: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        tokens, image = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes)
        short = self.get_text_features(token_ids, "short")
        long = self.get_text_features(long_token_ids, "long")
        if self.is_initializing():  # create the parameters the two walks above do not touch
            self.get_text_features(token_ids, "box")
            self._dense(tokens, pixel_attention_mask)
            _ = (self.logit_scale_fine_grained, self.logit_scale_hard_negative)
        normalize = lambda e: e / jnp.linalg.norm(e.astype(jnp.float32), axis=-1, keepdims=True)
        return normalize(image), normalize(short), normalize(long), self.logit_scale, self.logit_bias


def abstract_params(config: Fgclip2Config, param_dtype: Dtype = jnp.float32) -> dict:
    """The parameter tree's shapes and dtypes, without allocating it."""
    model = FGCLIP2(config, param_dtype=param_dtype)
    n = config.vision.num_patches
    args = (jax.ShapeDtypeStruct((1, n, config.vision.patch_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, n), jnp.int32), jax.ShapeDtypeStruct((1, 2), jnp.int32),
            jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32),
            jax.ShapeDtypeStruct((1, config.long_context_length), jnp.int32))
    variables = jax.eval_shape(model.init, jax.random.key(0), *args)
    return nn.meta.unbox(variables["params"])


# ---- growing FG-CLIP 2 from SigLIP 2 --------------------------------------------------------------

def fgclip2_params_from_siglip(siglip_params: Mapping, keep: int = KEEP_LEN) -> dict:
    """An FG-CLIP 2 parameter tree from a SigLIP 2 one, as the reference's `--from_siglip2` start does.

    Long tables from the short one by FG-CLIP's 4x rule (`fgclip.extend_text_positions`, the
    reference's `resize_postion_embeding`; both tables start equal), `longtext_head` and
    `boxtext_head` copied from `text_model/head` (`copy_weight`), `dense_feature_head` copied from
    `vision_model/head` (`copy_dense_feature_head`), and both fine-grained scales ln 100
    (train_fgclip2.py's `log_scale`). Use `fgclip2_config_from_siglip` for the matching config.
    """
    tree = _copy_tree(nn.meta.unbox(siglip_params))
    text = tree["text_model"]
    table = text["embeddings"]["position_embedding"]["embedding"]
    long_table = extend_text_positions(table, keep)
    text["position_embedding_ori"] = long_table
    text["position_embedding_res"] = _fresh(long_table)
    copy = lambda sub: jax.tree.map(_fresh, _copy_tree(sub))
    tree["longtext_head"] = copy(text["head"])
    tree["boxtext_head"] = copy(text["head"])
    tree["dense_feature_head"] = copy(tree["vision_model"]["head"])
    scale_dtype = np.asarray(tree["logit_scale"]).dtype
    xp = np if isinstance(tree["logit_scale"], np.ndarray) else jnp
    tree["logit_scale_fine_grained"] = xp.asarray(FINE_GRAINED_SCALE_INIT, scale_dtype)
    tree["logit_scale_hard_negative"] = xp.asarray(FINE_GRAINED_SCALE_INIT, scale_dtype)
    return tree
