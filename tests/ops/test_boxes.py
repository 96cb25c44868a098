"""`vlalign_jax.ops.boxes` against torchvision: conversions, areas, IoU, GIoU, degenerate boxes.

Tolerance 1e-6 absolute: both sides compute in fp32 with the same formulas in the same order, and
IoU/GIoU values lie in [-1, 1], so a few ulps of rounding is all that can differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlalign_jax.ops import boxes as box_ops
from vlalign_jax.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    valid_boxes,
)

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

ATOL = 1e-6

# Jitted: one compilation per shape instead of one per primitive keeps the file fast; test_jit checks
# that the eager functions give the same values.
box_area = jax.jit(box_ops.box_area)
box_iou = jax.jit(box_ops.box_iou)
generalized_box_iou = jax.jit(box_ops.generalized_box_iou)
generalized_box_iou_pairs = jax.jit(box_ops.generalized_box_iou_pairs)
iou_pairs = jax.jit(box_ops.iou_pairs)

# Valid xyxy boxes covering the cases that matter for IoU/GIoU; pairs (i, j) across this list include
# identical, disjoint, nested, edge-touching and corner-touching boxes.
EDGE_CASE_BOXES = np.array([
    [0.0, 0.0, 2.0, 2.0],     # 0
    [0.0, 0.0, 2.0, 2.0],     # 1 identical to 0
    [0.5, 0.5, 1.5, 1.0],     # 2 nested in 0
    [2.0, 0.0, 3.0, 2.0],     # 3 touches 0 along the edge x = 2
    [2.0, 2.0, 3.0, 4.0],     # 4 touches 0 at the corner (2, 2)
    [5.0, 6.0, 7.0, 9.0],     # 5 disjoint from all others
    [-1.0, -1.0, 4.0, 5.0],   # 6 contains 0..4
    [1.0, -3.0, 1.5, 8.0],    # 7 crosses 0 as a vertical bar
], dtype=np.float32)

# Zero-area boxes: the union of two of them is 0 and torchvision gives NaN.
ZERO_AREA_BOXES = np.array([
    [1.0, 1.0, 1.0, 1.0],     # a point inside box 0
    [0.0, 0.0, 0.0, 2.0],     # a segment on box 0's left edge
    [3.0, 3.0, 3.0, 3.0],     # a point outside every box but 6
    [1.0, 1.0, 1.0, 1.0],     # identical to the first point
], dtype=np.float32)


def random_xyxy(rng: np.random.Generator, n: int, scale: float = 10.0) -> np.ndarray:
    corners = rng.uniform(-scale, scale, size=(n, 2, 2)).astype(np.float32)
    low, high = corners.min(axis=1), corners.max(axis=1)  # [n, 2] each: (x, y)
    return np.concatenate([low, high], axis=-1)


def box_sets() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    boxes_a = np.concatenate([EDGE_CASE_BOXES, random_xyxy(rng, 40)])
    boxes_b = np.concatenate([EDGE_CASE_BOXES, random_xyxy(rng, 30), random_xyxy(rng, 10, scale=2.0)])
    return boxes_a, boxes_b


def torch_inter_union(boxes_a: np.ndarray, boxes_b: np.ndarray):
    """Independent pairwise intersection and union (the DETR formula), in torch fp32."""
    a, b = torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)
    wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = torchvision.ops.box_area(a)[:, None] + torchvision.ops.box_area(b) - inter
    return inter.numpy(), union.numpy()


def test_box_iou_matches_torchvision():
    boxes_a, boxes_b = box_sets()
    iou, union = box_iou(boxes_a, boxes_b)
    expected_iou = torchvision.ops.box_iou(torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)).numpy()
    _, expected_union = torch_inter_union(boxes_a, boxes_b)
    assert iou.shape == union.shape == (len(boxes_a), len(boxes_b))
    np.testing.assert_allclose(np.asarray(iou), expected_iou, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(union), expected_union, rtol=1e-6, atol=ATOL)
    # The edge cases by name, so a swapped min/max or a missing clamp is caught even if both agreed.
    assert iou[0, 1] == 1.0 and iou[0, 2] == pytest.approx(0.125)
    assert iou[0, 3] == 0.0 and iou[0, 4] == 0.0 and iou[0, 5] == 0.0


def test_generalized_box_iou_matches_torchvision():
    boxes_a, boxes_b = box_sets()
    giou = generalized_box_iou(boxes_a, boxes_b)
    expected = torchvision.ops.generalized_box_iou(torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)).numpy()
    assert giou.shape == (len(boxes_a), len(boxes_b))
    np.testing.assert_allclose(np.asarray(giou), expected, rtol=0, atol=ATOL)
    assert (expected < 0).any() and (expected > 0.5).any()  # the sets do cover both signs
    assert giou[0, 1] == 1.0                                  # identical
    assert giou[0, 5] < 0 and giou[0, 3] == 0.0                # disjoint; touching edges, no gap


def test_degenerate_boxes_follow_torchvision():
    boxes = np.concatenate([EDGE_CASE_BOXES[:1], ZERO_AREA_BOXES, EDGE_CASE_BOXES[5:7]])
    expected_iou = torchvision.ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    expected_giou = torchvision.ops.generalized_box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    iou, _ = box_iou(boxes, boxes)
    giou = generalized_box_iou(boxes, boxes)
    np.testing.assert_allclose(np.asarray(iou), expected_iou, rtol=0, atol=ATOL, equal_nan=True)
    np.testing.assert_allclose(np.asarray(giou), expected_giou, rtol=0, atol=ATOL, equal_nan=True)
    # As documented: NaN exactly where both boxes have zero area.
    zero_area = np.asarray(box_area(boxes)) == 0
    both_zero = zero_area[:, None] & zero_area[None, :]
    np.testing.assert_array_equal(np.isnan(np.asarray(giou)), both_zero)
    np.testing.assert_array_equal(np.isnan(np.asarray(iou)), both_zero)
    assert both_zero.any() and (zero_area[:, None] & ~zero_area[None, :]).any()
    # The evaluation IoU's eps turns those into 0.
    pairs_a, pairs_b = np.repeat(boxes, len(boxes), axis=0), np.tile(boxes, (len(boxes), 1))
    eval_iou = np.asarray(iou_pairs(pairs_a, pairs_b)).reshape(len(boxes), len(boxes))
    np.testing.assert_array_equal(eval_iou[both_zero], 0.0)
    np.testing.assert_allclose(eval_iou[~both_zero], expected_iou[~both_zero], rtol=0, atol=ATOL)


def test_pairs_equal_the_diagonal():
    boxes_a, boxes_b = box_sets()
    n = min(len(boxes_a), len(boxes_b))
    boxes_a, boxes_b = boxes_a[:n], boxes_b[::-1][:n].copy()  # the edge cases meet random boxes too
    boxes_b[:len(EDGE_CASE_BOXES)] = EDGE_CASE_BOXES[[1, 0, 0, 0, 0, 0, 0, 0]]  # identical, nested, touching, ...
    torch_a, torch_b = torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)
    expected_giou = torch.diag(torchvision.ops.generalized_box_iou(torch_a, torch_b)).numpy()
    np.testing.assert_allclose(np.asarray(generalized_box_iou_pairs(boxes_a, boxes_b)), expected_giou,
                               rtol=0, atol=ATOL)
    # iou_pairs against the reference's evaluation formula, written out: inter / (a1 + a2 - inter + 1e-16).
    wh = (torch.min(torch_a[:, 2:], torch_b[:, 2:]) - torch.max(torch_a[:, :2], torch_b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    expected_iou = inter / (torchvision.ops.box_area(torch_a) + torchvision.ops.box_area(torch_b) - inter + 1e-16)
    np.testing.assert_allclose(np.asarray(iou_pairs(boxes_a, boxes_b)), expected_iou.numpy(), rtol=0, atol=ATOL)


def test_leading_batch_axes():
    rng = np.random.default_rng(1)
    boxes_a = random_xyxy(rng, 2 * 5).reshape(2, 5, 4)
    boxes_b = random_xyxy(rng, 2 * 3).reshape(2, 3, 4)
    giou = np.asarray(generalized_box_iou(boxes_a, boxes_b))
    iou = np.asarray(box_iou(boxes_a, boxes_b)[0])
    assert giou.shape == iou.shape == (2, 5, 3)
    for i in range(2):
        expected = torchvision.ops.generalized_box_iou(torch.from_numpy(boxes_a[i]), torch.from_numpy(boxes_b[i]))
        np.testing.assert_allclose(giou[i], expected.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(iou[i], np.asarray(box_iou(boxes_a[i], boxes_b[i])[0]), rtol=0, atol=0)


@pytest.mark.parametrize("ours, in_fmt, out_fmt", [
    (box_cxcywh_to_xyxy, "cxcywh", "xyxy"),
    (box_xyxy_to_cxcywh, "xyxy", "cxcywh"),
    (box_xywh_to_xyxy, "xywh", "xyxy"),
    (box_xyxy_to_xywh, "xyxy", "xywh"),
])
def test_conversions_match_box_convert(ours, in_fmt, out_fmt):
    rng = np.random.default_rng(2)
    boxes = np.abs(rng.normal(size=(3, 7, 4))).astype(np.float32)  # leading axes, w, h >= 0
    expected = torchvision.ops.box_convert(torch.from_numpy(boxes.reshape(-1, 4)), in_fmt, out_fmt)
    # Same float operations in the same order: exact.
    np.testing.assert_array_equal(np.asarray(ours(boxes)), expected.numpy().reshape(boxes.shape))


def test_conversions_round_trip():
    rng = np.random.default_rng(3)
    xyxy = random_xyxy(rng, 50)
    # Up to rounding of the intermediate format, on coordinates of magnitude <= 10.
    np.testing.assert_allclose(np.asarray(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy))), xyxy, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(box_xywh_to_xyxy(box_xyxy_to_xywh(xyxy))), xyxy, rtol=0, atol=2e-6)
    # A RefCOCO annotation (xywh pixels, from the CLIP-VG data loader's comment) by hand.
    xywh = np.array([303.58, 69.03, 293.29, 425.79], np.float32)
    np.testing.assert_allclose(np.asarray(box_xywh_to_xyxy(xywh)), [303.58, 69.03, 596.87, 494.82], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(box_xyxy_to_cxcywh(box_xywh_to_xyxy(xywh))),
                               [450.225, 281.925, 293.29, 425.79], rtol=1e-6)


def test_box_area_matches_torchvision():
    boxes = np.concatenate(box_sets() + (ZERO_AREA_BOXES,))
    np.testing.assert_allclose(np.asarray(box_area(boxes)), torchvision.ops.box_area(torch.from_numpy(boxes)).numpy(),
                               rtol=1e-6, atol=0)


def test_valid_boxes():
    boxes = np.array([
        [0.0, 0.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],      # zero area is valid
        [1.0, 0.0, 0.5, 1.0],      # x2 < x1
        [0.0, 1.0, 1.0, 0.5],      # y2 < y1
        [0.0, 0.0, np.nan, 1.0],
        [0.0, -np.inf, 1.0, 1.0],
    ], np.float32)
    np.testing.assert_array_equal(valid_boxes(boxes), [True, True, False, False, False, False])
    assert valid_boxes(boxes.reshape(2, 3, 4)).shape == (2, 3)
    assert valid_boxes(jnp.asarray(boxes[:2])).all()


def test_jit():
    boxes_a, boxes_b = box_sets()
    n = min(len(boxes_a), len(boxes_b))
    eager = np.asarray(box_ops.generalized_box_iou(boxes_a, boxes_b))
    np.testing.assert_allclose(np.asarray(generalized_box_iou(boxes_a, boxes_b)), eager, rtol=0, atol=ATOL)
    pairs_a, pairs_b = boxes_a[:n], boxes_b[:n]
    eager_giou_pairs = np.asarray(box_ops.generalized_box_iou_pairs(pairs_a, pairs_b))
    np.testing.assert_allclose(np.asarray(generalized_box_iou_pairs(pairs_a, pairs_b)), eager_giou_pairs,
                               rtol=0, atol=ATOL)
    np.testing.assert_allclose(eager_giou_pairs, np.diag(eager)[:n], rtol=0, atol=ATOL)
    eager_iou = np.asarray(box_ops.box_iou(boxes_a, boxes_b)[0])
    np.testing.assert_allclose(np.asarray(box_iou(boxes_a, boxes_b)[0]), eager_iou, rtol=0, atol=ATOL)
    eager_iou_pairs = np.asarray(box_ops.iou_pairs(pairs_a, pairs_b))
    np.testing.assert_allclose(np.asarray(iou_pairs(pairs_a, pairs_b)), eager_iou_pairs, rtol=0, atol=ATOL)
    np.testing.assert_allclose(eager_iou_pairs, np.diag(eager_iou)[:n], rtol=0, atol=ATOL)
