"""Pre-LayerNorm transformer encoder blocks shared by the CLIP vision and text towers.

Submodule names follow Hugging Face's CLIP (`self_attn/q_proj`, `layer_norm1`, `mlp/fc1`) so the
converter tables stay renames plus transposes. Every parameter carries logical axis names
(`embed`, `heads`, `mlp`) that the sharding rules map to mesh axes.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# The OpenAI checkpoints were trained with QuickGELU; LAION-trained open_clip models with exact GELU.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # SigLIP 2
}


def dense(features: int, axes: tuple[str | None, str | None], name: str, dtype: Dtype,
          param_dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    """A Dense layer whose kernel and bias carry logical axis names for sharding."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def layer_norm(eps: float, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    """LayerNorm with logically named scale and bias; statistics are computed in fp32 by flax."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (HF layout).

    Self-attention over `x` by default; `context` gives the keys and values instead (SigLIP's
    attention-pooling head queries the tokens with a probe). `mask` ([batch, 1, 1, keys] bool, True
    = attend) hides padded keys.
    """

    num_heads: int
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None,
                 context: jax.Array | None = None) -> jax.Array:  # x: [batch, length, width]
        context = x if context is None else context
        width = context.shape[-1]
        head_dim = width // self.num_heads
        proj = lambda name: dense(width, ("embed", "heads"), name, self.dtype, self.param_dtype)
        split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
        q = split(proj("q_proj")(x))
        k, v = split(proj("k_proj")(context)), split(proj("v_proj")(context))
        # dot_product_attention scales by head_dim**-0.5, as CLIP does, and picks cuDNN on GPU.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal)
        out = out.reshape(*out.shape[:-2], width)
        return dense(width, ("heads", "embed"), "out_proj", self.dtype, self.param_dtype)(out)


class Mlp(nn.Module):
    """Two-layer feed-forward block: fc1 -> activation -> fc2."""

    hidden_dim: int
    act: str = "quick_gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = dense(self.hidden_dim, ("embed", "mlp"), "fc1", self.dtype, self.param_dtype)(x)
        h = ACTIVATIONS[self.act](h)
        return dense(width, ("mlp", "embed"), "fc2", self.dtype, self.param_dtype)(h)


class EncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    num_heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    causal: bool = False
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        ln = lambda name: layer_norm(self.layer_norm_eps, name, self.dtype, self.param_dtype)
        x = x + Attention(self.num_heads, self.causal, self.dtype, self.param_dtype,
                          name="self_attn")(ln("layer_norm1")(x), mask)
        x = x + Mlp(self.mlp_dim, self.act, self.dtype, self.param_dtype, name="mlp")(ln("layer_norm2")(x))
        return x


# Rematerialisation policies by config name: what each layer keeps for the backward pass.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Encoder(nn.Module):
    """A stack of `num_layers` encoder layers named `layers_0 ... layers_{n-1}`.

    `remat` is `none`, `full` (recompute each layer in the backward pass) or `save_dots` (keep the
    weight matmul outputs, recompute the rest); parameter names are the same in every case.
    `return_penultimate=True` returns `(output, input of the last layer)` instead of the output alone
    (FG-CLIP's dense features re-run the last layer on that input); it adds no parameters.
    `mask` ([batch, 1, 1, length] bool, True = real token) hides padded keys in every layer.
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    causal: bool = False
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"
    return_penultimate: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; expected none or one of {sorted(REMAT_POLICIES)}")
        layer = EncoderLayer if self.remat == "none" else nn.remat(EncoderLayer, policy=REMAT_POLICIES[self.remat])
        penultimate = x
        for i in range(self.num_layers):
            penultimate = x
            x = layer(self.num_heads, self.mlp_dim, self.act, self.causal, self.layer_norm_eps,
                             self.dtype, self.param_dtype, name=f"layers_{i}")(x, mask)
        return (x, penultimate) if self.return_penultimate else x
