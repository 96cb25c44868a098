"""One curriculum run: the steps SSA and MSA are made of, each done once and remembered.

`train_stage` trains a fresh CLIP-VG on a list of pseudo-label records (a normal training run in
WORKDIR/round_<k>/<stage>, so an interrupted one resumes from its checkpoints) and returns its
validation accuracy (`curriculum.selection_metric`). `score` runs a measurer over a source and writes
the scores, the histogram (PNG + JSON) and the r > h selection for every threshold of the grid.
Both are recorded in the state file when done; on a rerun they are read back, not recomputed.

`train_fn` (default `train.loop.train`) and `score_fn` (default `score_with_measurer`) are
parameters so a schedule can be tested with injected results.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from vlalign_jax.curriculum import reliability
from vlalign_jax.curriculum.histogram_plot import draw_histogram
from vlalign_jax.curriculum.settings import CurriculumSettings, threshold_name
from vlalign_jax.curriculum.workspace import (TRAIN_SPLIT, CurriculumState, source_file, split_file,
                                              write_json_atomic, write_jsonl_atomic, write_stage_split)
from vlalign_jax.data.sources.grounding_splits import GroundingSplit, image_dir, layout
from vlalign_jax.eval.grounding import GroundingPredictions

log = logging.getLogger(__name__)

TrainFn = Callable[[ml_collections.ConfigDict, Path], dict[str, float]]
ScoreFn = Callable[[ml_collections.ConfigDict, Path, GroundingSplit, int], GroundingPredictions]


@dataclasses.dataclass(frozen=True)
class StageResult:
    key: str  # "round_<k>/<stage>", also its folder under the workdir
    metric: float | None  # None: not trained (no labels selected)
    size: int  # training labels


def noisy_fraction(records: list[dict[str, Any]]) -> float | None:
    """The share of `records` marked `"noisy": true` (the synthetic sources mark their wrong labels);
    None when not every record carries the mark (real pseudo-labels)."""
    if not records or not all("noisy" in record for record in records):
        return None
    return sum(bool(record["noisy"]) for record in records) / len(records)


def outcome(result: StageResult, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A stage as the final result reports it: folder, validation metric, labels and their noise."""
    return {"stage": result.key, "metric": result.metric, "size": result.size,
            "noisy_fraction": noisy_fraction(records)}


@dataclasses.dataclass(frozen=True)
class Measurer:
    key: str  # the stage whose final checkpoint measures
    label: str  # its name in scores and histogram titles
    workdir: Path
    config: ml_collections.ConfigDict


def score_with_measurer(config: ml_collections.ConfigDict, measurer_dir: Path, source: GroundingSplit,
                        batch_size: int) -> GroundingPredictions:
    """The predictions of the newest checkpoint in `measurer_dir` (trained under `config`) on `source`,
    under the evaluation transform."""
    from vlalign_jax.data.grounding import grounding_data
    from vlalign_jax.methods import make_method
    from vlalign_jax.train.checkpoint import load_params

    model = make_method(config).model
    clip = model.config.clip
    data = grounding_data(config.data, clip.vision.image_size, clip.text.context_length)
    return reliability.score_source(model, load_params(measurer_dir), source, data.eval_preprocess, batch_size)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, float]:
    """The method's evaluations of a run's newest checkpoint, named as the training loop logs them."""
    from vlalign_jax.methods import make_method
    from vlalign_jax.train.checkpoint import load_params

    method, params = make_method(config), load_params(workdir)
    return {f"eval/{name}/{key}": float(value) for name, evaluate in method.evaluators.items()
            for key, value in evaluate(params, None).items()}


class Curriculum:
    """The sources, the base training config and the state of one curriculum workdir."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, train_fn: TrainFn | None = None,
                 score_fn: ScoreFn | None = None):
        if jax.process_count() > 1:
            raise ValueError("the curriculum driver runs in one process (its stages may still use every local device)")
        self.settings = CurriculumSettings.from_config(config)
        self.workdir = Path(workdir)
        if train_fn is None:
            from vlalign_jax.train.loop import train as train_fn
        self.train_fn, self.score_fn = train_fn, score_fn or score_with_measurer
        self.base = copy.deepcopy(config)
        with self.base.unlocked():
            del self.base["curriculum"]
        data = self.base.data
        if data.name != "splits":
            raise ValueError(f"the curriculum reads pseudo-label split files: data.name must be 'splits', "
                             f"got {data.name!r} (curriculum.synthetic_sources draws them from the shapes)")
        self.dataset = layout(data.dataset).name
        self.state = CurriculumState.open(self.workdir, config.to_dict())
        if self.settings.synthetic_sources:
            from vlalign_jax.curriculum.synthetic_sources import write_synthetic_sources

            root = write_synthetic_sources(self.workdir / "synthetic_data", self.dataset, self.settings)
            data.split_root, data.image_root = str(root / "split"), str(root / "images")
        self.image_root = Path(data.get("image_root") or image_dir(data.data_root, self.dataset)).absolute()
        splits = tuple(data.get("eval_splits", ())) or _reported_splits(self.dataset)
        if TRAIN_SPLIT in splits:
            raise ValueError(f"data.eval_splits {splits} must not hold the training split name {TRAIN_SPLIT!r}")
        self.eval_files = {split: split_file(data.split_root, self.dataset, split) for split in splits}
        self.source_paths = {name: source_file(self.settings.source_files.get(name, name), data.split_root,
                                               self.dataset) for name in self.settings.sources}
        self._sources: dict[str, GroundingSplit] = {}
        self._records: dict[str, list[dict[str, Any]]] = {}

    def relative(self, path: Path) -> str:
        """`path` as the state file names it: relative to the workdir."""
        return str(Path(path).relative_to(self.workdir))

    # ---- sources -------------------------------------------------------------------------------
    def source(self, name: str) -> GroundingSplit:
        if name not in self._sources:
            data = self.base.data
            self._sources[name] = GroundingSplit(
                self.source_paths[name], self.image_root, self.dataset, released_code=data.get("released_code", False),
                prompt_template=data.get("prompt_template") or None, allow_pickle=data.get("allow_pickle", False))
        return self._sources[name]

    def records(self, name: str) -> list[dict[str, Any]]:
        """The source's records in the JSON-lines form, with all of its original fields."""
        if name not in self._records:
            source = self.source(name)
            self._records[name] = [source.record(i) for i in range(len(source))]
        return self._records[name]

    def subset(self, name: str, r: np.ndarray, h: float) -> list[dict[str, Any]]:
        records = self.records(name)
        return [records[i] for i in reliability.subset_indices(r, h)]

    # ---- training ------------------------------------------------------------------------------
    def stage_config(self, key: str, init_from: Path | None = None) -> ml_collections.ConfigDict:
        config = copy.deepcopy(self.base)
        with config.unlocked():
            data = config.data
            data.split_root = str((self.workdir / key / "data").absolute())
            data.train_split, data.image_root = TRAIN_SPLIT, str(self.image_root)
            data.eval_splits = tuple(self.eval_files)
            if init_from is not None:
                config.model.init_from, config.model.init_family = str(Path(init_from).absolute()), ""
        return config

    def train_stage(self, round_: int, name: str, records: list[dict[str, Any]],
                    init_from: Path | None = None) -> StageResult:
        """Train on `records` (once; remembered), return the validation metric."""
        key = f"round_{round_}/{name}"
        done = self.state.get("stages", key)
        if done is not None:
            return StageResult(key, done["metric"], done["size"])
        tc = self.base.train
        if not records or (tc.get("epochs", 0) and int(tc.epochs * (len(records) // tc.batch_size)) == 0):
            log.info("%s: %d labels selected, too few to train; skipped", key, len(records))
            self.state.put("stages", key, {"metric": None, "size": len(records), "skipped": True})
            return StageResult(key, None, len(records))
        stage_dir = self.workdir / key
        write_stage_split(stage_dir, self.dataset, records, self.eval_files)
        config = self.stage_config(key, init_from)
        log.info("%s: training on %d pseudo-labels", key, len(records))
        metrics = self.train_fn(config, stage_dir)
        wanted = self.settings.selection_metric
        if wanted not in metrics:  # a rerun after the last step, or train.eval_every = 0
            metrics = evaluate_checkpoint(config, stage_dir)
        if wanted not in metrics:
            raise ValueError(f"curriculum.selection_metric {wanted!r} is not among the evaluations {sorted(metrics)}")
        metric = float(metrics[wanted])
        log.info("%s: %s = %.4f", key, wanted, metric)
        self.state.put("stages", key, {"metric": metric, "size": len(records),
                                       "init_from": str(init_from) if init_from else None})
        return StageResult(key, metric, len(records))

    def measurer(self, key: str, label: str) -> Measurer:
        """The model trained in stage `key` (finished) as a reliability measurer."""
        done = self.state.get("stages", key)
        if done is None or done["metric"] is None:
            raise ValueError(f"stage {key} has no trained model to measure with")
        init = done.get("init_from")
        return Measurer(key, label, self.workdir / key, self.stage_config(key, Path(init) if init else None))

    # ---- reliability ---------------------------------------------------------------------------
    def score(self, round_: int, source_name: str, measurer: Measurer, name: str) -> np.ndarray:
        """r of every pseudo-label of the source under `measurer`; writes scores, histogram, selections."""
        key = f"round_{round_}/{name}"
        folder = self.workdir / f"round_{round_}"
        scores_path = folder / "scores" / f"{name}.jsonl"
        if self.state.get("scores", key) is not None:
            return reliability.read_scores(scores_path)
        source = self.source(source_name)
        log.info("%s: scoring %d pseudo-labels of %s with %s", key, len(source), source_name, measurer.key)
        batch_size = self.settings.score_batch_size or self.base.eval.batch_size
        predictions = self.score_fn(measurer.config, measurer.workdir, source, batch_size)
        write_jsonl_atomic(scores_path, reliability.score_records(source, predictions))
        r = np.asarray(predictions.iou, np.float32)
        hist = reliability.histogram(r, self.settings.histogram_bins)
        kind = "single-source, SR" if measurer.label == source_name else "cross-source, CR"
        title = f"reliability of {source_name} measured by {measurer.key} ({kind})"
        write_json_atomic(folder / "histograms" / f"{name}.json", {"title": title, **hist.to_json()})
        png = folder / "histograms" / f"{name}.png"
        draw_histogram(hist, title, self.settings.histogram_size).save(png)
        for h in self.settings.thresholds:
            write_jsonl_atomic(folder / "selections" / f"{name}__h_{threshold_name(h)}.jsonl",
                               self.subset(source_name, r, h))
        self.state.put("scores", key, {"source": source_name, "measurer": measurer.key,
                                       "scores": self.relative(scores_path), "histogram": self.relative(png),
                                       **reliability.summary(r, self.settings.thresholds)})
        return r


def _reported_splits(dataset: str) -> tuple[str, ...]:
    from vlalign_jax.data.grounding import EVAL_SPLITS

    return EVAL_SPLITS[dataset]
