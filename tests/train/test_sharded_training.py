"""The jitted, sharded step gives the same numbers on any mesh; FSDP really shards the state;
gradient accumulation and rematerialisation do not change the gradients."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demo_runs import small_config
from vlalign_jax.train.loop import setup_run
from vlalign_jax.train.step import loss_and_grads

MESHES = [({"data": 1}, 1), ({"data": 8}, 8), ({"data": 1, "fsdp": 8}, 8), ({"data": 2, "fsdp": 2, "tensor": 2}, 8)]


def _mesh_overrides(sizes):
    return {f"mesh.{axis}": sizes.get(axis, 1) for axis in ("data", "fsdp", "tensor")}


def _train(config, num_devices, steps=3, initial=None):
    """`steps` steps from `initial` (moved onto this run's shardings) or from a fresh init."""
    run = setup_run(config, jax.devices()[:num_devices])
    iterator = run.iterator()
    losses = []
    with run.context():
        state = run.init_state() if initial is None else jax.device_put(initial, run.shardings)
        for _ in range(steps):
            state, metrics = run.step_fn(state, run.global_batch(next(iterator)))
            losses.append(float(metrics["loss"]))
    return run, state, losses


@pytest.fixture(scope="module")
def mesh_runs():
    """Three steps on each mesh from the same initial state: [(run, state, losses)]."""
    initial = setup_run(small_config(), jax.devices()[:1]).init_state()
    initial = jax.device_get(initial)
    return [_train(small_config(**_mesh_overrides(sizes)), n, initial=initial) for sizes, n in MESHES]


def test_same_steps_on_every_mesh(mesh_runs):
    _, ref_state, ref_losses = mesh_runs[0]
    ref_params = jax.device_get(ref_state.params)
    for (sizes, _), (_, state, losses) in zip(MESHES[1:], mesh_runs[1:]):
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(sizes))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, err_msg=str(sizes)),
                     jax.device_get(state.params), ref_params)
    assert ref_losses[-1] < ref_losses[0]


def test_fsdp_shards_params_and_optimizer_state(mesh_runs):
    _, state, _ = mesh_runs[2]
    kernel = state.params["vision_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]  # [32, 64]
    assert kernel.addressable_shards[0].data.shape == (4, 64)
    token = state.params["text_model"]["token_embedding"]["embedding"]
    assert token.addressable_shards[0].data.shape[1] == token.shape[1] // 8
    mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
    moments = [leaf.mu for leaf in mu if hasattr(leaf, "mu")]
    mu_kernel = moments[0]["vision_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert mu_kernel.addressable_shards[0].data.shape == (4, 64)

    # the compiled step's per-device argument memory (mostly the state) falls about 8x
    sizes = {}
    for name, (run, state, _) in (("data", mesh_runs[1]), ("fsdp", mesh_runs[2])):
        batch = run.global_batch(next(run.iterator()))
        with run.context():
            compiled = run.step_fn.lower(state, batch).compile()
        sizes[name] = compiled.memory_analysis().argument_size_in_bytes
    assert sizes["fsdp"] < 0.25 * sizes["data"], sizes


def _grads(config, accum_steps=1):
    run = setup_run(config, jax.devices()[:1])
    batch = run.global_batch(next(run.iterator()))
    with run.context():
        state = run.init_state()
        fn = jax.jit(lambda p, b: loss_and_grads(run.method, p, state.extras, b, jax.random.PRNGKey(0),
                                                 accum_steps))
        loss, _, grads = fn(state.params, batch)
    return float(loss), jax.device_get(grads)


def test_gradient_accumulation_matches_the_full_batch():
    loss1, full = _grads(small_config(), 1)
    loss4, accumulated = _grads(small_config(), 4)
    assert abs(loss1 - loss4) < 1e-5
    # 1e-5, absolute for small entries and relative for large ones: the micro-batches add the same
    # terms in another order, and fp32 sums of ~3.0 differ in the sixth digit.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), accumulated, full)
    # the logit scale gets the gradient once, not once per micro-batch
    np.testing.assert_allclose(accumulated["logit_scale"], full["logit_scale"], atol=1e-6)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_keeps_gradients(policy):
    _, plain = _grads(small_config())
    _, remat = _grads(small_config(**{"model.remat": policy}))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), remat, plain)


def test_bf16_compute_keeps_fp32_state(mesh_runs):
    initial = jax.device_get(mesh_runs[0][1])
    run, state, losses = _train(small_config(**{"model.dtype": "bfloat16"}), 1, steps=2, initial=initial)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(np.isfinite(losses))


def test_ring_sigmoid_loss_trains_like_the_dense_one():
    sizes = {"data": 2, "fsdp": 4}
    runs = [_train(small_config(**{"loss": loss, **_mesh_overrides(sizes)}), 8, steps=2)
            for loss in ("sigmoid", "sigmoid_chunked")]
    np.testing.assert_allclose(runs[1][2], runs[0][2], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 jax.device_get(runs[1][1].params), jax.device_get(runs[0][1].params))


def test_a_batch_the_mesh_cannot_split_is_refused_by_name():
    with pytest.raises(ValueError, match="train.batch_size=12 must be divisible by the 8 batch shards"):
        setup_run(small_config(**{"train.batch_size": 12}))
    with pytest.raises(ValueError, match="times train.accum_steps=4"):
        setup_run(small_config(**{"train.batch_size": 16, "train.accum_steps": 4}))
