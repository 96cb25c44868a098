"""`roi_align_tokens` (per-image NaFlex patch grids in one padded token sequence) against
torchvision's roi_align run image by image on each image's own grid, and `pool_token_regions`
against the same pooling done per image with the square-map `pool_regions`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlalign_jax.ops import roi_align_tokens
from vlalign_jax.ops.region_pooling import pool_regions, pool_token_regions

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

MAX_TOKENS, CHANNELS, BOXES = 24, 3, 6
GRIDS = np.array([[4, 6], [6, 4], [1, 24], [3, 5]], np.int32)  # (rows, cols); the last is padded


def _case(seed: int = 0):
    """Tokens [B, N, C] (NaN in the padding), grids, boxes in cell units crossing the borders."""
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(len(GRIDS), MAX_TOKENS, CHANNELS)).astype(np.float32)
    for b, (h, w) in enumerate(GRIDS):
        tokens[b, h * w:] = np.nan
    boxes = np.zeros((len(GRIDS), BOXES, 4), np.float32)
    for b, (h, w) in enumerate(GRIDS):
        x1, y1 = rng.uniform(-1.0, w, BOXES), rng.uniform(-1.0, h, BOXES)
        x2, y2 = x1 + rng.uniform(0.0, w, BOXES), y1 + rng.uniform(0.0, h, BOXES)
        boxes[b] = np.stack([x1, y1, x2, y2], -1)
        boxes[b, 0] = [0.0, 0.0, w, h]           # the whole grid
        boxes[b, 1] = [w - 0.3, h - 0.2, w, h]    # smaller than a cell at the corner
    mask = np.ones(boxes.shape[:2], bool)
    mask[3, 4:] = False
    boxes[3, 5] = np.nan
    return tokens, boxes, mask


def _torchvision_per_image(tokens, boxes, mask, cotangent, output_size, sampling_ratio, aligned):
    values = np.zeros(boxes.shape[:2] + output_size + (CHANNELS,), np.float32)
    grads = np.zeros_like(tokens)
    for b, (h, w) in enumerate(GRIDS):
        grid = torch.tensor(tokens[b, :h * w].reshape(1, h, w, CHANNELS)).permute(0, 3, 1, 2)
        grid = grid.contiguous().requires_grad_(True)
        rois = torch.tensor(np.concatenate([np.zeros((mask[b].sum(), 1), np.float32), boxes[b][mask[b]]], 1))
        pooled = torchvision.ops.roi_align(grid, rois, output_size, 1.0, sampling_ratio, aligned)
        pooled.backward(torch.tensor(cotangent[b][mask[b]]).permute(0, 3, 1, 2))
        values[b][mask[b]] = pooled.detach().permute(0, 2, 3, 1).numpy()
        grads[b, :h * w] = grid.grad.permute(0, 2, 3, 1).reshape(h * w, CHANNELS).numpy()
    return values, grads


@pytest.mark.parametrize(("output_size", "sampling_ratio", "aligned"),
                         [((1, 1), -1, True), ((2, 3), -1, False), ((2, 2), 2, True)])
def test_matches_torchvision_on_each_images_own_grid(output_size, sampling_ratio, aligned):
    tokens, boxes, mask = _case()
    cotangent = np.random.default_rng(1).normal(size=boxes.shape[:2] + output_size + (CHANNELS,))
    cotangent = cotangent.astype(np.float32)

    @jax.jit
    def forward_and_grad(tokens, grids, boxes, cotangent):
        pool = lambda t: roi_align_tokens(t, grids, boxes, output_size, sampling_ratio=sampling_ratio,
                                          aligned=aligned, box_mask=jnp.asarray(mask))
        values, vjp = jax.vjp(pool, tokens)
        return values, vjp(cotangent)[0]

    ours, our_grad = forward_and_grad(tokens, GRIDS, boxes, cotangent)
    theirs, their_grad = _torchvision_per_image(tokens, boxes, mask, cotangent, output_size, sampling_ratio,
                                                aligned)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    valid = np.arange(MAX_TOKENS)[None, :] < (GRIDS[:, 0] * GRIDS[:, 1])[:, None]
    np.testing.assert_allclose(np.asarray(our_grad)[valid], their_grad[valid], atol=1e-5, rtol=1e-5)
    assert not np.any(np.asarray(our_grad)[~valid]), "padding tokens get no gradient"
    assert np.all(np.isfinite(np.asarray(ours))), "NaN padding tokens and boxes must not leak"


def test_a_tight_grid_bound_is_exact_when_it_holds():
    tokens, boxes, mask = _case()
    pool = jax.jit(roi_align_tokens, static_argnames=("output_size", "max_grid"))
    default = pool(tokens, GRIDS, boxes, 1, box_mask=mask)
    tight = pool(tokens, GRIDS, boxes, 1, box_mask=mask, max_grid=(6, 24))
    np.testing.assert_allclose(tight, default, atol=1e-6)


def test_pool_token_regions_equals_square_pooling_per_image():
    """Normalised boxes scale by each image's own (w, h), as FG-CLIP 2's reference does."""
    tokens, _, _ = _case()
    rng = np.random.default_rng(2)
    corners = np.sort(rng.uniform(0.0, 1.0, (len(GRIDS), BOXES, 2, 2)), axis=2)
    normalized = np.concatenate([corners[:, :, 0], corners[:, :, 1]], -1).astype(np.float32)  # x1 y1 x2 y2
    mask = np.ones(normalized.shape[:2], bool)
    ours = jax.jit(pool_token_regions)(tokens, GRIDS, normalized, mask)
    for b, (h, w) in enumerate(GRIDS):
        grid = tokens[None, b, :h * w].reshape(1, h, w, CHANNELS)
        expected = jax.jit(pool_regions)(grid, normalized[None, b], mask[None, b])[0]
        np.testing.assert_allclose(ours[b], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


def test_rejects_bad_shapes():
    tokens, boxes, mask = _case()
    with pytest.raises(ValueError, match="tokens must be"):
        roi_align_tokens(tokens[0], GRIDS, boxes, 1)
    with pytest.raises(ValueError, match="grid_shapes must be"):
        roi_align_tokens(tokens, GRIDS[:2], boxes, 1)
    with pytest.raises(ValueError, match="boxes must be"):
        roi_align_tokens(tokens, GRIDS, boxes[:2], 1)
