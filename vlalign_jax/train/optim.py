"""The optax chain: AdamW with masked weight decay, warmup + cosine, global-norm clipping,
per-module learning-rate multipliers and freezing by parameter-path patterns.

Paths are slash-joined (`vision_model/encoder/layers_3/mlp/fc1/kernel`); patterns are regular
expressions matched with `re.fullmatch`, first match wins.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import optax

FROZEN = "frozen"


def path_str(path: tuple) -> str:
    """A tree path as `a/b/c`, the form every pattern in the config is written against."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


DECAY_RULES = ("matrices", "all_but_norms_and_biases", "all")


def decays(path: str, ndim: int, position_embeddings: bool = False, rule: str = "matrices") -> bool:
    """Whether weight decay applies to the parameter at `path`.

    `matrices` (default): matrices only, not biases, norms, class embeddings or scalars; position
    embeddings only with `position_embeddings=True` (open_clip's and DeGLA's rule: every tensor of
    two or more dimensions, `optim.decay_position_embeddings`).
    `all_but_norms_and_biases`: the Hugging Face Trainer's rule, used by FG-CLIP 1 and 2's released
    training: everything except LayerNorm parameters (our leaves named `scale`) and any parameter
    whose name contains "bias" (so `logit_bias` is spared but `logit_scale`, embeddings and the
    class embedding are decayed).
    `all`: every parameter (plain AdamW over all trainable tensors, CLIP-VG's released training).
    """
    if rule == "all":  # CLIP-VG's AdamW: every trainable tensor, biases and norms included
        return True
    if rule == "all_but_norms_and_biases":
        return "bias" not in path and path.rsplit("/", 1)[-1] != "scale"
    if rule != "matrices":
        raise ValueError(f"unknown optim.decay_rule {rule!r}; expected one of {DECAY_RULES}")
    return ndim >= 2 and (position_embeddings or "position_embedding" not in path)


def warmup_steps(optim: Mapping[str, Any], total_steps: int) -> int:
    """`optim.warmup_steps`, or when `optim.warmup_fraction` > 0, ceil(fraction * total_steps) (the
    Hugging Face Trainer's `warmup_ratio`, FG-CLIP 2's recipe)."""
    fraction = optim.get("warmup_fraction", 0.0)
    return math.ceil(fraction * total_steps) if fraction > 0 else optim["warmup_steps"]


def learning_rate_schedule(lr: float, warmup_steps: int, total_steps: int,
                           final_lr_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine decay to `lr * final_lr_fraction` at `total_steps`."""
    decay_steps = max(total_steps - warmup_steps, 1)
    cosine = optax.cosine_decay_schedule(lr, decay_steps, alpha=final_lr_fraction)
    if warmup_steps <= 0:
        return cosine
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), cosine], [warmup_steps])


def schedule_from_config(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """The learning-rate schedule `config.optim` describes (the optimizer and the logged lr share it)."""
    return learning_rate_schedule(optim["lr"], warmup_steps(optim, total_steps), total_steps,
                                  optim.get("final_lr_fraction", 0.0))


def param_labels(params: Any, lr_multipliers: Mapping[str, float], freeze: Sequence[str]) -> Any:
    """Label each leaf `frozen` or `lr_x<multiplier>` from the first matching pattern (default x1)."""

    def label(path: tuple, _leaf: Any) -> str:
        name = path_str(path)
        if any(re.fullmatch(p, name) for p in freeze):
            return FROZEN
        for pattern, multiplier in lr_multipliers.items():
            if re.fullmatch(pattern, name):
                return f"lr_x{float(multiplier)}"
        return "lr_x1.0"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optim: Mapping[str, Any], total_steps: int, params: Any) -> optax.GradientTransformation:
    """Build the chain from `config.optim` (lr, warmup_steps or warmup_fraction, weight_decay, decay_rule,
    decay_position_embeddings, b1, b2, eps, max_grad_norm, final_lr_fraction, lr_multipliers, freeze)."""
    labels = param_labels(params, dict(optim.get("lr_multipliers", {})), tuple(optim.get("freeze", ())))
    schedule = schedule_from_config(optim, total_steps)
    position = bool(optim.get("decay_position_embeddings", False))
    rule = optim.get("decay_rule", "matrices")
    decays("", 0, position, rule)  # an unknown rule fails here, before any step
    decay_mask = lambda p: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, x: decays(path_str(path), x.ndim, position, rule), p)

    def group(multiplier: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.scale_by_adam(optim.get("b1", 0.9), optim.get("b2", 0.98), optim.get("eps", 1e-6)),
            optax.add_decayed_weights(optim["weight_decay"], mask=decay_mask),
            optax.scale_by_learning_rate(lambda step: schedule(step) * multiplier),
        )

    groups = {name: group(float(name[len("lr_x"):])) for name in set(jax.tree.leaves(labels)) if name != FROZEN}
    groups[FROZEN] = optax.set_to_zero()
    frozen_mask = jax.tree.map(lambda name: name == FROZEN, labels)
    steps = [optax.masked(optax.set_to_zero(), frozen_mask)]  # frozen grads do not count in the norm
    if optim.get("max_grad_norm"):
        steps.append(optax.clip_by_global_norm(optim["max_grad_norm"]))
    steps.append(optax.multi_transform(groups, labels))
    return optax.chain(*steps)
