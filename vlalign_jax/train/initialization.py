"""Building the sharded train state: abstract shapes, shardings from logical names, a jitted init.

Parameters are sharded by their logical axis names (`parallel/rules.py`); optimizer moments mirror
the parameter they belong to (`optax.tree_map_params`), and everything else is replicated. The state
is created directly in its sharded layout, never materialised whole on one device.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vlalign_jax.methods.method import Method
from vlalign_jax.parallel.rules import logical_shardings, replicated
from vlalign_jax.train.state import TrainState


def _extras(method: Method, params: Any, ema: bool) -> dict:
    extras = {**method.init_extras(params), "nonfinite_steps": jnp.zeros((), jnp.int32)}
    if ema:
        extras["ema_params"] = params
    return extras


def _initializer(method: Method, optimizer: optax.GradientTransformation, ema: bool):
    def init(rng: jax.Array, initial_params: Any = None) -> TrainState:
        if initial_params is None:
            params = nn.meta.unbox(method.init_variables(rng)["params"])
        else:
            params = initial_params
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          rng=rng, extras=_extras(method, params, ema))
    return init


def abstract_state(method: Method, optimizer: optax.GradientTransformation, seed: int, ema: bool
                   ) -> tuple[TrainState, Any]:
    """The state's shapes (unboxed) and the boxed abstract params that carry logical axis names."""
    boxed = jax.eval_shape(method.init_variables, jax.random.PRNGKey(seed))["params"]
    return jax.eval_shape(_initializer(method, optimizer, ema), jax.random.PRNGKey(seed)), boxed


def state_shardings(abstract: TrainState, boxed_params: Any, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
    """A TrainState-shaped tree of NamedShardings."""
    params = logical_shardings(boxed_params, mesh)
    repl = replicated(mesh)
    # Frozen parameters (`optim.freeze`) have no moments: optax marks their slots with MaskedNode,
    # which stays as it is.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_state = optax.tree_map_params(optimizer, lambda x, sharding: x if masked(x) else sharding,
                                      abstract.opt_state, params, transform_non_params=lambda _: repl,
                                      is_leaf=masked)
    extras = {k: params if k == "ema_params" else jax.tree.map(lambda _: repl, v)
              for k, v in abstract.extras.items()}
    return TrainState(step=repl, params=params, opt_state=opt_state, rng=repl, extras=extras)


def create_state(method: Method, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int,
                 ema: bool = False, initial_params: Any = None) -> tuple[TrainState, TrainState]:
    """Initialise the state on `mesh` in its final sharding; returns (state, shardings).

    `initial_params` (global arrays already in the params' sharding, see `initial_weights.place`)
    replace the random initialisation; the optimizer state and any EMA start from them.
    """
    abstract, boxed = abstract_state(method, optimizer, seed, ema)
    shardings = state_shardings(abstract, boxed, optimizer, mesh)
    init = jax.jit(_initializer(method, optimizer, ema), out_shardings=shardings)
    with jax.set_mesh(mesh):
        if initial_params is None:
            state = init(jax.random.PRNGKey(seed))
        else:
            state = init(jax.random.PRNGKey(seed), initial_params)
    return state, shardings
