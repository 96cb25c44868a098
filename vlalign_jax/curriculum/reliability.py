"""Reliability of pseudo-labels (CLIP-VG `engine.py::evaluate_for_filtering`, research/clipvg.md 4.1).

A measurer M (a CLIP-VG model trained on a pseudo-label source) predicts a box for every example of a
source under the evaluation transform (long side resized, centred pad, no augmentation). The
reliability of a pseudo-label is r(s) = IoU(clamp01(xyxy(M(I, q))), xyxy(pseudo box)) in the
normalised padded canvas (`eval.grounding.predict`, the reference's `trans_vg_eval_test_iou`). r is
float32, as the reference computes it, and thresholds are compared in float32: a subset at h is
{s : r(s) > h}, strict, as the released `..._refine_0_j` files.

The histogram has `bins` equal bins over (0, 1]: bin k holds k/bins < r <= (k+1)/bins (float32
edges); r == 0 (the prediction misses the pseudo box entirely) is counted apart, as the reference's
`_bad_label_0_0` file holds those.

Scores are written one JSON line per example, in source order: `index`, `image_file`, `expression`
(as stored), `box` (the pseudo box, x1y1x2y2 pixels), `predicted` and `target` (x1y1x2y2 in the
normalised canvas: the measurer's clamped box and the pseudo box as the eval transform places it) and
`r`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlalign_jax.data.pipeline import iter_eval_batches
from vlalign_jax.eval.grounding import GroundingPredictions, box_predictor, predict


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Counts of r over (0, 1] in equal bins, and the r == 0 examples counted apart."""

    counts: np.ndarray  # [bins] int64; bin k holds k/bins < r <= (k+1)/bins
    zeros: int

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.zeros

    def to_json(self) -> dict[str, Any]:
        return {"bins": len(self.counts), "range": "(0, 1]", "zeros": self.zeros, "total": self.total,
                "counts": self.counts.tolist()}


def histogram(r: np.ndarray, bins: int = 1000) -> Histogram:
    r = np.asarray(r, np.float32)
    if r.size and (np.any(~np.isfinite(r)) or r.min() < 0 or r.max() > 1):
        raise ValueError(f"reliabilities must lie in [0, 1], got [{r.min()}, {r.max()}]")
    edges = (np.arange(bins + 1, dtype=np.float64) / bins).astype(np.float32)
    positive = r[r > 0]
    # searchsorted(left) puts r == edge k in bin k - 1: the bins are closed on the right.
    index = np.clip(np.searchsorted(edges, positive, side="left") - 1, 0, bins - 1)
    return Histogram(np.bincount(index, minlength=bins).astype(np.int64), int(np.sum(r == 0)))


def subset_indices(r: np.ndarray, h: float) -> np.ndarray:
    """Indices of the examples with r > h (strict, float32)."""
    return np.flatnonzero(np.asarray(r, np.float32) > np.float32(h))


def summary(r: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """Count, mean, median, r == 0 count and the subset size at each threshold (keyed by str(h))."""
    r = np.asarray(r, np.float32)
    return {"count": int(r.size), "mean": float(r.mean()) if r.size else float("nan"),
            "median": float(np.median(r)) if r.size else float("nan"), "zeros": int(np.sum(r == 0)),
            "selected": {str(float(h)): int(subset_indices(r, h).size) for h in thresholds}}


def score_source(model: Any, params: Any, source: Any, preprocess: Callable[[dict], dict],
                 batch_size: int) -> GroundingPredictions:
    """The measurer's predictions and r for every example of `source` (`preprocess` = eval transform),
    streamed: a source of 100k images never sits in memory."""
    return predict(box_predictor(model), params, iter_eval_batches(source, preprocess, batch_size))


def score_records(source: Any, predictions: GroundingPredictions) -> list[dict[str, Any]]:
    """One scores line per example (see the module docstring); `source` has `record(i)` (GroundingSplit)."""
    if len(predictions.iou) != len(source):
        raise ValueError(f"{len(predictions.iou)} predictions for a source of {len(source)} examples")
    rows = []
    for i, r in enumerate(np.asarray(predictions.iou, np.float32)):
        record = source.record(i)
        rows.append({"index": i, "image_file": record["image_file"], "expression": record["expression"],
                     "box": record["box"], "predicted": [float(v) for v in predictions.predicted[i]],
                     "target": [float(v) for v in predictions.target[i]], "r": float(r)})
    return rows


def read_scores(path: str | Path) -> np.ndarray:
    """r (float32, in source order) from a scores file."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if [row["index"] for row in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: scores are not one line per example in source order")
    return np.asarray([row["r"] for row in rows], np.float32)
