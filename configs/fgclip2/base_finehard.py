"""FG-CLIP 2's released stage-2 recipe (research/fgclip.md section 7, `main:scripts/train/stage2_fgclip2.sh`):
SigLIP 2 base-patch16 NaFlex grown to FG-CLIP 2 (196 long positions, box/long text heads and the dense
head copied) and trained six epochs on FineHARD with the sigmoid loss on long and short captions,
0.2 region-text contrast, 0.1 textual intra-modal contrast and 0.5 x the hard-negative block with the
synchronised dynamic-margin ranking loss; global batch 4096 (8 x 512), lr 1e-6 cosine after 3%
warmup, AdamW (0.9, 0.98, 1e-6), weight decay 0.001 with the Hugging Face Trainer's rule, bf16,
gradient checkpointing, NaFlex at 1024 patches, images under 128 px first resized to 512 x 512.

    vlalign train --config configs/fgclip2/base_finehard.py --workdir runs/fgclip2_base \\
        --config.model.init_from=siglip2-base-patch16-naflex \\
        --config.data.tokenizer_path=siglip2-base-patch16-naflex \\
        --config.data.train_path=FineHARD/jsonfiles --config.data.image_root=FineHARD/images

Differences from the release, by design: one NaFlex bucket (1024, the largest) for every batch
instead of a bucket per batch (each bucket would be a separate compilation; `data.max_num_patches`
picks another); English FineHARD only (the bilingual sampler's Chinese megabatches need Chinese
data that is not public); the region and hard temperatures are not clamped, as released.
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "fgclip2"
    config.fgclip2 = ml_collections.ConfigDict()
    config.fgclip2.long_weight = 1.0
    config.fgclip2.short_weight = 1.0
    config.fgclip2.region_weight = 0.2
    config.fgclip2.tic_weight = 0.1
    config.fgclip2.duplicate_threshold = 0.95
    config.fgclip2.tic_num_negatives = 10
    config.fgclip2.hard_weight = 0.5
    config.fgclip2.hard_itc_weight = 0.6
    config.fgclip2.hard_pair_weight = 3.0
    config.fgclip2.hard_rank_weight = 0.4
    config.fgclip2.max_ranking_threshold = 10.0
    config.fgclip2.clamp_logit_scales = False  # the release never clamps them
    config.fgclip2.max_grid = 0  # 0 = max_num_patches: exact RoIAlign for any aspect ratio

    config.model = ml_collections.ConfigDict()
    config.model.name = "base-patch16"
    config.model.dtype = "bfloat16"
    config.model.remat = "full"
    config.model.overrides = {}
    config.model.init_from = "siglip2-base-patch16-naflex"  # google/siglip2-base-patch16-naflex, or fg-clip2-base
    config.model.init_family = ""

    config.data = ml_collections.ConfigDict()
    config.data.name = "finehard"
    config.data.train_path = "FineHARD/jsonfiles"
    config.data.heldout_path = ""
    config.data.image_root = "FineHARD/images"
    config.data.tokenizer = "gemma"  # short/box 64, long 196 tokens, lower-cased as the release does
    config.data.tokenizer_path = "siglip2-base-patch16-naflex"  # any folder with the Gemma tokenizer files
    config.data.max_num_patches = 1024
    config.data.min_image_side = 128  # smaller images are first resized to small_image_size squared
    config.data.small_image_size = 512
    config.data.max_boxes = 4
    config.data.num_region_negatives = 10
    config.data.long_region_probability = 0.5
    config.data.seed = 0
    config.data.num_threads = 4
    config.data.num_workers = 8
    config.data.on_error = "skip"
    config.data.max_skip_fraction = 0.01

    config.train = ml_collections.ConfigDict()
    config.train.steps = 0  # set by train.epochs
    config.train.epochs = 6
    config.train.batch_size = 4096
    config.train.seed = 0
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = True
    config.train.log_every = 10
    config.train.eval_every = 0
    config.train.accum_steps = 1
    config.train.ema_decay = 0.0
    config.train.skip_nonfinite = False
    config.train.progress_bar = True

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-6
    config.optim.warmup_steps = 0
    config.optim.warmup_fraction = 0.03  # the Trainer's warmup_ratio
    config.optim.weight_decay = 0.001
    config.optim.decay_rule = "all_but_norms_and_biases"
    config.optim.decay_position_embeddings = True
    config.optim.b1 = 0.9
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.max_grad_norm = 1.0
    config.optim.final_lr_fraction = 0.0
    config.optim.lr_multipliers = {}
    config.optim.freeze = ()

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256
    config.eval.num_heldout = 2048

    config.distributed = distributed_config()
    return config
