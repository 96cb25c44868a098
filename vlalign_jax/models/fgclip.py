"""FG-CLIP 1 (Xie et al. 2025, arXiv 2505.05071): CLIP with a long-text path and dense image features.

The reference is `360CVGroup/FG-CLIP@v1.0:fgclip/model/clip_strc/{fgclip,modeling_clip}.py`; notes in
`shared/research/fgclip.md` section 1. Relative to our `CLIP` (same parameter names, so the CLIP
converter rules apply unchanged) it adds:

- two 248-row text position tables: the long path adds `position_embedding_ori[i]` for `i < keep_len`
  (20) and `position_embedding_res[i]` beyond; the short path adds the 77-row CLIP table;
- `text_filip_projection` for long text (short text, box captions and hard negatives use
  `text_projection`);
- `logit_scale_fine_grained` and `logit_scale_hard_negative` (the reference's `logit_scale_finegraind`
  and `logit_scale_hardneg`) for the region and hard-negative losses;
- dense features: the last vision block re-run on its own input with attention replaced by the
  per-token value path `out_proj(v_proj(layer_norm1(x)))`, then post-LN and the visual projection.

Text is pooled at the first end-of-text token: FG-CLIP forces eos = pad = 49407.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlalign_jax.models.clip import ClipConfig, TextConfig, VisionEmbeddings, pool_positions
from vlalign_jax.models.transformer import Encoder, Mlp, dense, layer_norm

Dtype = Any
WALKS = ("short", "long")
KEEP_LEN = 20  # positions the long path takes from `position_embedding_ori` (reference: hard-coded 20)
EOS_TOKEN_ID = 49407


@dataclasses.dataclass(frozen=True)
class FgClipConfig(ClipConfig):
    """CLIP's hyperparameters plus the long text path.

    `long_context_length` is 4 * context_length - 3 * keep_len (248 for CLIP's 77), the rows of both
    long tables; the reference hard-codes 248 and 20. Pooling must be at the first `eos_token_id`.
    """

    text: TextConfig = TextConfig(pool="eos", eos_token_id=EOS_TOKEN_ID)
    long_context_length: int = 4 * 77 - 3 * KEEP_LEN
    keep_len: int = KEEP_LEN

    def __post_init__(self) -> None:
        if self.text.pool != "eos":
            raise ValueError(f"FG-CLIP pools text at the first eos token; got text.pool={self.text.pool!r}")
        if self.logit_bias_init is not None:
            raise ValueError("FG-CLIP has no logit_bias")
        if not 0 <= self.keep_len <= self.long_context_length:
            raise ValueError(f"keep_len {self.keep_len} must lie in [0, {self.long_context_length}]")


def fgclip_config_from_clip(config: ClipConfig, keep_len: int = KEEP_LEN) -> FgClipConfig:
    """The FG-CLIP architecture grown from a CLIP one: long tables of 4L - 3k rows, eos pooling."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(ClipConfig)}
    fields["text"] = dataclasses.replace(config.text, pool="eos", eos_token_id=EOS_TOKEN_ID)
    return FgClipConfig(**fields, long_context_length=4 * config.text.context_length - 3 * keep_len,
                        keep_len=keep_len)


# ---- vision ---------------------------------------------------------------------------------------

class _ValuePathAttention(nn.Module):
    """The attention block of the last layer with q/k and softmax removed: out_proj(v_proj(x))."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        v = dense(width, ("embed", "heads"), "v_proj", self.dtype, self.param_dtype)(x)
        return dense(width, ("heads", "embed"), "out_proj", self.dtype, self.param_dtype)(v)


class _ValuePathLayer(nn.Module):
    """`EncoderLayer`'s submodule names, applied with a layer's params: x + attn_v(ln1(x)), + mlp(ln2)."""

    mlp_dim: int
    act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ln = lambda name: layer_norm(self.layer_norm_eps, name, self.dtype, self.param_dtype)
        x = x + _ValuePathAttention(self.dtype, self.param_dtype, name="self_attn")(ln("layer_norm1")(x))
        return x + Mlp(self.mlp_dim, self.act, self.dtype, self.param_dtype, name="mlp")(ln("layer_norm2")(x))


class FgClipVisionTransformer(nn.Module):
    """Our `VisionTransformer` (same names) that can also return FG-CLIP's dense token features."""

    config: ClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, pixels: jax.Array, dense_tokens: bool = False, both: bool = False) -> Any:
        """-> [batch, width] post-LN class token, or [batch, num_patches, width] with `dense_tokens`,
        or both (one pass through the tower) with `both`."""
        cfg, vc = self.config, self.config.vision
        x = VisionEmbeddings(vc, self.dtype, self.param_dtype, name="embeddings")(pixels)
        x = layer_norm(cfg.layer_norm_eps, "pre_layernorm", self.dtype, self.param_dtype)(x)
        encoder = Encoder(vc.layers, vc.heads, vc.mlp_dim, cfg.act, False, cfg.layer_norm_eps,
                          self.dtype, self.param_dtype, self.remat, return_penultimate=True, name="encoder")
        x, last_input = encoder(x)
        post_layernorm = layer_norm(cfg.layer_norm_eps, "post_layernorm", self.dtype, self.param_dtype)
        if not (dense_tokens or both):
            return post_layernorm(x[:, 0])
        # Reference `forward_without_attn`: the last block's own weights on its own input (hidden_states[-2]).
        last_params = encoder.variables["params"][f"layers_{vc.layers - 1}"]
        value_path = _ValuePathLayer(vc.mlp_dim, cfg.act, cfg.layer_norm_eps, self.dtype, self.param_dtype)
        tokens = value_path.apply({"params": last_params}, last_input)
        dense_out = post_layernorm(tokens[:, 1:])
        return (post_layernorm(x[:, 0]), dense_out) if both else dense_out


# ---- text -----------------------------------------------------------------------------------------

class FgClipTextTransformer(nn.Module):
    """CLIP's causal text tower with three position tables; `walk` picks short or long positions."""

    config: FgClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, token_ids: jax.Array, walk: str = "short") -> jax.Array:  # -> [batch, width]
        cfg, tc = self.config, self.config.text
        if walk not in WALKS:
            raise ValueError(f"unknown text walk {walk!r}; expected one of {WALKS}")
        max_length = tc.context_length if walk == "short" else cfg.long_context_length
        if token_ids.ndim != 2 or token_ids.shape[1] > max_length:
            raise ValueError(f"token_ids must be [batch, <= {max_length}] on the {walk} walk, got {token_ids.shape}")
        length = token_ids.shape[1]
        tok = nn.Embed(tc.vocab_size, tc.width, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                   ("vocab", "embed")),
                       name="token_embedding")
        table = lambda name, rows: self.param(
            name, nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
            (rows, tc.width), self.param_dtype)
        short = table("position_embedding", tc.context_length)
        ori = table("position_embedding_ori", cfg.long_context_length)
        res = table("position_embedding_res", cfg.long_context_length)
        if walk == "short":
            pos = short[:length]
        else:  # reference: ori * mask1 + res * mask2, i.e. ori below keep_len and res from there on
            pos = jnp.where(jnp.arange(length)[:, None] < cfg.keep_len, ori[:length], res[:length])
        x = tok(token_ids) + pos.astype(self.dtype)
        x = Encoder(tc.layers, tc.heads, tc.mlp_dim, cfg.act, True, cfg.layer_norm_eps,
                    self.dtype, self.param_dtype, self.remat, name="encoder")(x)
        x = layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype, self.param_dtype)(x)
        return x[jnp.arange(x.shape[0]), pool_positions(token_ids, tc.pool, tc.eos_token_id)]


# ---- the model ------------------------------------------------------------------------------------

class FGCLIP(nn.Module):
    """FG-CLIP 1. `__call__` returns the L2-normalised image, short-text and long-text embeddings and
    `logit_scale`; the two fine-grained scales are parameters read by the losses.

    `remat` (none, full, save_dots) rematerialises the encoder layers of both towers.
    """

    config: FgClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self) -> None:
        cfg = self.config
        self.vision_model = FgClipVisionTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        self.text_model = FgClipTextTransformer(cfg, self.dtype, self.param_dtype, self.remat)
        projection = lambda name: dense(cfg.embed_dim, ("embed", None), name, self.dtype, self.param_dtype,
                                        use_bias=False)
        self.visual_projection = projection("visual_projection")
        self.text_projection = projection("text_projection")
        self.text_filip_projection = projection("text_filip_projection")
        scale = lambda name: self.param(name, nn.initializers.constant(cfg.logit_scale_init), (), self.param_dtype)
        # The reference's __init__ starts all three at logit_scale_init_value (its training script then
        # resets the two fine-grained ones to the loaded logit_scale; see fgclip_params_from_clip).
        self.logit_scale = scale("logit_scale")
        self.logit_scale_fine_grained = scale("logit_scale_fine_grained")
        self.logit_scale_hard_negative = scale("logit_scale_hard_negative")

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """[batch, H, W, 3] normalized pixels -> [batch, embed_dim] projected, unnormalized."""
        return self.visual_projection(self.vision_model(pixels))

    def encode_text(self, token_ids: jax.Array, walk: str = "short") -> jax.Array:
        """[batch, length] ids -> [batch, embed_dim], unnormalized.

        `short` (<= 77 tokens): short positions + `text_projection` (also box captions and hard
        negatives); `long` (<= 248 tokens): ori/res positions + `text_filip_projection`.
        """
        pooled = self.text_model(token_ids, walk)
        return (self.text_projection if walk == "short" else self.text_filip_projection)(pooled)

    def encode_image_dense(self, pixels: jax.Array) -> jax.Array:
        """[batch, H, W, 3] -> [batch, h, w, embed_dim] patch features, unnormalized, row-major grid."""
        tokens = self.visual_projection(self.vision_model(pixels, dense_tokens=True))  # [batch, h*w, embed_dim]
        side = self.config.vision.image_size // self.config.vision.patch_size
        return tokens.reshape(tokens.shape[0], side, side, tokens.shape[-1])

    def encode_image_and_dense(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`encode_image` and `encode_image_dense` from one pass through the vision tower."""
        pooled, tokens = self.vision_model(pixels, both=True)
        side = self.config.vision.image_size // self.config.vision.patch_size
        tokens = self.visual_projection(tokens)
        return self.visual_projection(pooled), tokens.reshape(tokens.shape[0], side, side, tokens.shape[-1])

    def __call__(self, pixels: jax.Array, token_ids: jax.Array,
                 long_token_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        normalize = lambda e: e / jnp.linalg.norm(e.astype(jnp.float32), axis=-1, keepdims=True)
        image = normalize(self.encode_image(pixels))
        short = normalize(self.encode_text(token_ids, "short"))
        long = normalize(self.encode_text(long_token_ids, "long"))
        return image, short, long, self.logit_scale


def abstract_params(config: FgClipConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """The parameter tree's shapes and dtypes, without allocating it."""
    model = FGCLIP(config, param_dtype=param_dtype)
    pixels = jax.ShapeDtypeStruct((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
    short = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
    long = jax.ShapeDtypeStruct((1, config.long_context_length), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), pixels, short, long)
    return nn.meta.unbox(variables["params"])


# ---- growing FG-CLIP from CLIP --------------------------------------------------------------------

def extend_text_positions(params_or_table: Any, keep: int = KEEP_LEN) -> Any:
    """FG-CLIP's long-table init (reference `resize_postion_embeding`), bit for bit.

    A table P [L, D] gives P' [4L - 3k, D] (k = `keep`): rows < k copied; 4x linear interpolation
    P'[k + 4j + r] = (4 - r)/4 P[k + j] + r/4 P[k + j + 1] for j < L - k - 1; the last 4 rows linearly
    extrapolated P'[4L - 3k - 4 + r] = P[L-1] + r/4 (P[L-1] - P[L-2]). Arithmetic is in P's dtype and in
    the reference's order ((3 * a) / 4 + b / 4), which powers of two keep exact either way.
    A parameter tree (with `text_model/position_embedding`) instead comes back as a copy whose
    `position_embedding_ori` and `position_embedding_res` both hold P', as the reference sets them.
    """
    if isinstance(params_or_table, Mapping):
        tree = _copy_tree(nn.meta.unbox(params_or_table))
        new = extend_text_positions(tree["text_model"]["position_embedding"], keep)
        tree["text_model"]["position_embedding_ori"] = new
        tree["text_model"]["position_embedding_res"] = _fresh(new)
        return tree
    table = params_or_table
    xp = np if isinstance(table, np.ndarray) else jnp
    length, width = table.shape
    if not 0 <= keep <= length - 2:
        raise ValueError(f"keep={keep} needs a table of at least keep + 2 rows, got {length}")
    a, b = table[keep:length - 1], table[keep + 1:length]  # neighbours, [L - k - 1, D] each
    interpolated = xp.stack([a, (3 * a) / 4 + b / 4, (2 * a) / 4 + (2 * b) / 4, a / 4 + (3 * b) / 4], axis=1)
    last, step = table[length - 1], table[length - 1] - table[length - 2]
    extrapolated = xp.stack([last + (r * step) / 4 for r in range(4)])
    out = xp.concatenate([table[:keep], interpolated.reshape(-1, width), extrapolated], axis=0)
    return out.astype(table.dtype)


def fgclip_params_from_clip(clip_params: Mapping, keep: int = KEEP_LEN) -> dict:
    """An FG-CLIP parameter tree from a CLIP one, as the reference's `--from_openai` start does.

    Long tables from `extend_text_positions`, `text_filip_projection` copied from `text_projection`
    (`copy_weight`), and both fine-grained scales set to the CLIP `logit_scale` (train_fgclip.py
    re-creates them as `ones([]) * logit_scale` after loading). Use `fgclip_config_from_clip` for
    the matching config.
    """
    tree = nn.meta.unbox(clip_params)
    if "logit_bias" in tree:
        raise ValueError("this CLIP has a logit_bias; FG-CLIP has none")
    tree = extend_text_positions(tree, keep)
    tree["text_filip_projection"] = jax.tree.map(_fresh, tree["text_projection"])
    tree["logit_scale_fine_grained"] = _fresh(tree["logit_scale"])
    tree["logit_scale_hard_negative"] = _fresh(tree["logit_scale"])
    return tree


def _copy_tree(tree: Mapping) -> dict:
    """A fresh nest of dicts over the same leaves, so edits never reach the caller's tree."""
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _fresh(leaf: Any) -> Any:
    """A numpy leaf copied (so tied entries never share memory); jax arrays are immutable already."""
    return leaf.copy() if isinstance(leaf, np.ndarray) else leaf
