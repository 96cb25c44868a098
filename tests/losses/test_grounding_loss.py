"""`grounding_box_loss` against a PyTorch rewrite of CLIP-VG's `trans_vg_loss`: value and gradients.

The reference below is written from the spec (/work/shared/research/clipvg.md section 2) with torch and
torchvision only: `F.l1_loss(reduction="none").sum() / B` plus `(1 - diag(generalized_box_iou)).sum() / B`
on boxes converted by `torchvision.ops.box_convert`, summed 1:1. Tolerance 1e-5: fp32 on both sides,
per-box terms of order 1 summed over 16 boxes, so the sums differ by summation order only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlalign_jax.losses.grounding import grounding_box_loss

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
F = torch.nn.functional

ATOL = RTOL = 1e-5

# (pred, target) rows in cxcywh with exactly representable corners: identical boxes, touching along
# an edge (intersection width exactly 0), disjoint (GIoU < 0), nested, crossing.
EDGE_CASE_PAIRS = np.array([
    [[0.5, 0.5, 0.25, 0.5], [0.5, 0.5, 0.25, 0.5]],
    [[0.25, 0.5, 0.5, 0.5], [0.75, 0.5, 0.5, 0.25]],  # union < enclosing area, so d GIoU / d inter != 0
    [[0.125, 0.125, 0.25, 0.25], [0.75, 0.75, 0.25, 0.5]],
    [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.25, 0.125]],
    [[0.5, 0.5, 0.75, 0.125], [0.5, 0.5, 0.125, 0.75]],
], dtype=np.float32)


def reference_loss(pred: np.ndarray, target: np.ndarray):
    """trans_vg_loss + the 1:1 sum of engine.train_one_epoch; returns (loss, l1, giou, d loss / d pred, d target)."""
    pred_t = torch.tensor(pred, requires_grad=True)
    target_t = torch.tensor(target, requires_grad=True)
    batch_size = pred_t.shape[0]
    l1 = F.l1_loss(pred_t, target_t, reduction="none").sum() / batch_size
    giou_matrix = torchvision.ops.generalized_box_iou(torchvision.ops.box_convert(pred_t, "cxcywh", "xyxy"),
                                                      torchvision.ops.box_convert(target_t, "cxcywh", "xyxy"))
    giou = (1 - torch.diag(giou_matrix)).sum() / batch_size
    loss = l1 + giou
    loss.backward()
    return (loss.item(), l1.item(), giou.item(), pred_t.grad.numpy(), target_t.grad.numpy())


def random_pairs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Predictions as a sigmoid head gives them; targets as normalised annotations (inside the canvas).
    pred = 1 / (1 + np.exp(-rng.normal(scale=1.5, size=(n, 4))))
    low = rng.uniform(0.0, 0.7, size=(n, 2))
    size = rng.uniform(0.02, 1.0 - low)
    target = np.concatenate([low + size / 2, size], axis=-1)
    pred = np.concatenate([pred, EDGE_CASE_PAIRS[:, 0]]).astype(np.float32)
    target = np.concatenate([target, EDGE_CASE_PAIRS[:, 1]]).astype(np.float32)
    return pred, target


# Jitted: one compilation per shape instead of one per primitive keeps the file fast; eager use is in
# test_jit_matches_eager.
_value_and_grads = jax.jit(jax.value_and_grad(grounding_box_loss, argnums=(0, 1), has_aux=True))


def loss_and_grads(pred, target, mask=None):
    (loss, metrics), (grad_pred, grad_target) = _value_and_grads(pred, target, mask)
    return loss, metrics, np.asarray(grad_pred), np.asarray(grad_target)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_reference(seed):
    pred, target = random_pairs(seed, 11)
    loss, metrics, grad_pred, grad_target = loss_and_grads(pred, target)
    ref_loss, ref_l1, ref_giou, ref_grad_pred, ref_grad_target = reference_loss(pred, target)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(metrics["loss/l1"]), ref_l1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(metrics["loss/giou"]), ref_giou, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_pred, ref_grad_pred, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_target, ref_grad_target, rtol=RTOL, atol=ATOL)
    assert loss.dtype == jnp.float32


def test_edge_cases_alone():
    # One row at a time through the mask. Identical pair: both terms 0. Disjoint pair: GIoU < 0, so 1 - GIoU > 1.
    only = np.eye(len(EDGE_CASE_PAIRS), dtype=bool)
    _, metrics, _, _ = loss_and_grads(EDGE_CASE_PAIRS[:, 0], EDGE_CASE_PAIRS[:, 1], only[0])
    assert float(metrics["loss/l1"]) == 0.0 and float(metrics["loss/giou"]) == 0.0
    _, metrics, _, _ = loss_and_grads(EDGE_CASE_PAIRS[:, 0], EDGE_CASE_PAIRS[:, 1], only[2])
    assert float(metrics["loss/giou"]) > 1.0
    # The touching pair pins the gradient convention at a zero-width intersection (torch's clamp).
    loss, _, grad_pred, grad_target = loss_and_grads(EDGE_CASE_PAIRS[:, 0], EDGE_CASE_PAIRS[:, 1], only.any(0))
    ref_loss, _, _, ref_grad_pred, ref_grad_target = reference_loss(EDGE_CASE_PAIRS[:, 0], EDGE_CASE_PAIRS[:, 1])
    np.testing.assert_allclose(float(loss), ref_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_pred, ref_grad_pred, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_target, ref_grad_target, rtol=RTOL, atol=ATOL)


def test_weights_scale_the_terms_not_the_metrics():
    pred, target = random_pairs(2, 11)
    loss, metrics = jax.jit(grounding_box_loss, static_argnames=("l1_weight", "giou_weight"))(
        pred, target, l1_weight=5.0, giou_weight=2.0)
    _, ref_l1, ref_giou, _, _ = reference_loss(pred, target)
    np.testing.assert_allclose(float(metrics["loss/l1"]), ref_l1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(metrics["loss/giou"]), ref_giou, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(loss), 5.0 * ref_l1 + 2.0 * ref_giou, rtol=RTOL, atol=ATOL)


def test_mask_equals_the_unpadded_batch():
    pred, target = random_pairs(3, 6)
    num_real = len(pred)
    padded_pred = np.concatenate([pred, np.full((3, 4), np.nan, np.float32), np.zeros((2, 4), np.float32)])
    padded_target = np.concatenate([target, np.zeros((3, 4), np.float32), np.full((2, 4), np.inf, np.float32)])
    mask = np.arange(len(padded_pred)) < num_real
    loss, metrics, grad_pred, grad_target = loss_and_grads(padded_pred, padded_target, mask=mask)
    ref_loss, ref_l1, ref_giou, ref_grad_pred, ref_grad_target = reference_loss(pred, target)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(metrics["loss/l1"]), ref_l1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(metrics["loss/giou"]), ref_giou, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_pred[:num_real], ref_grad_pred, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_target[:num_real], ref_grad_target, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(grad_pred[num_real:], 0.0)
    np.testing.assert_array_equal(grad_target[num_real:], 0.0)
    # Nothing real: loss 0, finite gradients.
    loss, _, grad_pred, _ = loss_and_grads(padded_pred, padded_target, mask=np.zeros(len(padded_pred), bool))
    assert float(loss) == 0.0 and np.isfinite(grad_pred).all()


def test_jit_matches_eager():
    pred, target = random_pairs(4, 6)
    mask = np.array([True] * 9 + [False, True])
    eager_loss, eager_metrics = grounding_box_loss(pred, target, mask)
    jit_loss, jit_metrics = jax.jit(grounding_box_loss)(pred, target, mask)
    np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-6)
    for name in ("loss/l1", "loss/giou"):
        np.testing.assert_allclose(float(jit_metrics[name]), float(eager_metrics[name]), rtol=1e-6)


def test_bad_shapes_are_refused():
    boxes = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="pred_boxes"):
        grounding_box_loss(boxes[:, :3], boxes[:, :3])
    with pytest.raises(ValueError, match="target_boxes"):
        grounding_box_loss(boxes, boxes[:2])
    with pytest.raises(ValueError, match="mask"):
        grounding_box_loss(boxes, boxes, mask=np.ones(2, bool))
