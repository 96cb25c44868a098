"""A curriculum's workdir: the state file that makes it resumable, and the split folders of its stages.

    WORKDIR/curriculum_state.json   completed stages, scorings and decisions (rewritten atomically
                                    after each), the config they were made under, the final result
    WORKDIR/config.json             the curriculum config as run
    WORKDIR/round_<k>/<stage>/      a training workdir (checkpoints/, metrics.jsonl, config.json) and
                                    its split folder data/<dataset>/<dataset>_train_pseudo.jsonl (the
                                    stage's training labels) beside links to the evaluation splits
    WORKDIR/round_<k>/scores/<name>.jsonl         r per pseudo-label (reliability.py)
    WORKDIR/round_<k>/histograms/<name>.png|.json 1,000-bin histograms
    WORKDIR/round_<k>/selections/<name>__h_<h>.jsonl  the r > h subsets, GroundingSplit-readable

A rerun replays the schedule: what the state file lists as done is read back, not recomputed, and
the first unfinished training stage resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlalign_jax.data.atomic_files import write_json_atomic, write_jsonl_atomic  # noqa: F401 (re-exported)

STATE_FILE = "curriculum_state.json"
STATE_VERSION = 1
TRAIN_SPLIT = "train_pseudo"  # the split name a stage's training labels are written under
# Settings that change how a run is watched or fed, not its results: a resumed run may change them.
IGNORED_CONFIG_KEYS = ("train.progress_bar", "train.log_every", "train.async_checkpoints", "data.num_threads",
                       "data.num_workers", "eval.batch_size", "curriculum.score_batch_size")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: value}


class CurriculumState:
    """Sections `stages`, `scores`, `decisions` of key -> record, plus `final`; saved on every change."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = Path(path), data

    @classmethod
    def open(cls, workdir: Path, config: dict[str, Any]) -> "CurriculumState":
        """The workdir's state, or a fresh one; an existing state made under another config is an error."""
        path = Path(workdir) / STATE_FILE
        config = json.loads(json.dumps(config, default=str))  # tuples -> lists, as read back
        if not path.exists():
            state = cls(path, {"version": STATE_VERSION, "config": config, "stages": {}, "scores": {},
                               "decisions": {}, "final": None})
            state.save()
            return state
        data = json.loads(path.read_text(encoding="utf-8"))
        old, new = _flatten(data.get("config", {})), _flatten(config)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in IGNORED_CONFIG_KEYS)
        if changed:
            raise ValueError(f"{path} was made under another config (changed: {', '.join(changed[:8])}"
                             f"{', ...' if len(changed) > 8 else ''}); rerun with the same config to resume, "
                             f"or use a new workdir")
        data["config"] = config
        return cls(path, data)

    def get(self, section: str, key: str) -> dict[str, Any] | None:
        return self.data[section].get(key)

    def put(self, section: str, key: str, value: Any) -> None:
        self.data[section][key] = value
        self.save()

    def finish(self, final: dict[str, Any]) -> None:
        self.data["final"] = final
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


def split_file(split_root: str | Path, dataset: str, split: str) -> Path:
    """`<split_root>/<dataset>/<dataset>_<split>.jsonl`, else the `.pth`; an error if neither exists."""
    stem = Path(split_root) / dataset / f"{dataset}_{split}"
    for suffix in (".jsonl", ".pth"):
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix)
    raise FileNotFoundError(f"no split file {stem}.jsonl or {stem}.pth")


def source_file(spec: str, split_root: str | Path, dataset: str) -> Path:
    """A source given as a split name (under `split_root`) or as a `.jsonl`/`.pth` path."""
    if spec.endswith((".jsonl", ".pth")):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"pseudo-label file {spec} does not exist")
        return Path(spec)
    return split_file(split_root, dataset, spec)


def write_stage_split(stage_dir: Path, dataset: str, records: list[dict[str, Any]],
                      eval_files: dict[str, Path]) -> Path:
    """A stage's split root: its training labels as `<dataset>_train_pseudo.jsonl` and links to the
    evaluation split files; returns the root (for `data.split_root`)."""
    root = Path(stage_dir) / "data"
    folder = root / dataset
    write_jsonl_atomic(folder / f"{dataset}_{TRAIN_SPLIT}.jsonl", records)
    for split, target in eval_files.items():
        link = folder / f"{dataset}_{split}{target.suffix}"
        target = target.resolve()
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return root
