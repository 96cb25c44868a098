"""One jitted training step for any method: gradients (optionally accumulated), update, EMA, checks.

Gradient accumulation follows GradCache: embed all micro-batches without gradients, differentiate
the whole-batch loss with respect to the features (and to parameters the loss reads directly, such
as the logit scale, counted once), then pull each micro-batch's feature gradient back through
`embed`. The result is the full-batch gradient, unlike summing per-micro-batch losses.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vlalign_jax.methods.method import Method
from vlalign_jax.train.state import TrainState, all_finite, ema_update


def split_micro_batches(batch: Any, accum_steps: int) -> Any:
    """[B, ...] -> [accum, B/accum, ...] taking rows k, k+accum, ... into micro-batch k, so every
    device holds an equal share of every micro-batch when the batch is sharded contiguously."""
    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"batch of {x.shape[0]} does not split into {accum_steps} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def merge_micro_batches(tree: Any) -> Any:
    """Inverse of `split_micro_batches`."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def loss_and_grads(method: Method, params: Any, extras: dict, batch: Any, rng: jax.Array,
                   accum_steps: int = 1) -> tuple[jax.Array, dict, Any]:
    """Whole-batch loss, metrics and parameter gradients, over `accum_steps` micro-batches."""
    if accum_steps == 1:
        def full(p):
            return method.loss(p, extras, method.embed(p, extras, batch, rng), rng)
        (loss, metrics), grads = jax.value_and_grad(full, has_aux=True)(params)
        return loss, metrics, grads

    micro = split_micro_batches(batch, accum_steps)
    take = lambda k: jax.tree.map(lambda x: x[k], micro)
    embed_k = lambda p, k: method.embed(p, extras, take(k), jax.random.fold_in(rng, k))
    features = jax.lax.map(lambda k: jax.lax.stop_gradient(embed_k(params, k)), jnp.arange(accum_steps))
    loss_of = lambda p, f: method.loss(p, extras, merge_micro_batches(f), rng)
    (loss, metrics), (grads, feature_grads) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(
        params, features)

    def pull_back(acc, k):
        _, vjp = jax.vjp(lambda p: embed_k(p, k), params)
        (g,) = vjp(jax.tree.map(lambda x: x[k], feature_grads))
        return jax.tree.map(jnp.add, acc, g), None

    grads, _ = jax.lax.scan(pull_back, grads, jnp.arange(accum_steps))
    return loss, metrics, grads


def make_train_step(method: Method, optimizer: optax.GradientTransformation, accum_steps: int = 1,
                    ema_decay: float = 0.0, skip_nonfinite: bool = False,
                    learning_rate: Callable[[jax.Array], jax.Array] | None = None):
    """`train_step(state, batch) -> (state, metrics)`, to be wrapped in `jax.jit` with shardings.

    A non-finite loss or gradient sets `metrics["nonfinite"]`; with `skip_nonfinite` the update is
    dropped (params, optimizer state and extras unchanged) and counted, otherwise the caller stops.
    """

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        loss, metrics, grads = loss_and_grads(method, state.params, state.extras, batch, state.step_rng(),
                                              accum_steps)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = method.constrain_params(optax.apply_updates(state.params, updates))
        extras = method.update_extras(state.extras, params, state.step, metrics)
        if ema_decay:
            extras = {**extras, "ema_params": ema_update(state.extras["ema_params"], params, ema_decay)}
        finite = jnp.isfinite(loss) & all_finite(grads)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            params, opt_state, extras = (keep(params, state.params), keep(opt_state, state.opt_state),
                                         keep(extras, state.extras))
        nonfinite = 1 - finite.astype(jnp.int32)
        extras = {**extras, "nonfinite_steps": state.extras["nonfinite_steps"] + nonfinite}
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads), "nonfinite": nonfinite,
                   "nonfinite_steps": extras["nonfinite_steps"]}
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extras=extras)
        return new_state, metrics

    return train_step
