"""CLIP-VG (Xiao et al., IEEE TMM 2023, arXiv 2305.08685): visual grounding on frozen CLIP towers.

Reference: `linhuixiao/CLIP-VG@8116ebd models/clip_vg.py::ML_CLIP_VG` and `models/vl_transformer.py`;
notes in shared/research/clipvg.md section 1. The forward pass:

- image: the CLIP ViT's raw residual stream after blocks `feature_layers` ((0, 3, 7, 11) for B/16),
  CLS kept, neither `ln_post` nor `proj` applied, concatenated on channels -> `ml_visu_proj` (§1.3);
- text: the causal CLIP text tower, `ln_final` and `text_projection` on every token -> `text_proj` (§1.4);
- fusion: [REG, text tokens, CLS + patches] through a 6-layer post-norm DETR encoder (ReLU FFN,
  dropout 0.1) whose learned positions are re-added to queries and keys, never values, in every layer;
  keys are masked where token id == 0 and on patches that are mostly image padding (§1.5);
- head: the REG output through a 3-layer ReLU MLP and a sigmoid: (cx, cy, w, h) in [0, 1] of the
  padded square canvas (§1.6).

`params["clip"]` is a complete parameter tree of our `CLIP` (same names), so CLIP checkpoints load into
it unchanged; CLIP-VG trains only its visual position table (`FREEZE`, §1.7). The reference's unused
`visu_proj` is kept: its checkpoints hold it and its parameter counts include it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vlalign_jax.models.clip import ClipConfig, VisionEmbeddings
from vlalign_jax.models.clip_configs import CLIP_CONFIGS
from vlalign_jax.models.transformer import REMAT_POLICIES, Encoder, EncoderLayer, dense, layer_norm

Dtype = Any

# Frozen parameters (regexes for `config.optim.freeze`, matched with re.fullmatch against slash-joined
# paths): all of CLIP except the visual position table, which the reference re-enables (§1.1, §1.7).
FREEZE: tuple[str, ...] = (r"clip/(?!vision_model/embeddings/position_embedding$).+",)
# Trainable in the reference but never used by its forward pass: it gets no gradient, so torch's AdamW
# never touches it (not even weight decay). Freezing it here reproduces that; it still counts as trainable
# in `parameter_counts`, as it does in the reference's count.
UNUSED: tuple[str, ...] = (r"visu_proj/.+",)


def trainable(path: str) -> bool:
    """Whether the reference trains the parameter at slash-joined `path` (`clip/vision_model/...`)."""
    return not any(re.fullmatch(p, path) for p in FREEZE)


def default_feature_layers(num_layers: int) -> tuple[int, ...]:
    """The reference's extraction points: (0, 3, 7, 11) for 12 blocks, (0, 7, 15, 23) for 24."""
    if num_layers % 3:
        raise ValueError(f"no default feature layers for a {num_layers}-block ViT; pass feature_layers")
    third = num_layers // 3
    return (0, third - 1, 2 * third - 1, num_layers - 1)


@dataclasses.dataclass(frozen=True)
class GroundingConfig:
    """CLIP-VG sizes: the CLIP towers plus the fusion encoder and head (reference defaults for B/16).

    `visu_proj_in_dim` sizes the unused `visu_proj` (512 for every released size: the ViT-L/14 counts
    of §1.7 only add up with a 512-wide input). `stop_text_gradient` cuts the backward pass at the
    frozen text tower's output, which changes no gradient of a trainable parameter (§1.1).
    """

    clip: ClipConfig = CLIP_CONFIGS["ViT-B-16"]
    feature_layers: tuple[int, ...] = (0, 3, 7, 11)
    hidden_dim: int = 512
    fusion_layers: int = 6
    fusion_heads: int = 8
    fusion_mlp_dim: int = 2048
    dropout: float = 0.1
    head_layers: int = 3
    visu_proj_in_dim: int = 512
    layer_norm_eps: float = 1e-5
    stop_text_gradient: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_layers", tuple(int(i) for i in self.feature_layers))
        layers = self.clip.vision.layers
        if not self.feature_layers or not all(0 <= i < layers for i in self.feature_layers):
            raise ValueError(f"feature_layers {self.feature_layers} must be block indices of a {layers}-block ViT")
        if self.hidden_dim % self.fusion_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by fusion_heads {self.fusion_heads}")

    @property
    def grid(self) -> int:
        return self.clip.vision.image_size // self.clip.vision.patch_size

    @property
    def num_tokens(self) -> int:
        """Fusion sequence length: REG + text context + CLS + patches (275 for B/16 at 224 px)."""
        return 1 + self.clip.text.context_length + 1 + self.grid ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GroundingConfig":
        d = dict(d)
        return cls(clip=ClipConfig.from_dict(d.pop("clip")), **d)


GROUNDING_CONFIGS: dict[str, GroundingConfig] = {
    "ViT-B-16": GroundingConfig(),
    "ViT-B-32": GroundingConfig(clip=CLIP_CONFIGS["ViT-B-32"]),
    # main() sets vl_hidden_dim = 768 for L/14; the fusion keeps 8 heads and a 2048-wide FFN.
    "ViT-L-14": GroundingConfig(clip=CLIP_CONFIGS["ViT-L-14"], feature_layers=(0, 7, 15, 23), hidden_dim=768),
    # Seconds on a CPU: CLIP "tiny" with 6 vision blocks, so the default rule picks (0, 1, 3, 5) as it
    # picks (0, 3, 7, 11) of 12; 64-wide heads, so a converter can infer the head count.
    "tiny": GroundingConfig(
        clip=dataclasses.replace(CLIP_CONFIGS["tiny"], vision=dataclasses.replace(CLIP_CONFIGS["tiny"].vision,
                                                                                    layers=6)),
        feature_layers=(0, 1, 3, 5), hidden_dim=32, fusion_layers=2, fusion_heads=4, fusion_mlp_dim=64,
        visu_proj_in_dim=32),
}


# ---- initialisers matching the reference's torch defaults ------------------------------------------

def _uniform(bound: float) -> nn.initializers.Initializer:
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _linear(features: int, fan_in: int, axes: tuple[str | None, str | None], name: str, dtype: Dtype,
            param_dtype: Dtype, kernel_init: Any = None, bias_init: Any = None) -> nn.Dense:
    """A Dense with logical axes; by default torch's nn.Linear init, U(+-1/sqrt(fan_in)) for both."""
    kernel_init = kernel_init or nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    bias_init = bias_init or _uniform(fan_in ** -0.5)
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                    bias_init=nn.with_logical_partitioning(bias_init, (axes[1],)))


# ---- CLIP towers, read the way CLIP-VG reads them --------------------------------------------------

class _LevelEncoder(nn.Module):
    """Our `Encoder`'s layers (`layers_i`), returning the residual stream after `levels` concatenated
    on channels; blocks past the last level are created at init but never run (as the reference)."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    levels: tuple[int, ...]
    act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [batch, tokens, width] -> [batch, tokens, levels * width]
        layer = EncoderLayer if self.remat == "none" else nn.remat(EncoderLayer, policy=REMAT_POLICIES[self.remat])
        run = self.num_layers if self.is_initializing() else max(self.levels) + 1
        states = []
        for i in range(run):
            x = layer(self.num_heads, self.mlp_dim, self.act, False, self.layer_norm_eps, self.dtype,
                      self.param_dtype, name=f"layers_{i}")(x)
            states.append(x)
        return jnp.concatenate([states[i] for i in self.levels], axis=-1)


class MultiLevelVision(nn.Module):
    """Our `VisionTransformer`'s parameters, returning multi-level token features (§1.3)."""

    config: ClipConfig
    levels: tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:  # [batch, H, W, 3] -> [batch, 1 + patches, k * width]
        cfg, vc = self.config, self.config.vision
        x = VisionEmbeddings(vc, self.dtype, self.param_dtype, name="embeddings")(pixels)
        x = layer_norm(cfg.layer_norm_eps, "pre_layernorm", self.dtype, self.param_dtype)(x)
        if self.is_initializing():  # a whole CLIP tree; CLIP-VG never applies ln_post
            layer_norm(cfg.layer_norm_eps, "post_layernorm", self.dtype, self.param_dtype)(x[:, 0])
        return _LevelEncoder(vc.layers, vc.heads, vc.mlp_dim, self.levels, cfg.act, cfg.layer_norm_eps,
                             self.dtype, self.param_dtype, self.remat, name="encoder")(x)


class TokenText(nn.Module):
    """Our `TextTransformer`'s parameters, returning every token after the final LayerNorm (§1.4)."""

    config: ClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, token_ids: jax.Array) -> jax.Array:  # [batch, length] -> [batch, length, width]
        cfg, tc = self.config, self.config.text
        if token_ids.ndim != 2 or token_ids.shape[1] > tc.context_length:
            raise ValueError(f"token_ids must be [batch, <= {tc.context_length}], got {token_ids.shape}")
        tok = nn.Embed(tc.vocab_size, tc.width, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                       name="token_embedding")
        pos = self.param("position_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.01),
                                                                            (None, "embed")),
                         (tc.context_length, tc.width), self.param_dtype)
        x = tok(token_ids) + pos[:token_ids.shape[1]].astype(self.dtype)
        x = Encoder(tc.layers, tc.heads, tc.mlp_dim, cfg.act, True, cfg.layer_norm_eps,
                    self.dtype, self.param_dtype, self.remat, name="encoder")(x)
        return layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype, self.param_dtype)(x)


class ClipTowers(nn.Module):
    """Both towers under our `CLIP`'s names; the projections and logit scale CLIP-VG does not use are
    created at init only, so `params["clip"]` is a whole CLIP checkpoint."""

    config: ClipConfig
    levels: tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self) -> None:
        cfg = self.config
        self.vision_model = MultiLevelVision(cfg, self.levels, self.dtype, self.param_dtype, self.remat)
        self.text_model = TokenText(cfg, self.dtype, self.param_dtype, self.remat)
        self.visual_projection = dense(cfg.embed_dim, ("embed", None), "visual_projection", self.dtype,
                                       self.param_dtype, use_bias=False)
        self.text_projection = dense(cfg.embed_dim, ("embed", None), "text_projection", self.dtype,
                                     self.param_dtype, use_bias=False)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init), (),
                                      self.param_dtype)

    def image_levels(self, pixels: jax.Array) -> jax.Array:
        if self.is_initializing():
            self.visual_projection(jnp.zeros((1, self.config.vision.width), self.dtype))
        return self.vision_model(pixels)

    def text_tokens(self, token_ids: jax.Array) -> jax.Array:  # -> [batch, length, embed_dim]
        return self.text_projection(self.text_model(token_ids))


# ---- fusion ("vision-language transformer") and head ------------------------------------------------

class FusionAttention(nn.Module):
    """nn.MultiheadAttention with q, k from `query_key` and v from `value`, dropout on the weights.

    `keep` ([batch, keys] bool) is True where a key may be attended (torch's ~key_padding_mask).
    The fused in_proj of the reference is xavier-initialised as one [3D, D] matrix; each of our [D, D]
    slices gets that bound, sqrt(6 / 4D).
    """

    num_heads: int
    dropout: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query_key: jax.Array, value: jax.Array, keep: jax.Array, deterministic: bool) -> jax.Array:
        width = value.shape[-1]
        head_dim = width // self.num_heads
        zeros = nn.initializers.zeros_init()
        proj = lambda name: _linear(width, width, ("embed", "heads"), name, self.dtype, self.param_dtype,
                                    nn.initializers.variance_scaling(0.5, "fan_avg", "uniform"), zeros)
        split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
        q = split(proj("q_proj")(query_key)) * jnp.asarray(head_dim ** -0.5, self.dtype)
        k, v = split(proj("k_proj")(query_key)), split(proj("v_proj")(value))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        logits = jnp.where(keep[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*value.shape[:-1], width)
        return _linear(width, width, ("heads", "embed"), "out_proj", self.dtype, self.param_dtype,
                       nn.initializers.xavier_uniform(), zeros)(out)


class FusionLayer(nn.Module):
    """DETR's post-norm encoder layer (`forward_post`): positions added to q and k only."""

    num_heads: int
    mlp_dim: int
    dropout: float
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, keep: jax.Array, deterministic: bool) -> jax.Array:
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        width = x.shape[-1]
        drop = lambda t: nn.Dropout(self.dropout)(t, deterministic=deterministic)
        norm = lambda name: layer_norm(self.layer_norm_eps, name, self.dtype, self.param_dtype)
        xavier = nn.initializers.xavier_uniform()
        attn = FusionAttention(self.num_heads, self.dropout, self.dtype, self.param_dtype, name="self_attn")
        x = norm("norm1")(x + drop(attn(x + pos, x, keep, deterministic)))
        h = _linear(self.mlp_dim, width, ("embed", "mlp"), "linear1", self.dtype, self.param_dtype, xavier)(x)
        h = _linear(width, self.mlp_dim, ("mlp", "embed"), "linear2", self.dtype, self.param_dtype,
                    xavier)(drop(jax.nn.relu(h)))
        return norm("norm2")(x + drop(h))


class FusionEncoder(nn.Module):
    """`layers_0 .. layers_{n-1}` post-norm layers; no final norm (`normalize_before=False`)."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout: float
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, keep: jax.Array, deterministic: bool) -> jax.Array:
        for i in range(self.num_layers):
            x = FusionLayer(self.num_heads, self.mlp_dim, self.dropout, self.layer_norm_eps, self.dtype,
                            self.param_dtype, name=f"layers_{i}")(x, pos, keep, deterministic)
        return x


class BoxHead(nn.Module):
    """DETR's MLP (`layers_0 .. layers_{n-1}`, ReLU between) followed by a sigmoid."""

    hidden_dim: int
    num_layers: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [batch, hidden] -> [batch, 4]
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = _linear(4 if last else self.hidden_dim, x.shape[-1], ("embed", None), f"layers_{i}", self.dtype,
                        self.param_dtype)(x)
            x = x if last else jax.nn.relu(x)
        return jax.nn.sigmoid(x.astype(jnp.float32))


def patch_padding_mask(pad_mask: jax.Array, grid: int) -> jax.Array:
    """Pixel padding mask [batch, H, W] (True on padding) -> [batch, grid * grid], True = ignore.

    The reference resizes its int mask with torchvision 0.10's Resize (bilinear, align_corners=False,
    no antialias), rounds half to even and casts to bool (§1.5). For 16-px patches this samples the
    2x2 centre pixels of each patch: a patch is masked iff at least 3 of the 4 are padding.
    """
    def taps(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(grid) + 0.5) * (size / grid) - 0.5, 0.0)
        lo = np.floor(src).astype(np.int32)
        hi = np.minimum(lo + 1, size - 1)
        frac = (src - lo).astype(np.float32)
        return lo, hi, 1 - frac, frac

    m = jnp.asarray(pad_mask).astype(jnp.float32)
    r0, r1, a0, a1 = taps(m.shape[1])
    c0, c1, b0, b1 = taps(m.shape[2])
    rows = m[:, r0] * a0[:, None] + m[:, r1] * a1[:, None]  # [batch, grid, W]
    cells = rows[:, :, c0] * b0 + rows[:, :, c1] * b1  # [batch, grid, grid]
    return (jnp.round(cells) != 0).reshape(m.shape[0], grid * grid)


class CLIPVG(nn.Module):
    """The multi-level CLIP-VG model (`ML_CLIP_VG`); `__call__` returns normalised cxcywh boxes.

    `deterministic=False` turns the fusion's dropout on (needs a `dropout` rng). `remat` (none, full,
    save_dots) rematerialises the CLIP encoder layers.
    """

    config: GroundingConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self) -> None:
        cfg, clip = self.config, self.config.clip
        d = cfg.hidden_dim
        self.clip = ClipTowers(clip, cfg.feature_layers, self.dtype, self.param_dtype, self.remat)
        visual_in = len(cfg.feature_layers) * clip.vision.width
        self.visu_proj = _linear(d, cfg.visu_proj_in_dim, ("embed", None), "visu_proj", self.dtype, self.param_dtype)
        self.text_proj = _linear(d, clip.embed_dim, ("embed", None), "text_proj", self.dtype, self.param_dtype)
        self.ml_visu_proj = _linear(d, visual_in, ("mlp", "embed"), "ml_visu_proj", self.dtype, self.param_dtype)
        embedding = lambda name, rows: self.param(
            name, nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")), (rows, d),
            self.param_dtype)  # nn.Embedding's N(0, 1)
        self.reg_token = embedding("reg_token", 1)
        self.vl_pos_embed = embedding("vl_pos_embed", cfg.num_tokens)
        self.vl_transformer = FusionEncoder(cfg.fusion_layers, cfg.fusion_heads, cfg.fusion_mlp_dim, cfg.dropout,
                                            cfg.layer_norm_eps, self.dtype, self.param_dtype)
        self.bbox_embed = BoxHead(d, cfg.head_layers, self.dtype, self.param_dtype)

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """[batch, H, W, 3] -> [batch, 1 + patches, hidden]: projected multi-level tokens."""
        if self.is_initializing():  # created for the checkpoint; the reference never calls it
            self.visu_proj(jnp.zeros((1, self.config.visu_proj_in_dim), self.dtype))
        return self.ml_visu_proj(self.clip.image_levels(pixels))

    def encode_text(self, token_ids: jax.Array) -> jax.Array:
        """[batch, length] -> [batch, length, hidden]: projected per-token features."""
        tokens = self.clip.text_tokens(token_ids)
        if self.config.stop_text_gradient:
            tokens = jax.lax.stop_gradient(tokens)
        return self.text_proj(tokens)

    def fuse(self, image_features: jax.Array, text_features: jax.Array, keep: jax.Array,
             deterministic: bool = True) -> jax.Array:
        """[REG, text, image] through the fusion encoder and the head -> [batch, 4] cxcywh in [0, 1].

        `keep` [batch, 1 + text + image] bool is True where a token may be attended.
        """
        batch = image_features.shape[0]
        reg = jnp.broadcast_to(self.reg_token.astype(self.dtype), (batch, 1, self.config.hidden_dim))
        x = jnp.concatenate([reg, text_features.astype(self.dtype), image_features.astype(self.dtype)], axis=1)
        pos = self.vl_pos_embed[:x.shape[1]].astype(self.dtype)
        return self.bbox_embed(self.vl_transformer(x, pos, keep, deterministic)[:, 0])

    def __call__(self, pixels: jax.Array, token_ids: jax.Array, pad_mask: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Pixels [batch, H, W, 3], CLIP token ids [batch, context] (0 = padding) and the pixel padding
        mask [batch, H, W] (True on padding; None: no padding) -> boxes [batch, 4] (cx, cy, w, h)."""
        image = self.encode_image(pixels)
        text = self.encode_text(token_ids)
        batch = pixels.shape[0]
        visual_keep = jnp.ones((batch, image.shape[1]), bool)
        if pad_mask is not None:
            visual_keep = visual_keep.at[:, 1:].set(~patch_padding_mask(pad_mask, self.config.grid))
        keep = jnp.concatenate([jnp.ones((batch, 1), bool), token_ids > 0, visual_keep], axis=1)
        return self.fuse(image, text, keep, deterministic)


def abstract_params(config: GroundingConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """The parameter tree's shapes and dtypes, without allocating it."""
    model = CLIPVG(config, param_dtype=param_dtype)
    size = config.clip.vision.image_size
    pixels = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, config.clip.text.context_length), jnp.int32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), pixels, tokens)["params"])


def parameter_counts(config: GroundingConfig) -> tuple[int, int]:
    """(total, trainable) parameter counts; trainable follows `FREEZE`."""
    sizes = {k: int(np.prod(v.shape)) for k, v in traverse_util.flatten_dict(abstract_params(config), sep="/").items()}
    return sum(sizes.values()), sum(n for k, n in sizes.items() if trainable(k))
