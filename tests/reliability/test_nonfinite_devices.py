"""A NaN in one device's part of the batch is seen by every device at once: the step's `nonfinite`
flag is 1 on all of them and, with `train.skip_nonfinite`, no device applies the update (every shard of
every parameter keeps its value); the next good batch trains on as usual."""

import jax
import numpy as np

from demo_runs import small_config
from vlalign_jax.train.loop import setup_run


def _host_copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def test_a_nan_on_one_device_stops_the_update_on_all_devices():
    # No warmup: the skipped step leaves the optimizer count at 0, where a warmup would give lr 0.
    run = setup_run(small_config(**{"train.skip_nonfinite": True, "optim.warmup_steps": 0}))
    assert run.mesh.size == 8
    with run.context():
        state = run.init_state()
        iterator = run.iterator()
        batch, good = next(iterator), next(iterator)
        iterator.close()
        before = _host_copy(state.params)
        poisoned = dict(batch)
        poisoned["pixels"] = batch["pixels"].copy()
        per_device = len(poisoned["pixels"]) // 8
        poisoned["pixels"][5 * per_device, 3, 7, 1] = np.nan  # one pixel of one example: device 5's part
        state, metrics = run.step_fn(state, run.global_batch(poisoned))
        flags = [int(s.data) for s in metrics["nonfinite"].addressable_shards]
        assert flags == [1] * 8
        assert [int(s.data) for s in state.extras["nonfinite_steps"].addressable_shards] == [1] * 8
        for want, leaf in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
            for shard in leaf.addressable_shards:  # every device's copy or slice, unchanged
                np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])

        state, metrics = run.step_fn(state, run.global_batch(good))
        assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
        changed = [not np.array_equal(np.asarray(leaf), want)
                   for want, leaf in zip(jax.tree.leaves(before), jax.tree.leaves(state.params))]
        assert any(changed)
