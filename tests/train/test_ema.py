"""The generic EMA of params that methods can enable (DeGLA's teacher)."""

import jax
import numpy as np

from demo_runs import small_config
from vlalign_jax.train.loop import setup_run
from vlalign_jax.train.state import ema_update


def test_ema_update_formula():
    ema = {"w": np.array([1.0, 2.0], np.float32)}
    params = {"w": np.array([3.0, -2.0], np.float32)}
    np.testing.assert_allclose(ema_update(ema, params, 0.75)["w"], [1.5, 1.0])


def test_train_step_keeps_an_ema_of_params():
    decay = 0.5
    run = setup_run(small_config(**{"train.ema_decay": decay}), jax.devices()[:1])
    iterator = run.iterator()
    with run.context():
        state = run.init_state()
        expected = jax.device_get(state.params)
        for _ in range(3):
            state, _ = run.step_fn(state, run.global_batch(next(iterator)))
            params = jax.device_get(state.params)
            expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(state.extras["ema_params"]), expected)
