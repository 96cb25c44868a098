"""Image-text contrastive losses: CLIP's softmax InfoNCE and SigLIP's sigmoid loss.

Inputs are L2-normalised embeddings `[batch, dim]` of the global batch (the model normalises; the
losses do not), row i of each being a matching pair. Logits, softmax/sigmoid and reductions run in
fp32 whatever the embedding dtype.

Cross-device behaviour: the two dense losses take no axis argument; under `jax.jit` with a
batch-sharded input they are the global-batch losses, XLA gathering whatever it needs, so their
logits cost O(B^2) memory spread over the devices. `chunked_sigmoid_contrastive_loss` takes the mesh
and the batch axes explicitly and passes text chunks around a ring of devices instead, so a device
holds one `b x b` block of logits at a time (b = B / number of batch shards).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# OpenAI CLIP caps the inverse temperature at 100.
MAX_LOGIT_SCALE = math.log(100.0)


def _scalar_f32(x: jax.Array | float) -> jax.Array:
    """A learned scalar as an fp32 0-d array (parameters may be stored as `()` or `(1,)`)."""
    return jnp.reshape(jnp.asarray(x, jnp.float32), ())


def softmax_contrastive_loss(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE (Radford et al. 2021, Fig. 3): mean of image->text and text->image CE.

    image_embeds, text_embeds: [batch, dim], L2-normalised; row i of each is a positive pair and
    every other row of the batch a negative. `logit_scale` is the learned log inverse temperature;
    the scale applied is `exp(min(logit_scale, ln 100))`. OpenAI clamps the parameter to ln 100 after
    each optimiser step (our CLIP method does too); clamping in the forward as well gives the same
    loss and gradient while the parameter is below the cap, and only differs in that the gradient
    w.r.t. `logit_scale` is zero above it (a plain `minimum`, no straight-through estimator).
    Each cross-entropy is averaged over the batch.
    """
    image_embeds = image_embeds.astype(jnp.float32)
    text_embeds = text_embeds.astype(jnp.float32)
    scale = jnp.exp(jnp.minimum(_scalar_f32(logit_scale), MAX_LOGIT_SCALE))
    logits = scale * image_embeds @ text_embeds.T  # [batch (image), batch (text)]
    i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
    t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
    loss = 0.5 * (i2t + t2i)
    labels = jnp.arange(logits.shape[0])
    metrics = {
        "loss/contrastive": loss,
        "logit_scale": scale,
        "accuracy/i2t": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "accuracy/t2i": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }
    return loss, metrics


def _sigmoid_block_loss(image_embeds: jax.Array, text_embeds: jax.Array, scale: jax.Array, bias: jax.Array,
                        positives_on_diagonal: bool) -> jax.Array:
    """-sum(log_sigmoid(label * logit)) over one [rows, cols] block, in fp32.

    Labels are -1 everywhere, +1 on the diagonal when the block pairs each image with its own text.
    """
    logits = scale * image_embeds.astype(jnp.float32) @ text_embeds.astype(jnp.float32).T + bias
    if positives_on_diagonal:
        labels = 2.0 * jnp.eye(*logits.shape, dtype=jnp.float32) - 1.0
        return -jnp.sum(jax.nn.log_sigmoid(labels * logits))
    return -jnp.sum(jax.nn.log_sigmoid(-logits))


def sigmoid_contrastive_loss(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array,
                             logit_bias: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP (Zhai et al. 2023, Alg. 1), dense over the global batch.

    logits = exp(logit_scale) * image_embeds @ text_embeds.T + logit_bias  # [batch, batch]
    loss = -sum(log_sigmoid(labels * logits)) / batch, labels +1 on the diagonal and -1 elsewhere:
    summed over all B x B pairs and divided by B, as in the paper and big_vision (open_clip's
    `SigLipLoss` matches). `logit_scale` is not clamped (SigLIP does not).
    """
    scale, bias = jnp.exp(_scalar_f32(logit_scale)), _scalar_f32(logit_bias)
    loss = _sigmoid_block_loss(image_embeds, text_embeds, scale, bias, True) / image_embeds.shape[0]
    return loss, {"loss/sigmoid": loss, "logit_scale": scale, "logit_bias": bias}


def _ring_sigmoid_loss_sum(mesh: Mesh, axis_names: tuple[str, ...]):
    """f(image, text, scale, bias) -> sum of the sigmoid loss over all B x B pairs, as a ring.

    A `custom_vjp` so that the backward pass is a second ring instead of autodiff through the
    forward loop: autodiff would save every received text chunk ([B, dim] per device, an all-gather's
    worth) or, without remat, every [b, b] logits block. This way the only residuals are the inputs.
    """
    n = math.prod(mesh.shape[a] for a in axis_names)
    ring = [(i, (i + 1) % n) for i in range(n)]  # device i sends to i + 1: at step k it holds text of i - k
    batch_spec, scalar_spec = PartitionSpec(axis_names), PartitionSpec()
    shard = functools.partial(jax.shard_map, mesh=mesh)

    @functools.partial(shard, in_specs=(batch_spec, batch_spec, scalar_spec, scalar_spec), out_specs=scalar_spec)
    def forward(image, text, scale, bias):  # image, text: [b, dim] on this device
        total = _sigmoid_block_loss(image, text, scale, bias, True)

        def step(_, carry):
            chunk, total = carry
            chunk = jax.lax.ppermute(chunk, axis_names, ring)
            return chunk, total + _sigmoid_block_loss(image, chunk, scale, bias, False)

        # `total` is already device-varying, so the carry needs no pcast (anchors.md B, VMA note)
        _, total = jax.lax.fori_loop(0, n - 1, step, (text, total))
        return jax.lax.psum(total, axis_names)

    @functools.partial(shard, in_specs=(batch_spec, batch_spec, scalar_spec, scalar_spec, scalar_spec),
                       out_specs=(batch_spec, batch_spec, scalar_spec, scalar_spec))
    def backward(image, text, scale, bias, cotangent):
        # Per-device partial sums each receive the full cotangent of the psum. Making scale and bias
        # device-varying keeps their block gradients local; they are all-reduced once at the end.
        cotangent, scale, bias = jax.lax.pcast((cotangent, scale, bias), axis_names, to="varying")
        image32 = image.astype(jnp.float32)

        def block_grads(chunk, positives):
            # differentiate w.r.t. fp32 copies so gradients accumulate in fp32 even for bf16 inputs
            block = lambda i, c, s, b: _sigmoid_block_loss(i, c, s, b, positives)  # noqa: E731
            return jax.vjp(block, image32, chunk.astype(jnp.float32), scale, bias)[1](cotangent)

        grads = block_grads(text, True)  # (image, chunk, scale, bias)

        def step(_, carry):
            # the chunk's gradient travels with it, collecting every device's contribution
            chunk, (g_image, g_chunk, g_scale, g_bias) = carry
            chunk, g_chunk = jax.lax.ppermute((chunk, g_chunk), axis_names, ring)
            d_image, d_chunk, d_scale, d_bias = block_grads(chunk, False)
            return chunk, (g_image + d_image, g_chunk + d_chunk, g_scale + d_scale, g_bias + d_bias)

        _, (g_image, g_chunk, g_scale, g_bias) = jax.lax.fori_loop(0, n - 1, step, (text, grads))
        g_text = jax.lax.ppermute(g_chunk, axis_names, ring)  # one more hop brings it home
        return (g_image.astype(image.dtype), g_text.astype(text.dtype),
                jax.lax.psum(g_scale, axis_names), jax.lax.psum(g_bias, axis_names))

    @jax.custom_vjp
    def ring_sum(image, text, scale, bias):
        return forward(image, text, scale, bias)

    ring_sum.defvjp(lambda *args: (forward(*args), args), lambda args, g: backward(*args, g))
    return ring_sum


def chunked_sigmoid_contrastive_loss(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array,
                                     logit_bias: jax.Array, mesh: Mesh,
                                     axis_names: str | Sequence[str] = ("data", "fsdp")
                                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SigLIP loss of `sigmoid_contrastive_loss`, computed blockwise around a ring of devices.

    image_embeds, text_embeds: [batch, dim] global arrays whose batch axis is split over the mesh
    axes `axis_names` (a name or a tuple, e.g. ("data", "fsdp"); n = product of their sizes, b = B/n;
    inputs sharded otherwise are resharded to that layout on entry). Mesh axes not named see
    replicated copies and compute the same value. Inside `jax.shard_map`:

    - Nothing is all-gathered. Each device keeps its b image rows and starts with its own b text rows
      (the positives, on the block diagonal). For n - 1 more steps it `ppermute`s its current text
      chunk (in the input dtype) to the next device of the ring and adds the negatives-only loss of
      its image rows against the chunk it received.
    - The per-device sums are `psum`med over `axis_names` and divided by the global B, so the value
      equals the dense loss (sum over the B x B matrix / B), up to fp32 summation order.
    - Gradients w.r.t. both embeddings, `logit_scale` and `logit_bias` equal the dense ones. The
      backward pass is a second ring (custom VJP): text chunks go round again, each carrying its fp32
      gradient accumulator, which a final ppermute returns to the owning device; image gradients stay
      local; scale and bias gradients are psummed. Per device, memory is O(b^2 + b * dim), not
      O(B^2) (dense) or O(B * dim) (autodiff through the loop). Forward-mode AD is not supported.
    """
    axis_names = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
    n = math.prod(mesh.shape[a] for a in axis_names)
    batch = image_embeds.shape[0]
    if batch % n:
        raise ValueError(f"batch {batch} is not divisible by the {n} shards of mesh axes {axis_names}")
    scale, bias = jnp.exp(_scalar_f32(logit_scale)), _scalar_f32(logit_bias)
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        # shard_map reshards inputs on Auto axes itself but requires Explicit-axis inputs to match
        image_embeds, text_embeds, scale, bias = jax.sharding.reshard(
            (image_embeds, text_embeds, scale, bias),
            (NamedSharding(mesh, PartitionSpec(axis_names)),) * 2 + (NamedSharding(mesh, PartitionSpec()),) * 2)
    loss = _ring_sigmoid_loss_sum(mesh, axis_names)(image_embeds, text_embeds, scale, bias) / batch
    return loss, {"loss/sigmoid": loss, "logit_scale": scale, "logit_bias": bias}
