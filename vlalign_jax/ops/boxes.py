"""Axis-aligned boxes: format conversions, areas, IoU and generalized IoU (GIoU).

Formats (last axis of size 4):

    xyxy    (x1, y1, x2, y2): corners; every function below that takes boxes expects this one
    cxcywh  (cx, cy, w, h):   centre and size; what grounding heads predict (CLIP-VG, TransVG, DETR)
    xywh    (x, y, w, h):     top-left corner and size; COCO and RefCOCO annotations

Conversions use torchvision's float operations in the same order (`torchvision.ops.box_convert`),
so they agree with it bit for bit. `box_iou` and `generalized_box_iou` follow DETR
(`util/box_ops.py`), which CLIP-VG copies (`utils/box_utils.py`) and torchvision matches; GIoU is
Rezatofighi et al., CVPR 2019. `iou_pairs` is the reference's evaluation IoU (`bbox_iou`, used for
Acc@0.5). Notes: /work/shared/research/clipvg.md section 2. Leading batch axes are allowed everywhere.

Degenerate boxes. The references assert valid boxes (x2 >= x1, y2 >= y1) before GIoU; under jit we
cannot, so nothing here checks: call `valid_boxes` on concrete arrays (data loading, tests) instead.
With valid boxes the values are:

    box_iou, generalized_box_iou (and their `_pairs` forms):
        NaN exactly when both boxes have zero area (the union is 0), as in torchvision;
        one zero-area box against a box with area gives IoU 0 and a finite GIoU <= 0.
    iou_pairs: 0 when both boxes have zero area (the reference adds 1e-16 to the union).

Invalid boxes (x2 < x1 or y2 < y1) are not clamped: their area is negative and the results are
whatever the formulas give, the same numbers torchvision computes, but meaningless.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Array = jnp.ndarray


def box_cxcywh_to_xyxy(boxes: ArrayLike) -> Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2). [..., 4] -> [..., 4]."""
    cx, cy, w, h = jnp.unstack(jnp.asarray(boxes), axis=-1)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes: ArrayLike) -> Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h). [..., 4] -> [..., 4]."""
    x1, y1, x2, y2 = jnp.unstack(jnp.asarray(boxes), axis=-1)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_xywh_to_xyxy(boxes: ArrayLike) -> Array:
    """(x, y, w, h) with (x, y) the top-left corner -> (x1, y1, x2, y2). [..., 4] -> [..., 4]."""
    x, y, w, h = jnp.unstack(jnp.asarray(boxes), axis=-1)
    return jnp.stack([x, y, x + w, y + h], axis=-1)


def box_xyxy_to_xywh(boxes: ArrayLike) -> Array:
    """(x1, y1, x2, y2) -> (x, y, w, h) with (x, y) the top-left corner. [..., 4] -> [..., 4]."""
    x1, y1, x2, y2 = jnp.unstack(jnp.asarray(boxes), axis=-1)
    return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def box_area(boxes: ArrayLike) -> Array:
    """Area of xyxy boxes, [..., 4] -> [...]. Not clamped: an invalid box has negative area."""
    boxes = jnp.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def valid_boxes(boxes: ArrayLike) -> np.ndarray:
    """Per box, True when finite with x2 >= x1 and y2 >= y1. [..., 4] -> bool [...].

    The check the references assert before GIoU. It is numpy on concrete values, for use outside
    jit (data sources, tests, debugging); under jit it raises a tracer conversion error.
    """
    boxes = np.asarray(boxes)
    finite = np.isfinite(boxes).all(axis=-1)
    return finite & (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])


def _clamp_min_zero(x: Array) -> Array:
    # torch's clamp(min=0) has gradient 0 at x == 0 (jnp.maximum would pass half), so boxes that
    # touch (a zero-width intersection) get the reference's gradient.
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _inter_union(boxes_a: Array, boxes_b: Array) -> tuple[Array, Array]:
    """Intersection and union areas of boxes that broadcast against each other: [..., 4] -> [...]."""
    top_left = jnp.maximum(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = jnp.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    size = _clamp_min_zero(bottom_right - top_left)
    inter = size[..., 0] * size[..., 1]
    union = box_area(boxes_a) + box_area(boxes_b) - inter
    return inter, union


def _giou(boxes_a: Array, boxes_b: Array) -> Array:
    """GIoU of boxes that broadcast against each other: iou - (enclosing - union) / enclosing."""
    inter, union = _inter_union(boxes_a, boxes_b)
    iou = inter / union
    top_left = jnp.minimum(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = jnp.maximum(boxes_a[..., 2:], boxes_b[..., 2:])
    size = _clamp_min_zero(bottom_right - top_left)
    enclosing = size[..., 0] * size[..., 1]
    return iou - (enclosing - union) / enclosing


def _pairwise(boxes_a: ArrayLike, boxes_b: ArrayLike) -> tuple[Array, Array]:
    # [..., N, 4], [..., M, 4] -> [..., N, 1, 4], [..., 1, M, 4]
    return jnp.asarray(boxes_a)[..., :, None, :], jnp.asarray(boxes_b)[..., None, :, :]


def box_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> tuple[Array, Array]:
    """Pairwise IoU and union area of xyxy boxes: [..., N, 4], [..., M, 4] -> ([..., N, M], [..., N, M]).

    The DETR form `(iou, union)`; the IoU equals `torchvision.ops.box_iou`. NaN where both boxes
    have zero area (module docstring).
    """
    inter, union = _inter_union(*_pairwise(boxes_a, boxes_b))
    return inter / union, union


def generalized_box_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> Array:
    """Pairwise GIoU of xyxy boxes, [..., N, 4], [..., M, 4] -> [..., N, M], in [-1, 1].

    Equals `torchvision.ops.generalized_box_iou` (same formula and operation order). NaN where
    both boxes have zero area (module docstring).
    """
    return _giou(*_pairwise(boxes_a, boxes_b))


def generalized_box_iou_pairs(boxes_a: ArrayLike, boxes_b: ArrayLike) -> Array:
    """GIoU of matched xyxy boxes, [..., N, 4], [..., N, 4] -> [..., N].

    The diagonal of `generalized_box_iou(boxes_a, boxes_b)` without building the N x N matrix;
    what a loss on one predicted box per target needs.
    """
    return _giou(jnp.asarray(boxes_a), jnp.asarray(boxes_b))


def iou_pairs(boxes_a: ArrayLike, boxes_b: ArrayLike, eps: float = 1e-16) -> Array:
    """IoU of matched xyxy boxes, [..., N, 4], [..., N, 4] -> [..., N]: inter / (union + eps).

    The grounding evaluation IoU (CLIP-VG/TransVG `bbox_iou`, eps 1e-16): Acc@0.5 is the mean of
    `iou_pairs(pred, gt) >= 0.5`, with the predictions clamped to [0, 1] in xyxy first as the
    reference does (the caller's job). The eps only matters when both boxes have zero area (0, not
    NaN); in fp32 it leaves every other value unchanged.
    """
    inter, union = _inter_union(jnp.asarray(boxes_a), jnp.asarray(boxes_b))
    return inter / (union + eps)
