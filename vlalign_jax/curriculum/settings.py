"""The `curriculum.*` options of `vlalign curriculum`: CLIP-VG's self-paced curriculum adapting
(research/clipvg.md section 4: SSA 4.2, MSA 4.3), a reconstruction, since the authors released no
driver code.

A curriculum config is a CLIP-VG training config (`method = "clipvg"`, `data.name = "splits"`) with a
`curriculum` group. A plain training config gets the defaults below, so any CLIP-VG config file can
be run with `--config.curriculum.*` overrides. Every stage trains the training config unchanged but
for its training split (the selected pseudo-labels) and, with `retrain_from="measurer"`, its
initial weights.

Options, with defaults. [UNVERIFIED] marks choices the paper's available sources do not settle
(the arXiv body, Sec. III and Algorithms 1-2, could not be read); the default is the port
recommendation of research/clipvg.md 4.2-4.3.

- `mode` "ssa": "ssa" (one source, 4.2) or "msa" (several, 4.3).
- `sources` (): pseudo-label source names, in order; () = (`data.train_split`,). The order breaks
  ties in MSA (the release merges template, relation, caption in that order).
- `source_files` {}: name -> a split name under `data.split_root`
  (`<dataset>/<dataset>_<split>.jsonl`, else `.pth`) or a path to a `.jsonl`/`.pth` split file. A
  name not listed is its own split name.
- `thresholds` (0.0, 0.1, ..., 0.9): the grid of h; a subset is {s : r(s) > h}, strict, as the
  released `_refine_0_j` files. r and h are compared in float32, as the reference's torch code does.
- `scan` "grid" [UNVERIFIED]: train a candidate for every h of the grid. "greedy": ascending h, stop
  at the first candidate worse than the best so far (the paper calls the search greedy and its
  curve rises then falls; the exact scan is unknown).
- `tie_break` "larger_threshold": of candidates with equal validation accuracy keep the larger h
  (fewer, more reliable labels); "smaller_threshold" keeps more labels. Our choice.
- `retrain_from` "init" [UNVERIFIED]: every candidate trains from the config's `model.init_from`
  (CLIP), as recommended (the release's `--retrain` copies only the fusion weights, "no gains").
  "measurer": start from the measurer whose reliabilities selected the subset.
- `rounds` 1 [UNVERIFIED], SSA only: measure -> select repeated; round k > 0 uses round k-1's final
  model as its measurer and rescores the whole source.
- `msa_h0` 0.5 [UNVERIFIED]: the threshold at which MSA compares (source, measurer) pairs (the
  released multi-source files all use 0.5).
- `msa_cross_source` True: MSA also considers other sources' measurers (CR), not only the source's
  own (SR). All pairs are scored and plotted either way.
- `msa_stop` "all_sources" [UNVERIFIED]: MSA adds one source per step until every source was added;
  "no_gain" stops before a step whose best validation accuracy is below the previous step's.
- `baseline_all` True: also train one model on every source's labels, unselected (MSA: the union of
  the sources, stage round_0/all_sources; SSA: the measurer already is that model, nothing extra), and
  report it next to the result as `all_labels`, the comparison the curriculum has to win.
- `selection_metric` "eval/grounding/val/acc@0.5": what candidates are compared by, at the end of
  their training: Acc@0.5 on the annotated val split, the protocol of the paper (and Pseudo-Q); on
  `eval.num_heldout` examples of it (0 = all). The last step's value, not the best along the run
  [UNVERIFIED: the release keeps its best-val checkpoint within a run].
- `histogram_bins` 1000 over (0, 1] (the paper's Fig. 5); r == 0 is counted apart.
- `histogram_size` (1100, 440): the PNG's width and height in pixels.
- `score_batch_size` 0: the batch size of reliability scoring (0 = `eval.batch_size`).
- `synthetic_sources` {}: name -> label-noise fraction (covering `sources`). When set, the sources
  and a clean val split are drawn from the synthetic shapes into WORKDIR/synthetic_data, replacing
  `data.split_root` and `data.image_root` (a self-contained demo; `synthetic_sources.py`):
  `synthetic_num_train` examples per source (each its own images), `synthetic_num_val`,
  `synthetic_image_size`, `synthetic_seed`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import ml_collections

from vlalign_jax.train.config import ConfigError, build_config

MODES = ("ssa", "msa")
SCANS = ("grid", "greedy")
TIE_BREAKS = ("larger_threshold", "smaller_threshold")
RETRAIN_FROM = ("init", "measurer")
MSA_STOPS = ("all_sources", "no_gain")
DEFAULT_THRESHOLDS = tuple(k / 10 for k in range(10))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def default_options() -> ml_collections.ConfigDict:
    """The `curriculum` group with every option at its default (see the module docstring)."""
    c = ml_collections.ConfigDict()
    c.mode = "ssa"
    c.sources = ()
    c.source_files = {}
    c.thresholds = DEFAULT_THRESHOLDS
    c.scan = "grid"
    c.tie_break = "larger_threshold"
    c.retrain_from = "init"
    c.rounds = 1
    c.msa_h0 = 0.5
    c.msa_cross_source = True
    c.msa_stop = "all_sources"
    c.baseline_all = True
    c.selection_metric = "eval/grounding/val/acc@0.5"
    c.histogram_bins = 1000
    c.histogram_size = (1100, 440)
    c.score_batch_size = 0
    c.synthetic_sources = {}
    c.synthetic_num_train = 512
    c.synthetic_num_val = 128
    c.synthetic_image_size = 32
    c.synthetic_seed = 0
    return c


def add_defaults(config: ml_collections.ConfigDict) -> None:
    """Give `config` a `curriculum` group, filling in options it leaves out."""
    with config.unlocked():
        if "curriculum" not in config:
            config.curriculum = ml_collections.ConfigDict()
        for key, value in default_options().items():
            if key not in config.curriculum:
                config.curriculum[key] = value


def build_curriculum_config(path: str | Path, overrides: Sequence[tuple[str, str]] = ()
                            ) -> ml_collections.ConfigDict:
    """Load a (curriculum or plain training) config file, add the defaults, apply the overrides, check
    the engine's fields and lock."""
    return build_config(path, overrides, add_defaults)


def _choice(value: str, allowed: Sequence[str], key: str) -> str:
    if value not in allowed:
        raise ConfigError(f"curriculum.{key} must be one of {list(allowed)}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class CurriculumSettings:
    """The validated `curriculum` group (the module docstring explains each option)."""

    mode: str
    sources: tuple[str, ...]
    source_files: dict[str, str]
    thresholds: tuple[float, ...]
    scan: str
    tie_break: str
    retrain_from: str
    rounds: int
    msa_h0: float
    msa_cross_source: bool
    msa_stop: str
    baseline_all: bool
    selection_metric: str
    histogram_bins: int
    histogram_size: tuple[int, int]
    score_batch_size: int
    synthetic_sources: dict[str, float]
    synthetic_num_train: int
    synthetic_num_val: int
    synthetic_image_size: int
    synthetic_seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "CurriculumSettings":
        if config.get("method") != "clipvg":
            raise ConfigError(f"the curriculum trains CLIP-VG (config.method = 'clipvg'), got {config.get('method')!r}")
        if "curriculum" not in config:
            raise ConfigError("the config has no `curriculum` group; build it with build_curriculum_config")
        c = config.curriculum
        sources = tuple(c.sources) or (config.data.get("train_split", "train_pseudo"),)
        synthetic = {str(k): float(v) for k, v in dict(c.synthetic_sources).items()}
        settings = cls(
            mode=_choice(c.mode, MODES, "mode"), sources=sources,
            source_files={str(k): str(v) for k, v in dict(c.source_files).items()},
            thresholds=tuple(sorted(float(h) for h in c.thresholds)), scan=_choice(c.scan, SCANS, "scan"),
            tie_break=_choice(c.tie_break, TIE_BREAKS, "tie_break"),
            retrain_from=_choice(c.retrain_from, RETRAIN_FROM, "retrain_from"), rounds=int(c.rounds),
            msa_h0=float(c.msa_h0), msa_cross_source=bool(c.msa_cross_source),
            msa_stop=_choice(c.msa_stop, MSA_STOPS, "msa_stop"), baseline_all=bool(c.baseline_all),
            selection_metric=str(c.selection_metric),
            histogram_bins=int(c.histogram_bins), histogram_size=tuple(int(v) for v in c.histogram_size),
            score_batch_size=int(c.score_batch_size), synthetic_sources=synthetic,
            synthetic_num_train=int(c.synthetic_num_train), synthetic_num_val=int(c.synthetic_num_val),
            synthetic_image_size=int(c.synthetic_image_size), synthetic_seed=int(c.synthetic_seed))
        settings._check()
        return settings

    def _check(self) -> None:
        bad = [name for name in self.sources if not _NAME.fullmatch(name) or "__" in name]
        if bad or len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"curriculum.sources must be distinct names of letters, digits and _.+- (no '__'), "
                              f"got {list(self.sources)}")
        unknown = sorted(set(self.source_files) - set(self.sources))
        if unknown:
            raise ConfigError(f"curriculum.source_files names {unknown}, which are not in curriculum.sources "
                              f"{list(self.sources)}")
        missing = sorted(set(self.sources) - set(self.synthetic_sources))
        if self.synthetic_sources and missing:
            raise ConfigError(f"curriculum.synthetic_sources {sorted(self.synthetic_sources)} has no noise level for "
                              f"the sources {missing}")
        if self.mode == "ssa" and len(self.sources) != 1:
            raise ConfigError(f"curriculum.mode='ssa' adapts one source; got {list(self.sources)} (use 'msa')")
        if self.mode == "msa" and len(self.sources) < 2:
            raise ConfigError(f"curriculum.mode='msa' needs at least two sources, got {list(self.sources)}")
        if self.mode == "msa" and self.rounds != 1:
            raise ConfigError("curriculum.rounds > 1 is defined for mode='ssa' only")
        if self.rounds < 1:
            raise ConfigError(f"curriculum.rounds must be >= 1, got {self.rounds}")
        if not self.thresholds or not all(0.0 <= h < 1.0 for h in self.thresholds):
            raise ConfigError(f"curriculum.thresholds must be a non-empty grid in [0, 1), got {self.thresholds}")
        if len(set(threshold_name(h) for h in self.thresholds)) != len(self.thresholds):
            raise ConfigError(f"curriculum.thresholds has repeated values: {self.thresholds}")
        if not 0.0 <= self.msa_h0 < 1.0:
            raise ConfigError(f"curriculum.msa_h0 must be in [0, 1), got {self.msa_h0}")
        if self.histogram_bins < 1 or len(self.histogram_size) != 2 or min(self.histogram_size) < 200:
            raise ConfigError(f"curriculum.histogram_bins must be >= 1 and histogram_size (width, height) at least "
                              f"200 x 200, got {self.histogram_bins}, {self.histogram_size}")
        if not all(0.0 <= p <= 1.0 for p in self.synthetic_sources.values()):
            raise ConfigError(f"curriculum.synthetic_sources noise fractions must be in [0, 1], "
                              f"got {self.synthetic_sources}")


def threshold_name(h: float) -> str:
    """h as a file-name part, as the released files write it: 0.5 -> '0_5', 0.0 -> '0_0', 0.25 -> '0_25'."""
    text = format(float(h), ".6g")
    if "e" in text:
        text = format(float(h), ".6f").rstrip("0")
    if "." not in text:
        text += ".0"
    return text.replace(".", "_")
