"""Visual-grounding predictions and Acc@0.5 (CLIP-VG, research/clipvg.md 5.2).

A prediction is scored as the reference's `trans_vg_eval_test_iou`: the predicted (cx, cy, w, h) box
is turned into (x1, y1, x2, y2), clamped to the canvas [0, 1] and compared with the target box in the
same normalised padded-canvas frame, IoU = inter / (union + 1e-16); a prediction is right when IoU
>= 0.5. Every example of a split is scored once (the reference's distributed sampler pads the
split to a multiple of the world size and counts a few twice).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlalign_jax.data.pipeline import eval_batches
from vlalign_jax.ops.boxes import box_cxcywh_to_xyxy, iou_pairs

ACCURACY_IOU = 0.5


@dataclasses.dataclass(frozen=True)
class GroundingPredictions:
    """Per example, in the normalised canvas frame: predicted and target xyxy boxes and their IoU."""

    predicted: np.ndarray  # [N, 4] xyxy, clamped to [0, 1]
    target: np.ndarray  # [N, 4] xyxy
    iou: np.ndarray  # [N]

    def accuracy(self, threshold: float = ACCURACY_IOU) -> float:
        return float(np.mean(self.iou >= threshold)) if len(self.iou) else float("nan")

    def metrics(self) -> dict[str, float]:
        return {"acc@0.5": self.accuracy(), "miou": float(np.mean(self.iou)) if len(self.iou) else float("nan")}


def predicted_xyxy(boxes: jax.Array) -> jax.Array:
    """Normalised cxcywh -> xyxy clamped to the canvas [0, 1], as the reference's evaluation."""
    return jnp.clip(box_cxcywh_to_xyxy(boxes.astype(jnp.float32)), 0.0, 1.0)


def box_predictor(model: Any) -> Callable[[Any, dict], jax.Array]:
    """Jitted (params, batch with pixels, tokens, pad_mask) -> [B, 4] normalised cxcywh boxes."""
    return jax.jit(lambda params, b: model.apply({"params": params}, b["pixels"], b["tokens"], b["pad_mask"]))


def predict(predictor: Callable[[Any, dict], jax.Array], params: Any, batches: list[dict]) -> GroundingPredictions:
    """Score `batches` (from the method's eval preprocessing: `box` is the normalised cxcywh target)."""
    predicted, target, iou = [], [], []
    for batch in batches:
        p = predicted_xyxy(predictor(params, batch))
        t = box_cxcywh_to_xyxy(jnp.asarray(batch["box"], jnp.float32))
        predicted.append(np.asarray(p))
        target.append(np.asarray(t))
        iou.append(np.asarray(iou_pairs(p, t)))
    if not iou:
        return GroundingPredictions(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros(0))
    return GroundingPredictions(np.concatenate(predicted), np.concatenate(target), np.concatenate(iou))


def predict_source(model: Any, params: Any, source: Any, preprocess: Callable[[dict], dict], batch_size: int,
                   num_examples: int | None = None) -> GroundingPredictions:
    """Every example (or the first `num_examples`) of `source`, preprocessed for evaluation, scored."""
    return predict(box_predictor(model), params, eval_batches(source, preprocess, batch_size, num_examples))
