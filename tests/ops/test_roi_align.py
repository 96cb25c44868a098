"""Parity of `vlalign_jax.ops.roi_align` with `torchvision.ops.roi_align`: values, feature grads.

Tolerance 1e-5: both sides compute in fp32 with the same sample positions (the port keeps
torchvision's float operations and their order), so outputs differ only by the order in which
the bilinear products are summed, a few ulps on values of order 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlalign_jax.ops import roi_align

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

ATOL = RTOL = 1e-5
BATCH, HEIGHT, WIDTH, CHANNELS = 2, 7, 9, 3  # a non-square map catches swapped axes
H, W = HEIGHT, WIDTH

# Boxes in feature-cell units (divided by spatial_scale before use), (x1, y1, x2, y2).
EDGE_CASE_BOXES = np.array([
    [0.0, 0.0, W, H],                  # the whole map, touching every border
    [-2.0, -3.0, W + 2.5, H + 3.0],    # larger than the map on every side
    [W - 2.0, H - 1.5, W, H],          # touching the bottom-right corner
    [-1.3, 2.0, 3.0, H + 0.7],         # crossing the left and bottom borders
    [W - 1.0, -2.0, W + 1.5, 1.0],     # crossing the right and top borders
    [W + 2.0, 1.0, W + 5.0, 3.0],      # entirely right of the map
    [-6.0, -5.0, -3.0, -2.0],          # entirely above-left of the map
    [-3.0, -3.0, -1.2, -1.1],          # outside, just beyond the band where samples count
    [2.3, 3.1, 2.6, 3.4],              # smaller than a cell
    [4.0, 2.0, 4.0, 2.0],              # zero size
    [3.5, 1.0, 3.5, 5.0],              # zero width
    [W - 0.5, H - 0.5, W - 0.5, H - 0.5],  # zero size; samples exactly on x = W, y = H
    [W + 0.5, H + 0.5, W + 0.5, H + 0.5],  # zero size; aligned samples exactly on x = W, y = H
    [5.0, 5.0, 3.0, 4.0],              # inverted (x2 < x1, y2 < y1)
], np.float32)


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random boxes in cell units, mostly inside the map, some crossing its border."""
    x1 = rng.uniform(-1.5, W, count)
    y1 = rng.uniform(-1.5, H, count)
    x2 = x1 + rng.uniform(0.0, 0.8 * W, count)
    y2 = y1 + rng.uniform(0.0, 0.8 * H, count)
    return np.stack([x1, y1, x2, y2], axis=-1).astype(np.float32)


def _case(seed: int = 0):
    """Features [B, H, W, C], boxes [B, N, 4] in cell units, a mask with 11 and 14 valid boxes."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(BATCH, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)
    edge = EDGE_CASE_BOXES
    boxes = np.stack([
        np.concatenate([edge[:7], _random_boxes(rng, 7)]),
        np.concatenate([edge[7:], _random_boxes(rng, 7)]),
    ])
    mask = np.ones(boxes.shape[:2], bool)
    mask[0, [8, 9, 13]] = False  # image 0 has 11 valid boxes, image 1 all 14
    boxes[0, 9] = np.nan  # padding may hold anything
    return features, boxes, mask


def _torchvision(features, boxes, mask, cotangent, output_size, spatial_scale, sampling_ratio,
                 aligned):
    """torchvision's output as [B, N, out_h, out_w, C] (zeros at masked boxes) and the feature
    gradient for `cotangent` (its masked entries unused)."""
    out_h, out_w = output_size
    index = np.argwhere(mask)  # [K, 2] (image, box)
    rois = np.concatenate([index[:, :1].astype(np.float32), boxes[mask]], axis=1)
    nchw = torch.tensor(features).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    pooled = torchvision.ops.roi_align(nchw, torch.tensor(rois), (out_h, out_w),
                                       spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                                       aligned=aligned)                 # [K, C, out_h, out_w]
    pooled.backward(torch.tensor(cotangent[mask]).permute(0, 3, 1, 2))
    values = np.zeros(boxes.shape[:2] + (out_h, out_w, features.shape[-1]), np.float32)
    values[mask] = pooled.detach().permute(0, 2, 3, 1).numpy()
    return values, nchw.grad.permute(0, 2, 3, 1).numpy()


OUTPUT_SIZES = [(1, 1), (2, 2), (3, 5), (7, 7)]


@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_matches_torchvision(sampling_ratio, aligned):
    """Every output size and spatial scale, on the edge-case and random boxes of `_case`."""
    features, cell_boxes, mask = _case()

    @jax.jit
    def forward_and_grad(features, boxes, spatial_scale, cotangents):
        """Values and feature gradients for every output size (one compilation for all)."""
        results = []
        for output_size, cotangent in zip(OUTPUT_SIZES, cotangents):
            # A bound that covers every test box's adaptive grid, so the comparison is exact
            # everywhere (the default bound is tested separately below).
            bound = max(math.ceil((H + 7) / output_size[0]), math.ceil((W + 6) / output_size[1]))
            def pool(f, output_size=output_size, bound=bound):
                return roi_align(f, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                                 box_mask=jnp.asarray(mask), max_adaptive_samples=bound)

            values, vjp = jax.vjp(pool, features)
            results.append((values, vjp(cotangent)[0]))
        return results

    rng = np.random.default_rng(1)
    for spatial_scale in (1.0, 0.5, 1 / 16):
        boxes = (cell_boxes / np.float32(spatial_scale)).astype(np.float32)
        cotangents = [rng.normal(size=boxes.shape[:2] + size + (CHANNELS,)).astype(np.float32)
                      for size in OUTPUT_SIZES]
        results = forward_and_grad(features, boxes, np.float32(spatial_scale), cotangents)
        for output_size, cotangent, (ours, our_grad) in zip(OUTPUT_SIZES, cotangents, results):
            theirs, their_grad = _torchvision(features, boxes, mask, cotangent, output_size,
                                              spatial_scale, sampling_ratio, aligned)
            where = f"{output_size=}, {spatial_scale=}"
            np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL, err_msg=where)
            np.testing.assert_allclose(our_grad, their_grad, atol=ATOL, rtol=RTOL,
                                       err_msg=f"feature gradient, {where}")
            assert not np.any(np.asarray(ours)[~mask]), "masked boxes must pool to zeros"


@pytest.mark.parametrize(("aligned", "sampling_ratio", "output_size"), [
    (False, 1, (7, 7)), (True, -1, (1, 1)), (True, 2, (3, 5)), (False, -1, (2, 2)),
])
def test_border_ties_when_compiled_optimised(aligned, sampling_ratio, output_size):
    """Half-cell boxes put samples exactly on the borders, where y = height counts and
    height + 1 ulp does not, so one rounding more or less changes the value. conftest compiles at
    backend optimisation level 0; production compiles at the default, where XLA:CPU contracts
    `a * b + c` to an FMA and divides by reciprocals, so this test compiles at level 3."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(BATCH, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)
    corners = np.round(rng.uniform(-3.0, W + 3.0, size=(BATCH, 150, 2, 2)) * 2) / 2
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1).astype(np.float32)
    mask = np.ones(boxes.shape[:2], bool)

    def pool(features, boxes, spatial_scale):
        return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                         max_adaptive_samples=W + 7)

    args = (features, boxes, np.float32(1.0))
    compiled = jax.jit(pool).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 3})
    for spatial_scale in (1.0, 0.5):
        scaled = (boxes / np.float32(spatial_scale)).astype(np.float32)
        ours = compiled(features, scaled, np.float32(spatial_scale))
        theirs, _ = _torchvision(features, scaled, mask, np.zeros(ours.shape, np.float32),
                                 output_size, spatial_scale, sampling_ratio, aligned)
        np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL, err_msg=f"{spatial_scale=}")


@pytest.mark.parametrize("aligned", [True, False])
def test_default_bound_is_exact_for_boxes_in_the_band(aligned):
    """The default `ceil((size + 1) / out)` covers boxes up to half a cell past the border."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=(1, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)
    boxes = np.concatenate([
        np.array([[-0.5, -0.5, W + 0.5, H + 0.5], [0.0, 0.0, W, H], [1.0, 0.5, W, H - 2.0]]),
        np.clip(_random_boxes(rng, 5), -0.5, [W + 0.5, H + 0.5, W + 0.5, H + 0.5]),
    ]).astype(np.float32)[None]
    mask = np.ones(boxes.shape[:2], bool)
    for output_size in [(1, 1), (3, 2)]:
        ours = jax.jit(roi_align, static_argnums=2, static_argnames="aligned")(
            features, boxes, output_size, aligned=aligned)
        cotangent = np.zeros(np.shape(ours), np.float32)
        theirs, _ = _torchvision(features, boxes, mask, cotangent, output_size, 1.0, -1, aligned)
        np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL, err_msg=f"{output_size}")


def test_grid_past_the_bound_is_clipped():
    """A box whose adaptive grid exceeds the bound on both axes is sampled `bound` times per axis,
    which is torchvision with `sampling_ratio=bound`."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(1, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)
    boxes = np.array([[[-4.0, -5.0, W + 3.0, H + 4.0]]], np.float32)
    ours = jax.jit(lambda f, b: roi_align(f, b, 2, max_adaptive_samples=3))(features, boxes)
    theirs, _ = _torchvision(features, boxes, np.ones((1, 1), bool),
                             np.zeros(ours.shape, np.float32), (2, 2), 1.0, 3, True)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL)


def test_jit_with_fixed_box_count_and_dtypes():
    """One compilation serves any box values and mask; bf16 features give bf16."""
    features, cell_boxes, mask = _case(seed=4)
    traces = []

    @jax.jit
    def pool(features, boxes, mask):
        traces.append(None)
        return roi_align(features, boxes, 1, spatial_scale=1 / 16, box_mask=mask)

    boxes = cell_boxes * 16
    shifted = pool(features, boxes + 3.0, ~mask)
    jitted = pool(features, boxes, mask)
    assert len(traces) == 1  # new box values and mask, same compilation
    assert jitted.shape == (BATCH, cell_boxes.shape[1], 1, 1, CHANNELS)
    theirs, _ = _torchvision(features, boxes, mask, np.zeros(jitted.shape, np.float32), (1, 1),
                             1 / 16, -1, True)
    # The default bound is exact for boxes of extent <= size + 1 cells (the larger one differs).
    fits = ((cell_boxes[..., 3] - cell_boxes[..., 1] <= H + 1)
            & (cell_boxes[..., 2] - cell_boxes[..., 0] <= W + 1))
    assert (mask & ~fits).sum() == 1
    np.testing.assert_allclose(np.asarray(jitted)[fits], theirs[fits], atol=ATOL, rtol=RTOL)
    assert not np.any(np.asarray(shifted)[mask])
    low = pool(jnp.asarray(features, jnp.bfloat16), boxes, mask)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), jitted, atol=0.05, rtol=0.02)


def test_box_gradient_is_the_derivative_of_the_interpolation():
    """torchvision gives boxes no gradient; ours is the derivative of the sampled bilinear values,
    checked by central differences on a box whose samples stay inside their cells (there the
    output is linear in each coordinate, so the difference quotient is exact up to rounding)."""
    rng = np.random.default_rng(5)
    features = jnp.asarray(rng.normal(size=(1, HEIGHT, WIDTH, CHANNELS)).astype(np.float32))
    # aligned, 2x2 samples per bin: x samples at 1.5 and 2.9, y samples at 2.55 and 4.25.
    box = np.array([1.3, 2.2, 4.1, 5.6], np.float32)
    weights = jnp.asarray(rng.normal(size=(CHANNELS,)).astype(np.float32))

    @jax.jit
    def objective(boxes):  # [K, 4] boxes of one image -> [K]
        return (roi_align(features, boxes[None], 1, sampling_ratio=2) * weights).sum(
            axis=(0, 2, 3, 4))

    grad = np.asarray(jax.jit(jax.grad(lambda b: objective(b[None])[0]))(jnp.asarray(box)))
    step = np.float32(1e-2)
    shifts = step * np.eye(4, dtype=np.float32)
    numeric = (objective(box + shifts) - objective(box - shifts)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, atol=1e-3, rtol=1e-3)
    assert np.all(grad != 0)


def test_masked_boxes_get_no_gradient_even_when_nan():
    features, cell_boxes, mask = _case(seed=6)

    def objective(features, boxes):
        return roi_align(features, boxes, (2, 3), box_mask=jnp.asarray(mask)).sum()

    feature_grad, box_grad = jax.jit(jax.grad(objective, argnums=(0, 1)))(features, cell_boxes)
    assert np.all(np.isfinite(feature_grad)) and np.all(np.isfinite(box_grad))
    assert not np.any(np.asarray(box_grad)[~mask])


def test_box_inverted_on_one_axis_pools_to_zero():
    """torchvision raises here (a negative sample-grid size); the port gives zeros."""
    features = np.ones((1, HEIGHT, WIDTH, CHANNELS), np.float32)
    boxes = np.array([[[5.0, 1.0, 3.0, 4.0], [1.0, 5.0, 4.0, 3.0]]], np.float32)
    ours = jax.jit(lambda f, b: roi_align(f, b, (2, 2)))(features, boxes)
    np.testing.assert_array_equal(ours, 0.0)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"output_size": 0}, ValueError),
    ({"output_size": (2, 2, 2)}, ValueError),
    ({"max_adaptive_samples": 0}, ValueError),
    ({"sampling_ratio": 1.5}, TypeError),
    ({"boxes": jnp.zeros((2, 2, 4))}, ValueError),
])
def test_rejects_bad_arguments(kwargs, error):
    call = {"features": jnp.zeros((1, 4, 4, 2)), "boxes": jnp.zeros((1, 2, 4)), "output_size": 1}
    with pytest.raises(error):
        roi_align(**(call | kwargs))
