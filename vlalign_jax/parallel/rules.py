"""Logical axis names -> mesh axes, in one place.

Parameters carry `embed`, `mlp`, `heads`, `vocab`; activations `act_batch`, `act_length`,
`act_embed` (separate names, so that FSDP can shard weights over `fsdp` while the batch is sharded
over `data` and `fsdp` together). A mesh axis that does not divide a dimension is dropped for that
dimension (the dimension is replicated) rather than failing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide their dimension (tiny test models, odd vocab sizes)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in names)
        fitted.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract values."""
    specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    # unbox without sharding constraints: these are shapes, not values being traced
    unboxed = jax.tree.map(lambda b: b.unbox(apply_constraint=False) if isinstance(b, nn.Partitioned) else b,
                           abstract_boxed, is_leaf=lambda b: isinstance(b, nn.Partitioned))
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)), mesh_specs, unboxed,
                        is_leaf=lambda s: isinstance(s, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data` x `fsdp`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
