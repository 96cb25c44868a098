"""The train state: one pytree with everything a bit-exact resume needs.

`rng` is a raw uint32 key (`jax.random.PRNGKey`) so orbax saves it like any array; each step folds
the step number into it, so no RNG state advances outside the pytree. `extras` holds method state
(the EMA teacher, synchronised scalars, counters) and is sharded like the params where it mirrors them.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extras: dict[str, Any]

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """Exponential moving average `decay * ema + (1 - decay) * params`, in the EMA's dtype."""
    return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype),
                        ema_params, params)


def all_finite(tree: Any) -> jax.Array:
    """True when every leaf is free of NaN and inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
