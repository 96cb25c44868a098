"""Contrastive losses against numpy brute force and open_clip, and the ring loss against the dense one.

fp32 throughout (conftest sets full-precision matmuls). Tolerances: 1e-5 between fp32 JAX and
fp32 torch / fp64 numpy (different summation orders over B^2 = 4096 terms); the ring loss sums the
same fp32 blocks in another order, so 1e-6 relative on the value.
"""

import functools
import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from vlalign_jax.losses.contrastive import (chunked_sigmoid_contrastive_loss, sigmoid_contrastive_loss,
                                            softmax_contrastive_loss)

BATCH, DIM = 64, 32


@functools.cache
def _open_clip_loss():
    """open_clip's loss.py loaded on its own: `import open_clip` pulls in timm and more (~10 s), the
    loss module needs only torch."""
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip is not installed")
    loss_spec = importlib.util.spec_from_file_location(
        "_open_clip_loss", Path(spec.submodule_search_locations[0]) / "loss.py")
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def _embeds(seed: int = 0, batch: int = BATCH, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(2, batch, dim)).astype(np.float32)
    text = image + 1.5 * text  # correlated, so the positives are not arbitrary
    normalise = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return normalise(image), normalise(text)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _numpy_softmax_loss(image, text, logit_scale) -> float:
    logits = math.exp(min(logit_scale, math.log(100))) * image.astype(np.float64) @ text.astype(np.float64).T
    return -0.5 * (np.mean(np.diag(_log_softmax(logits, 1))) + np.mean(np.diag(_log_softmax(logits, 0))))


def _numpy_sigmoid_loss(image, text, logit_scale, logit_bias) -> float:
    logits = math.exp(logit_scale) * image.astype(np.float64) @ text.astype(np.float64).T + logit_bias
    labels = 2 * np.eye(len(image)) - 1
    return np.sum(np.logaddexp(0.0, -labels * logits)) / len(image)  # -log_sigmoid(z) = log(1 + e^-z)


def _torch_loss_and_grads(loss_module, image, text, log_scale, bias=None):
    """open_clip losses take exp(logit_scale); differentiate w.r.t. the log, like the parameter."""
    torch = pytest.importorskip("torch")
    args = [torch.tensor(image, requires_grad=True), torch.tensor(text, requires_grad=True),
            torch.tensor(log_scale, requires_grad=True)]
    extra = [] if bias is None else [torch.tensor(bias, requires_grad=True)]
    loss = loss_module(args[0], args[1], args[2].exp(), *extra)
    loss.backward()
    return float(loss.detach()), [a.grad.numpy() for a in args + extra]


def test_softmax_loss_matches_numpy_and_open_clip():
    open_clip_loss = _open_clip_loss()
    image, text = _embeds()
    log_scale = np.float32(math.log(1 / 0.07))
    fn = lambda i, t, s: softmax_contrastive_loss(i, t, s)[0]  # noqa: E731
    loss, grads = jax.value_and_grad(fn, argnums=(0, 1, 2))(image, text, log_scale)
    np.testing.assert_allclose(loss, _numpy_softmax_loss(image, text, float(log_scale)), rtol=1e-5)
    want_loss, want_grads = _torch_loss_and_grads(open_clip_loss.ClipLoss(), image, text, log_scale)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_softmax_loss_clamps_scale_and_reports_accuracy():
    image, _ = _embeds()
    loss, metrics = softmax_contrastive_loss(image, image, jnp.float32(10.0))  # above ln 100
    np.testing.assert_allclose(metrics["logit_scale"], 100.0, rtol=1e-6)
    np.testing.assert_allclose(loss, _numpy_softmax_loss(image, image, 10.0), rtol=1e-5)
    assert float(metrics["accuracy/i2t"]) == float(metrics["accuracy/t2i"]) == 1.0  # text == image: all correct
    assert float(jax.grad(lambda s: softmax_contrastive_loss(image, image, s)[0])(jnp.float32(10.0))) == 0.0


def test_sigmoid_loss_matches_numpy_and_open_clip():
    open_clip_loss = _open_clip_loss()
    image, text = _embeds(1)
    log_scale, bias = np.float32(math.log(10.0)), np.float32(-10.0)  # SigLIP's initialisation
    fn = lambda i, t, s, b: sigmoid_contrastive_loss(i, t, s, b)[0]  # noqa: E731
    loss, grads = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))(image, text, log_scale, bias)
    np.testing.assert_allclose(loss, _numpy_sigmoid_loss(image, text, float(log_scale), float(bias)), rtol=1e-5)
    want_loss, want_grads = _torch_loss_and_grads(open_clip_loss.SigLipLoss(), image, text, log_scale, bias)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


MESHES = [
    pytest.param((8,), ("data",), ("data",), AxisType.Auto, id="8"),
    pytest.param((2, 4), ("data", "fsdp"), ("data", "fsdp"), AxisType.Auto, id="2x4"),
    pytest.param((8, 1), ("data", "fsdp"), ("data", "fsdp"), AxisType.Auto, id="8x1"),
    pytest.param((2, 4), ("data", "fsdp"), ("data", "fsdp"), AxisType.Explicit, id="2x4-explicit"),
    pytest.param((2, 2, 2), ("data", "fsdp", "tensor"), ("data", "fsdp"), AxisType.Auto, id="2x2x2-tensor-replicated"),
]


@pytest.mark.parametrize("shape, mesh_axes, batch_axes, axis_type", MESHES)
def test_chunked_sigmoid_loss_equals_dense(shape, mesh_axes, batch_axes, axis_type):
    mesh = jax.make_mesh(shape, mesh_axes, axis_types=(axis_type,) * len(shape))
    image, text = _embeds(2)
    sharded = NamedSharding(mesh, PartitionSpec(batch_axes))
    image_s, text_s = jax.device_put(image, sharded), jax.device_put(text, sharded)
    log_scale, bias = jnp.float32(math.log(10.0)), jnp.float32(-10.0)
    dense = jax.value_and_grad(lambda *a: sigmoid_contrastive_loss(*a)[0], argnums=(0, 1, 2, 3))
    ring = jax.jit(jax.value_and_grad(lambda *a: chunked_sigmoid_contrastive_loss(*a, mesh, batch_axes)[0],
                                      argnums=(0, 1, 2, 3)))
    want_loss, want_grads = dense(image, text, log_scale, bias)
    loss, grads = ring(image_s, text_s, log_scale, bias)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert grads[0].sharding.is_equivalent_to(sharded, 2)  # embedding gradients stay batch-sharded


def test_chunked_sigmoid_loss_bf16_inputs():
    """bf16 embeddings travel as bf16 but every block is computed in fp32: same value as dense."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    image, text = (jnp.asarray(x, jnp.bfloat16) for x in _embeds(3))
    args = (image, text, jnp.float32(math.log(10.0)), jnp.float32(-10.0))
    loss, grads = jax.jit(jax.value_and_grad(lambda *a: chunked_sigmoid_contrastive_loss(*a, mesh, "data")[0],
                                             argnums=(0, 1)))(*args)
    want_loss, want_grads = jax.value_and_grad(lambda *a: sigmoid_contrastive_loss(*a)[0], argnums=(0, 1))(*args)
    assert loss.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for got, want in zip(grads, want_grads):  # one bf16 rounding of the same fp32 gradient
        np.testing.assert_allclose(np.float32(got), np.float32(want), atol=1e-4, rtol=1e-2)


def test_chunked_sigmoid_loss_memory_is_per_block():
    """Compiled per-device scratch memory: the ring holds O(b^2) logits, dense O(B^2 / n) or more."""
    n, batch, dim = 8, 4096, 64
    b = batch // n
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    embeds = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("data")))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))

    def temp_bytes(loss_fn):
        grad_fn = jax.grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1, 2, 3))
        return jax.jit(grad_fn).lower(embeds, embeds, scalar, scalar).compile().memory_analysis().temp_size_in_bytes

    ring = temp_bytes(lambda *a: chunked_sigmoid_contrastive_loss(*a, mesh, "data"))
    dense = temp_bytes(sigmoid_contrastive_loss)
    assert ring <= 4 * (4 * b * b) + 16 * (4 * b * dim), ring  # a few [b, b] and [b, dim] fp32 buffers
    assert dense >= 4 * batch * batch / n > 4 * ring, (dense, ring)
