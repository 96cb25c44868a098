"""The contract between a training method and the trainer.

The loss is split in two so that gradient accumulation stays exact for contrastive losses (GradCache):
`embed` maps one micro-batch to per-example features, `loss` scores the features of the whole batch.
The trainer embeds every micro-batch without gradients, takes the loss gradient with respect to the
features, then back-propagates each micro-batch's slice through `embed` again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np

Params = Any
Batch = Mapping[str, jax.Array]


def _no_extras(params: Params) -> dict:
    return {}


def _keep_extras(extras: dict, params: Params, step: jax.Array, metrics: dict) -> dict:
    return extras


def _as_is(params: dict) -> dict:
    return params


def _identity(params: Params) -> Params:
    return params


@dataclasses.dataclass(frozen=True)
class Method:
    """What one method contributes; the trainer never branches on its name.

    embed(params, extras, batch, rng) -> features   per-example arrays, batch dimension first
    loss(params, extras, features, rng) -> (loss, metrics)   over the whole (global) batch
    init_variables(rng) -> flax variables (boxed with logical axis names)
    batch_fields: the keys `embed` reads from a batch
    train_data() -> (random-access source, preprocess(example, rng) returning the batch fields; rng is a
      numpy Generator drawn per example and epoch by the pipeline, for random crops)
    evaluators: name -> fn(params, extras) -> {metric: value}, run during and after training
    init_extras(params) -> method state kept in the train state (replicated unless it is `ema_params`)
    update_extras(extras, new_params, step, metrics) -> extras after the update; `metrics` are this
      step's loss metrics, so a quantity the loss computes (FG-CLIP 2's synchronised ranking
      threshold) is carried to the next step
    adapt_initial_params(params) -> params: turns weights read for `model.init_from` into this
      model's tree before the strict key/shape check
    """

    name: str
    model: nn.Module
    batch_fields: tuple[str, ...]
    init_variables: Callable[[jax.Array], dict]
    embed: Callable[[Params, dict, Batch, jax.Array], Any]
    loss: Callable[[Params, dict, Any, jax.Array], tuple[jax.Array, dict]]
    train_data: Callable[[], tuple[Any, Callable[[dict, np.random.Generator], dict]]]
    init_extras: Callable[[Params], dict] = _no_extras
    update_extras: Callable[[dict, Params, jax.Array, dict], dict] = _keep_extras
    # Projection applied after each optimizer update (e.g. OpenAI's clamp of the logit scale).
    constrain_params: Callable[[Params], Params] = _identity
    evaluators: Mapping[str, Callable[..., dict]] = dataclasses.field(default_factory=dict)
    # Loaded `model.init_from` params -> this model's tree (e.g. FG-CLIP grown from a CLIP checkpoint).
    adapt_initial_params: Callable[[dict], dict] = _as_is
