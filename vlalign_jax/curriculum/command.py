"""`vlalign curriculum`: CLIP-VG's self-paced curriculum (SSA or MSA) from a config file, resumable.

    vlalign curriculum --config configs/clipvg/curriculum_shapes.py --workdir runs/curriculum_shapes
    vlalign curriculum --config configs/clipvg/unsupervised.py --workdir runs/unc_ssa \\
        --config.curriculum.sources="('train_pseudo',)" --config.model.init_from=ViT-B-16.pt ...

The config is a CLIP-VG training config with a `curriculum` group (settings.py; a plain training
config gets the defaults). Rerunning the same command on the same workdir resumes: finished stages
are read back from WORKDIR/curriculum_state.json and an interrupted training stage resumes from its
checkpoints. The result (the chosen model's stage folder, threshold(s), validation accuracy and
selected labels) is printed and stored as `final` in the state file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_collections

from vlalign_jax.curriculum.driver import Curriculum, ScoreFn, TrainFn
from vlalign_jax.curriculum.settings import build_curriculum_config


def run_curriculum(config: ml_collections.ConfigDict, workdir: str | Path, train_fn: TrainFn | None = None,
                   score_fn: ScoreFn | None = None) -> dict:
    """Run (or resume) the curriculum `config.curriculum` describes in `workdir`; returns the final result."""
    from vlalign_jax.curriculum.msa import run_msa
    from vlalign_jax.curriculum.ssa import run_ssa
    from vlalign_jax.train.config import save_config

    cur = Curriculum(config, workdir, train_fn, score_fn)
    save_config(config, workdir)
    final = run_ssa(cur) if cur.settings.mode == "ssa" else run_msa(cur)
    cur.state.finish(final)
    return final


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="CLIP-VG config file (with a `curriculum` group, or a training config to which the "
                             "defaults are added); fields overridden with --config.a.b=VALUE")
    parser.add_argument("--workdir", required=True,
                        help="curriculum folder: state file, one training run per stage, scores, histograms, "
                             "selections")


def run(args: argparse.Namespace) -> int:
    config = build_curriculum_config(args.config, getattr(args, "overrides", ()))
    final = run_curriculum(config, args.workdir)
    print(json.dumps(final, indent=1))
    return 0
