"""Box regression loss of one-box visual grounding: L1 + GIoU (CLIP-VG, TransVG).

Reference: CLIP-VG (arXiv 2305.08685) `utils/loss_utils.py::trans_vg_loss`, summed with weights 1:1
in `engine.py::train_one_epoch`; inherited unchanged from TransVG. Notes:
/work/shared/research/clipvg.md section 2. For B predicted boxes and their targets, both normalised
(cx, cy, w, h):

    l1   = sum_{i, coordinate} |pred - target| / B      (sum over the 4 coordinates, mean over boxes)
    giou = sum_i (1 - GIoU(xyxy(pred_i), xyxy(target_i))) / B
    loss = l1 + giou

The reference takes the diagonal of the B x B GIoU matrix; `generalized_box_iou_pairs` computes only
the diagonal. There is no smooth L1 and no DETR-style 5 / 2 weighting in this recipe.

Cross-device behaviour. The reference divides by the per-GPU batch and DDP averages the gradients.
Every term is a per-box sum, so the loss of the global batch passed here (divided by the global
number of boxes) has exactly the reference's DDP-averaged gradient when every rank holds the same
number of boxes, which its `drop_last=True` sampler guarantees. No axis name is needed.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike

from vlalign_jax.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou_pairs

# A valid box put in place of masked rows before any arithmetic, so padding (zeros, NaN) yields no
# NaN in the value or the gradient.
_FILLER_BOX = (0.5, 0.5, 1.0, 1.0)


def grounding_box_loss(
    pred_boxes: ArrayLike,     # [B, 4] normalised (cx, cy, w, h)
    target_boxes: ArrayLike,   # [B, 4] normalised (cx, cy, w, h)
    mask: ArrayLike | None = None,  # [B], True/1 = a real row
    l1_weight: float = 1.0,
    giou_weight: float = 1.0,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """`l1_weight * l1 + giou_weight * giou` (module docstring), in fp32; weights 1:1 as the reference.

    Returns `(loss, {"loss/l1": l1, "loss/giou": giou})`, the metrics unweighted. With a `mask`, the
    masked rows are replaced by a valid box before use (they contribute 0 and get zero gradient)
    and the sums are divided by the number of real rows (at least 1), i.e. the reference's loss on
    the unpadded batch. Boxes with w, h >= 0 are expected (a sigmoid head gives them); a row where
    both boxes have zero area makes the GIoU NaN, as in the reference (`ops.boxes`).
    """
    pred_boxes = jnp.asarray(pred_boxes, jnp.float32)
    target_boxes = jnp.asarray(target_boxes, jnp.float32)
    if pred_boxes.ndim != 2 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"pred_boxes must be [B, 4], got {pred_boxes.shape}")
    if target_boxes.shape != pred_boxes.shape:
        raise ValueError(f"target_boxes must be {pred_boxes.shape} like pred_boxes, got {target_boxes.shape}")
    if mask is None:
        num_boxes = jnp.float32(pred_boxes.shape[0])
    else:
        mask = jnp.asarray(mask).astype(bool)
        if mask.shape != pred_boxes.shape[:1]:
            raise ValueError(f"mask must be {pred_boxes.shape[:1]}, got {mask.shape}")
        filler = jnp.asarray(_FILLER_BOX, jnp.float32)
        pred_boxes = jnp.where(mask[:, None], pred_boxes, filler)
        target_boxes = jnp.where(mask[:, None], target_boxes, filler)
        num_boxes = jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)

    difference = pred_boxes - target_boxes
    # sign(d) * d is |d| with torch's gradient sign(d), 0 at d == 0 (jnp.abs has gradient 1 there), so
    # an exact coordinate gets no push, as in the reference.
    l1_per_box = jnp.sum(jnp.sign(difference) * difference, axis=-1)  # [B]
    giou_per_box = 1.0 - generalized_box_iou_pairs(box_cxcywh_to_xyxy(pred_boxes),
                                                   box_cxcywh_to_xyxy(target_boxes))  # [B]
    # Filler rows are identical pairs, so both terms are already exactly 0 there.
    l1 = jnp.sum(l1_per_box) / num_boxes
    giou = jnp.sum(giou_per_box) / num_boxes
    loss = l1_weight * l1 + giou_weight * giou
    return loss, {"loss/l1": l1, "loss/giou": giou}
