"""FG-CLIP 1 stage-2 training on the synthetic shapes dataset: long and short captions, box
descriptions and per-box hard negatives (CPU, minutes).

    vlalign train --config configs/fgclip/shapes.py --workdir runs/fgclip_shapes

Held-out region accuracy (a box vs its description and its negatives) is logged as
eval/regions/hard_negative_accuracy. Global-only fine-tuning: --config.fgclip.region_weight=0
--config.fgclip.hard_negative_weight=0.
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "fgclip"
    config.fgclip = ml_collections.ConfigDict()
    config.fgclip.long_weight = 1.0  # softmax contrast, image vs long caption (long text path)
    config.fgclip.short_weight = 1.0  # softmax contrast, image vs short caption
    config.fgclip.region_weight = 0.1  # RoIAlign box features vs box descriptions
    config.fgclip.hard_negative_weight = 0.5  # each box vs its description and its negatives
    config.fgclip.clamp_logit_scales = True  # False: the released code (no cap on the three scales)

    config.model = ml_collections.ConfigDict()
    config.model.name = "tiny"
    config.model.dtype = "float32"
    config.model.remat = "none"
    config.model.init_from = ""  # a CLIP (grown to FG-CLIP) or FG-CLIP checkpoint, or a run's workdir
    config.model.init_family = ""  # "" = guess from the contents; or openai, open_clip, hf, degla, flax
    config.model.overrides = {"vision": {"image_size": 48, "patch_size": 8}, "text": {"context_length": 24}}

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic_shapes"  # or "finehard" (data.train_path, data.image_root)
    config.data.tokenizer = "words"
    config.data.num_train = 100_000
    config.data.num_heldout = 512
    config.data.max_objects = 3
    config.data.max_boxes = 3  # boxes per image (FineHARD: 4)
    config.data.num_region_negatives = 3  # hard negative descriptions per box (FineHARD: 10)
    config.data.long_region_probability = 0.5  # a box is described by its long expression this often
    config.data.seed = 0
    config.data.num_threads = 2
    config.data.num_workers = 0
    config.data.on_error = "raise"
    config.data.max_skip_fraction = 0.01

    config.train = ml_collections.ConfigDict()
    config.train.steps = 200
    config.train.batch_size = 64
    config.train.seed = 0
    config.train.checkpoint_every = 100
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = True
    config.train.log_every = 20
    config.train.eval_every = 50
    config.train.accum_steps = 1
    config.train.ema_decay = 0.0
    config.train.skip_nonfinite = False
    config.train.progress_bar = True

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 0.1
    config.optim.decay_position_embeddings = False  # True: open_clip's rule (every tensor of 2+ dims)
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
    config.eval.num_heldout = 512

    config.distributed = distributed_config()
    return config
