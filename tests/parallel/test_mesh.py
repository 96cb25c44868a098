"""Mesh construction and logical-axis sharding of parameters and optimizer state."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from vlalign_jax.parallel.mesh import make_mesh, resolve_mesh_shape


def test_minus_one_takes_the_remaining_devices():
    assert resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize("sizes,match", [({"data": -1, "fsdp": -1}, "at most one"),
                                         ({"data": 3, "fsdp": -1}, "does not divide"),
                                         ({"data": 2, "fsdp": 2, "tensor": 1}, "needs 4 devices")])
def test_bad_mesh_sizes_are_explained(sizes, match):
    with pytest.raises(ValueError, match=match):
        resolve_mesh_shape(sizes, 8)


def test_mesh_on_a_subset_of_devices():
    mesh = make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, jax.devices()[:4])
    assert mesh.shape == {"data": 4, "fsdp": 1, "tensor": 1} and mesh.devices.size == 4


def test_uneven_dimensions_are_replicated():
    from vlalign_jax.parallel.rules import _fit

    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    assert _fit(PartitionSpec("fsdp", None), (12, 4), mesh) == PartitionSpec(None, None)
    assert _fit(PartitionSpec("fsdp", None), (16, 4), mesh) == PartitionSpec("fsdp", None)
    assert np.prod(list(mesh.shape.values())) == 8
