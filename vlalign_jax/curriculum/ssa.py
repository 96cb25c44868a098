"""Single-source self-paced curriculum adapting (SSA; research/clipvg.md 4.2, the paper's Fig. 3b),
reconstructed: the release has no driver code.

Round 0: train a measurer M on the whole pseudo-label source S (time T0) and score every s in S. Then
greedy sample selection (T1): for each threshold h of the grid, train a fresh model on
D_h = {s : r(s) > h} and record its validation Acc@0.5; h* is the best (ties: `curriculum.tie_break`)
and its model is the round's result. The measurer, trained on every label, is also the baseline the
result is reported against (`all_labels`, with `curriculum.baseline_all`). A round k > 0 (`curriculum.rounds`, [UNVERIFIED]) measures with
round k-1's result instead of training a new measurer, rescores all of S and selects again.

Stages: round_<k>/measure (round 0 only) and round_<k>/h_<h>; scores, histogram and selections are
named after the source.
"""

from __future__ import annotations

from typing import Callable, Sequence

from vlalign_jax.curriculum.driver import Curriculum, StageResult, noisy_fraction, outcome
from vlalign_jax.curriculum.settings import threshold_name


def better(h: float, metric: float, best_h: float, best_metric: float, tie_break: str) -> bool:
    """Whether candidate (h, metric) beats the best so far; equal metrics go by `tie_break`."""
    if metric != best_metric:
        return metric > best_metric
    return h > best_h if tie_break == "larger_threshold" else h < best_h


def scan_thresholds(thresholds: Sequence[float], train_candidate: Callable[[float], StageResult], scan: str,
                    tie_break: str) -> tuple[tuple[float, StageResult], list[tuple[float, StageResult]]]:
    """Train a candidate per threshold (ascending); returns the best (h, result) and every one scanned.

    `scan="greedy"` stops at the first candidate worse than the best so far, or with no labels left.
    A candidate with no labels (metric None) is never the best.
    """
    best, scanned = None, []
    for h in sorted(thresholds):
        result = train_candidate(h)
        scanned.append((h, result))
        if result.metric is None:
            if scan == "greedy":
                break
            continue
        if best is None or better(h, result.metric, best[0], best[1].metric, tie_break):
            best = (h, result)
        elif scan == "greedy" and result.metric < best[1].metric:
            break
    if best is None:
        raise ValueError(f"no threshold of {list(thresholds)} left any pseudo-label to train on")
    return best, scanned


def candidates_json(scanned: list[tuple[float, StageResult]]) -> list[dict]:
    return [{"threshold": h, "stage": result.key, "metric": result.metric, "size": result.size}
            for h, result in scanned]


def run_ssa(cur: Curriculum) -> dict:
    """Run (or resume) SSA; returns the final result: stage, threshold, metric, size."""
    settings = cur.settings
    (source,) = settings.sources
    records = cur.records(source)
    final, all_labels = None, None
    for k in range(settings.rounds):
        if k == 0:
            all_labels = cur.train_stage(0, "measure", records)  # trained on every label: the baseline
            measurer = cur.measurer("round_0/measure", source)
        else:
            measurer = cur.measurer(final["stage"], source)
        r = cur.score(k, source, measurer, source)
        init = measurer.workdir if settings.retrain_from == "measurer" else None

        def candidate(h: float) -> StageResult:
            return cur.train_stage(k, f"h_{threshold_name(h)}", cur.subset(source, r, h), init)

        (h, best), scanned = scan_thresholds(settings.thresholds, candidate, settings.scan, settings.tie_break)
        final = {"round": k, "stage": best.key, "threshold": h, "metric": best.metric, "size": best.size,
                 "noisy_fraction": noisy_fraction(cur.subset(source, r, h)), "measurer": measurer.key,
                 "selection": f"round_{k}/selections/{source}__h_{threshold_name(h)}.jsonl"}
        cur.state.put("decisions", f"round_{k}", {**final, "candidates": candidates_json(scanned)})
    if settings.baseline_all:
        final["all_labels"] = outcome(all_labels, records)
    return {"mode": "ssa", **final}
