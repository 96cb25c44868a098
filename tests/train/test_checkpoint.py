"""Checkpoints restore under another mesh, load_params reads a run's params alone, and every kept step
ends up with its checksums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from vlalign_jax.parallel.mesh import make_mesh
from vlalign_jax.train import checkpoint_manifest
from vlalign_jax.train.checkpoint import Checkpointer, abstract_with_shardings, load_params
from vlalign_jax.train.state import TrainState


def _state(mesh, spec):
    sharding = NamedSharding(mesh, spec)
    repl = NamedSharding(mesh, PartitionSpec())
    kernel = jax.device_put(jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16), sharding)
    state = TrainState(step=jax.device_put(jnp.asarray(5, jnp.int32), repl), params={"kernel": kernel},
                       opt_state={"mu": kernel * 2}, rng=jax.device_put(jax.random.PRNGKey(1), repl),
                       extras={"nonfinite_steps": jax.device_put(jnp.asarray(0, jnp.int32), repl)})
    shardings = TrainState(step=repl, params={"kernel": sharding}, opt_state={"mu": sharding}, rng=repl,
                           extras={"nonfinite_steps": repl})
    return state, shardings


def test_restore_onto_another_mesh(tmp_path):
    fsdp8 = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    state, _ = _state(fsdp8, PartitionSpec("fsdp", None))
    assert state.params["kernel"].addressable_shards[0].data.shape == (8, 16)  # 1/8 per device
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(5, state, None, {"note": "test"})
    ckpt.wait()

    data4 = make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, jax.devices()[:4])
    target, shardings = _state(data4, PartitionSpec(None, "data"))
    abstract = abstract_with_shardings(jax.eval_shape(lambda: target), shardings)
    restored = Checkpointer(tmp_path).restore(5, abstract, None)
    assert restored.params["kernel"].sharding == shardings.params["kernel"]
    np.testing.assert_array_equal(np.asarray(restored.params["kernel"]), np.asarray(state.params["kernel"]))
    np.testing.assert_array_equal(np.asarray(restored.opt_state["mu"]), np.asarray(state.opt_state["mu"]))
    assert int(restored.step) == 5

    params = load_params(tmp_path)
    assert set(params) == {"kernel"}
    np.testing.assert_array_equal(params["kernel"], np.asarray(state.params["kernel"]))


@pytest.mark.parametrize("keep", [1, 2])
def test_every_kept_step_is_sealed_with_its_checksums(tmp_path, keep):
    mesh = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    state, _ = _state(mesh, PartitionSpec())
    ckpt = Checkpointer(tmp_path, max_to_keep=keep)
    for step in (1, 2, 3):  # each save seals the one before (in a thread unless only one step is kept)
        ckpt.save(step, state, None, {"step": step})
    ckpt.wait()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert kept == [1, 2, 3][-keep:]
    for step in kept:
        assert checkpoint_manifest.has_manifest(tmp_path / "checkpoints" / str(step))
        assert checkpoint_manifest.verify(tmp_path / "checkpoints" / str(step)) is None
