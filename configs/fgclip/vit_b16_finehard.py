"""FG-CLIP 1's released stage-2 recipe (research/fgclip.md section 7, `v1.0:scripts/train.sh`): OpenAI
CLIP ViT-B/16 grown to FG-CLIP (248 long positions, `text_filip_projection` copied) and trained one
epoch on FineHARD with long + short caption contrast, 0.1 region-text contrast and 0.5 per-box hard
negatives; global batch 4096 (8 x 512), lr 1e-6 cosine after 200 warmup steps, AdamW (0.9, 0.999,
1e-8), weight decay 0.001 with the Hugging Face Trainer's rule, bf16, gradient checkpointing.

    vlalign train --config configs/fgclip/vit_b16_finehard.py --workdir runs/fgclip_b16 \\
        --config.model.init_from=clip-vit-base-patch16 --config.data.train_path=FineHARD/jsonfiles \\
        --config.data.image_root=FineHARD/images
    vlalign export runs/fgclip_b16 fg-clip-base --to fgclip     # the HF remote-code layout

Differences from the release, by design: the region terms are computed per device over its own
boxes as the release does per GPU, but a device holds `batch_size / devices` images (512 on 8
devices reproduces it); the three temperatures are not clamped (`clamp_logit_scales=False`), as released.
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "fgclip"
    config.fgclip = ml_collections.ConfigDict()
    config.fgclip.long_weight = 1.0
    config.fgclip.short_weight = 1.0
    config.fgclip.region_weight = 0.1
    config.fgclip.hard_negative_weight = 0.5
    config.fgclip.clamp_logit_scales = False  # the release never clamps them

    config.model = ml_collections.ConfigDict()
    config.model.name = "ViT-B-16"
    config.model.dtype = "bfloat16"
    config.model.remat = "full"  # the release trains with gradient checkpointing
    config.model.overrides = {"act": "quick_gelu"}  # OpenAI's ViT-B/16
    config.model.init_from = "clip-vit-base-patch16"  # openai/clip-vit-base-patch16 (any family), or fg-clip-base
    config.model.init_family = ""

    config.data = ml_collections.ConfigDict()
    config.data.name = "finehard"
    config.data.train_path = "FineHARD/jsonfiles"  # a JSON array file, or a folder of them
    config.data.heldout_path = ""
    config.data.image_root = "FineHARD/images"
    config.data.tokenizer = "clip"  # short 77, long 248 tokens
    config.data.vocab_path = ""
    config.data.max_boxes = 4  # max_anns
    config.data.num_region_negatives = 10
    config.data.long_region_probability = 0.5  # each box described by its short or long expression
    config.data.seed = 0
    config.data.num_threads = 4
    config.data.num_workers = 8
    config.data.on_error = "skip"  # web images: skip and count unreadable ones
    config.data.max_skip_fraction = 0.01

    config.train = ml_collections.ConfigDict()
    config.train.steps = 0  # set by train.epochs
    config.train.epochs = 1
    config.train.batch_size = 4096  # 8 GPUs x 512
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
    config.optim.warmup_steps = 200
    config.optim.weight_decay = 0.001
    config.optim.decay_rule = "all_but_norms_and_biases"  # the Hugging Face Trainer's
    config.optim.decay_position_embeddings = True
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.max_grad_norm = 1.0  # the Trainer's default
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
