"""CLIP-VG's self-paced curriculum on pseudo-labels drawn from the synthetic shapes (CPU, minutes per stage).

The sources are written into WORKDIR/synthetic_data by the command itself: each 1,024 shapes images
with its referring expression, a known fraction of whose boxes is wrong (`curriculum.synthetic_sources`:
20% for "template", 40% "relation", 60% "caption"), and a clean val split for model selection. Every
stage is the CLIP-VG of configs/clipvg/shapes.py trained the same way (the demo CLIP frozen but its
visual position embedding, the word vocabulary of the shapes), 1,000 steps on the stage's labels:

    vlalign train --config configs/demo/clip_shapes.py --workdir runs/demo
    vlalign curriculum --config configs/clipvg/curriculum_shapes.py --workdir runs/ssa \
        --config.model.init_from=runs/demo
    vlalign curriculum --config configs/clipvg/curriculum_shapes.py --workdir runs/msa \
        --config.model.init_from=runs/demo --config.curriculum.mode=msa \
        --config.curriculum.sources="('template', 'caption')" --config.curriculum.thresholds="(0.0, 0.5)"

SSA trains a measurer on "template", scores its labels (WORKDIR/round_0/scores, histograms), then one
model per threshold h on the labels with r > h, and keeps the one with the best val Acc@0.5. MSA does
that over several sources (vlalign_jax/curriculum/msa.py). Both also report the model trained on all
labels (`all_labels`) and the share of wrong labels in the selection and in all labels: each record
marks its wrong label (`"noisy": true`). The threshold grid here is coarser than the default
0.0, 0.1, ..., 0.9 to save time. Measured runs: docs/RESULTS.md.

Options left open by the paper, with the defaults used ([UNVERIFIED]; vlalign_jax/curriculum/settings.py):
scan "grid" (every threshold trained; "greedy" stops at the first drop), tie_break "larger_threshold",
retrain_from "init" (each candidate from model.init_from, not from the measurer), rounds 1 (SSA),
msa_h0 0.5 (the released multi-source files' threshold), msa_cross_source True, msa_stop
"all_sources", selection_metric "eval/grounding/val/acc@0.5" (annotated val, as the paper).
"""

import importlib.util
from pathlib import Path

import ml_collections


def _load(name: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = _load("fully_supervised")
    shapes = _load("shapes")  # the toy CLIP-VG of configs/clipvg/shapes.py, trained the same way
    config.model.name = shapes.model.name
    config.model.init_from = ""  # the demo CLIP's workdir (see above); "" = a random CLIP
    config.model.overrides = shapes.model.overrides

    config.data.dataset = "unc"  # the records' layout name; the labels are the synthetic ones below
    config.data.train_split = "train_pseudo"
    config.data.eval_splits = ("val",)
    config.data.split_root = ""  # set by curriculum.synthetic_sources
    config.data.image_root = ""
    config.data.tokenizer = "words"  # the demo CLIP's word vocabulary; the split files hold shapes' expressions
    config.data.vocabulary = "synthetic_shapes"
    config.data.train_scales = shapes.data.train_scales
    config.data.crop_prob = shapes.data.crop_prob
    config.data.color_jitter = shapes.data.color_jitter
    config.data.num_threads = 2
    config.data.num_workers = 0

    # The same steps for every candidate (the release trains a fixed number of epochs instead, which
    # would leave a small subset of these 1,024 labels less than a batch).
    config.train.epochs = 0
    config.train.steps = 1000
    config.train.batch_size = 64
    config.train.checkpoint_every = 500
    config.train.eval_every = 500
    config.train.log_every = 50
    config.optim.lr = shapes.optim.lr
    config.optim.warmup_steps = shapes.optim.warmup_steps
    config.optim.freeze = shapes.optim.freeze  # CLIP frozen but its visual position embedding, as released
    config.eval.batch_size = 128

    config.curriculum = ml_collections.ConfigDict()
    config.curriculum.mode = "ssa"
    config.curriculum.sources = ("template",)
    config.curriculum.source_files = {}
    config.curriculum.thresholds = (0.0, 0.2, 0.4, 0.6, 0.8)
    config.curriculum.scan = "grid"  # [UNVERIFIED]
    config.curriculum.tie_break = "larger_threshold"
    config.curriculum.retrain_from = "init"  # [UNVERIFIED]
    config.curriculum.rounds = 1  # [UNVERIFIED]
    config.curriculum.msa_h0 = 0.5  # [UNVERIFIED]
    config.curriculum.msa_cross_source = True
    config.curriculum.msa_stop = "all_sources"  # [UNVERIFIED]
    config.curriculum.selection_metric = "eval/grounding/val/acc@0.5"
    config.curriculum.histogram_bins = 1000
    config.curriculum.histogram_size = (1100, 440)
    config.curriculum.score_batch_size = 0
    config.curriculum.synthetic_sources = {"template": 0.2, "relation": 0.4, "caption": 0.6}
    config.curriculum.synthetic_num_train = 1024
    config.curriculum.synthetic_num_val = 128
    config.curriculum.synthetic_image_size = 32
    config.curriculum.synthetic_seed = 0
    return config
