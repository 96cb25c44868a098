"""Cross-device helpers for losses whose reference computes them per device and averages.

Some reference losses (FG-CLIP's region terms and its synchronised ranking threshold) are computed
by every data-parallel rank on its own local batch only, and the ranks' results are then averaged:
the losses implicitly, by DDP/DeepSpeed averaging gradients, and the threshold explicitly, by an
all-reduce divided by the world size. A single-program JAX loss reproduces that with
`mean_over_batch_shards`: each device evaluates the per-device function on its slice of the batch
and the scalar results are `pmean`ed over the batch mesh axes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def batch_axis_names(axis_names: str | Sequence[str]) -> tuple[str, ...]:
    """A mesh axis name or a sequence of them as a tuple."""
    return (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)


def mean_over_batch_shards(fn: Callable[..., Any], batch_args: Sequence[jax.Array],
                           replicated_args: Sequence[jax.Array], mesh: Mesh | None,
                           axis_names: str | Sequence[str] = ("data", "fsdp")) -> Any:
    """`fn(*batch_shard, *replicated_args)` on every batch shard, its scalar outputs averaged over shards.

    batch_args: arrays whose leading axis is the global batch [B, ...]; it is split into n contiguous
    shards of b = B / n rows, n = the product of the sizes of the mesh axes `axis_names` (a name or a
    tuple, e.g. ("data", "fsdp")), shard i being the rows that `PartitionSpec(axis_names)` places on
    device i. replicated_args: arrays every device sees whole (temperatures, a carried scalar).
    `fn` must return a pytree of scalars.

    - Inside `jax.shard_map`, each device runs `fn` on its own shard only; nothing is gathered.
    - Every output leaf is `pmean`ed over `axis_names`: a plain average of the n per-device values,
      each device weighted equally whatever its shard contains (this is what a reference that
      averages per-rank results computes, and it differs from one global mean when shards hold
      different numbers of valid items). The result is the same replicated value on every device.
    - Gradients: a device's batch inputs receive 1/n times the gradient of its own output (the
      reference's DDP average); gradients w.r.t. `replicated_args` are summed over devices, i.e. they
      are the gradient of the average.
    - Mesh axes not named see replicated copies and compute the same value.
    - `mesh=None` calls `fn(*batch_args, *replicated_args)` once: the whole batch is one shard.

    Inputs sharded otherwise are resharded to that layout on entry. Raises ValueError if B is not a
    multiple of n.
    """
    if mesh is None:
        return fn(*batch_args, *replicated_args)
    axis_names = batch_axis_names(axis_names)
    n = math.prod(mesh.shape[a] for a in axis_names)
    for x in batch_args:
        if x.shape[0] % n:
            raise ValueError(f"batch {x.shape[0]} is not divisible by the {n} shards of mesh axes {axis_names}")
    batch_spec, scalar_spec = PartitionSpec(axis_names), PartitionSpec()
    batch_args, replicated_args = tuple(batch_args), tuple(replicated_args)
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        # shard_map reshards inputs on Auto axes itself but requires Explicit-axis inputs to match
        batch_args = jax.sharding.reshard(batch_args, (NamedSharding(mesh, batch_spec),) * len(batch_args))
        replicated_args = jax.sharding.reshard(replicated_args,
                                               (NamedSharding(mesh, scalar_spec),) * len(replicated_args))

    def per_device(*args):
        return jax.tree.map(lambda x: jax.lax.pmean(x, axis_names), fn(*args))

    return jax.shard_map(per_device, mesh=mesh,
                         in_specs=(batch_spec,) * len(batch_args) + (scalar_spec,) * len(replicated_args),
                         out_specs=scalar_spec)(*batch_args, *replicated_args)
