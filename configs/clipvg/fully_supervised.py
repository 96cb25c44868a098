"""CLIP-VG, fully supervised (research/clipvg.md 5.1, `train_and_eval_script/*full*.sh`): OpenAI CLIP
ViT-B/16 at 224 px, frozen except the visual position embedding; fusion + box head trained with L1 +
GIoU on the annotated training split; AdamW lr 2.5e-4, weight decay 1e-4 on every trainable tensor,
cosine, no warmup, no clipping, global batch 320 (5 GPUs x 64), 110 epochs.

    vlalign data convert-splits data/split/unc/*.pth --dataset unc --out data/split/unc   # optional
    vlalign train --config configs/clipvg/fully_supervised.py --workdir runs/clipvg_unc_full \\
        --config.model.init_from=ViT-B-16.pt --config.data.dataset=unc \\
        --config.data.split_root=data/split --config.data.data_root=data

`data.dataset`: unc (RefCOCO), unc+ (RefCOCO+), gref (RefCOCOg Google), gref_umd (RefCOCOg UMD),
referit (ReferItGame), flickr (Flickr30k Entities). Evaluated on the splits the paper reports for the
dataset (val, testA, testB / val, test), Acc@0.5, as eval/grounding/<split>/acc@0.5.

Differences from the release, by design: the cosine schedule decays per step, not per epoch; images
and boxes are not integer-truncated unless `data.released_code=True` (which also restores the
reference's crop test and substring direction-word matching).
"""

import ml_collections

from vlalign_jax.models.grounding import FREEZE, UNUSED
from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "clipvg"

    config.model = ml_collections.ConfigDict()
    config.model.name = "ViT-B-16"
    config.model.dtype = "float32"  # the release trains in fp32 (no AMP)
    config.model.remat = "none"
    config.model.init_from = "ViT-B-16.pt"  # OpenAI's CLIP (any family), or a CLIP-VG checkpoint
    config.model.init_family = ""
    config.model.overrides = {"clip": {"act": "quick_gelu"}}  # OpenAI's ViT-B/16

    config.data = ml_collections.ConfigDict()
    config.data.name = "splits"
    config.data.dataset = "unc"
    config.data.train_split = "train"
    config.data.eval_splits = ()  # () = the dataset's reported splits
    config.data.split_root = "data/split"  # <split_root>/<dataset>/<dataset>_<split>.pth or .jsonl
    config.data.data_root = "data"  # the reference's --data_root (image folders below it)
    config.data.image_root = ""  # or the dataset's image folder directly
    config.data.allow_pickle = False  # .pth splits holding numpy objects need it (runs the pickle)
    config.data.tokenizer = "clip"
    config.data.vocab_path = ""
    config.data.vocabulary = ""  # "synthetic_shapes": the word tokenizer over split files of the shapes (demo)
    config.data.prompt_template = ""  # e.g. "a photo of {pseudo_query}"; "" = the expression as is
    config.data.train_scales = ()  # () = the released 224, 192, ..., 32
    config.data.crop_prob = 0.5
    config.data.color_jitter = True
    config.data.horizontal_flip_prob = 0.0  # the release leaves the flip out
    config.data.released_code = False
    config.data.seed = 13
    config.data.num_threads = 4
    config.data.num_workers = 8
    config.data.on_error = "raise"
    config.data.max_skip_fraction = 0.01

    config.train = ml_collections.ConfigDict()
    config.train.steps = 0  # set by train.epochs
    config.train.epochs = 110
    config.train.batch_size = 320
    config.train.seed = 13
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = True
    config.train.log_every = 20
    config.train.eval_every = 1000
    config.train.accum_steps = 1
    config.train.ema_decay = 0.0
    config.train.skip_nonfinite = False
    config.train.progress_bar = True

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2.5e-4
    config.optim.warmup_steps = 0
    config.optim.weight_decay = 1e-4
    config.optim.decay_rule = "all"
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.max_grad_norm = 0.0
    config.optim.final_lr_fraction = 0.0
    config.optim.lr_multipliers = {}
    config.optim.freeze = FREEZE + UNUSED  # all of CLIP but the visual position embedding

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256
    config.eval.num_heldout = 0  # 0 = every example of each split

    config.distributed = distributed_config()
    return config
