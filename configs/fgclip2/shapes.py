"""FG-CLIP 2 stage-2 training on the synthetic shapes dataset: sigmoid loss on long and short captions,
region-text contrast on each image's NaFlex patch grid, textual intra-modal contrast and the
hard-negative block with the dynamic-margin ranking loss (CPU, minutes).

    vlalign train --config configs/fgclip2/shapes.py --workdir runs/fgclip2_shapes

Same images (48 px, 8 px patches: a 6 x 6 grid), data, steps and optimizer as configs/fgclip/shapes.py,
so the held-out eval/regions/hard_negative_accuracy of the two can be compared. The ranking threshold
is logged as ranking_threshold.
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "fgclip2"
    config.fgclip2 = ml_collections.ConfigDict()
    config.fgclip2.long_weight = 1.0  # sigmoid loss, image vs long caption (long walk)
    config.fgclip2.short_weight = 1.0  # sigmoid loss, image vs short caption
    config.fgclip2.region_weight = 0.2  # RoIAlign box features vs box descriptions
    config.fgclip2.tic_weight = 0.1  # box descriptions pushed apart from their 10 most similar others
    config.fgclip2.duplicate_threshold = 0.95  # ... except near-duplicates (cosine above this)
    config.fgclip2.tic_num_negatives = 10
    config.fgclip2.hard_weight = 0.5  # the hard-negative block:
    config.fgclip2.hard_itc_weight = 0.6  # each box vs every box's description and negatives
    config.fgclip2.hard_pair_weight = 3.0  # each box vs its own description and negatives
    config.fgclip2.hard_rank_weight = 0.4  # ranking loss with the synchronised dynamic margin
    config.fgclip2.max_ranking_threshold = 10.0
    config.fgclip2.clamp_logit_scales = True  # False: the released code (region/hard scales uncapped)
    config.fgclip2.max_grid = 0  # static bound on a patch grid's side for RoIAlign; 0 = max_num_patches

    config.model = ml_collections.ConfigDict()
    config.model.name = "tiny"
    config.model.dtype = "float32"
    config.model.remat = "none"
    config.model.init_from = ""  # a SigLIP 2 (grown to FG-CLIP 2) or FG-CLIP 2 checkpoint, or a workdir
    config.model.init_family = ""  # "" = guess from the contents; or hf, flax
    config.model.overrides = {
        "vision": {"patch_size": 8, "num_patches": 36, "width": 128, "heads": 2, "mlp_dim": 256},
        "text": {"context_length": 24, "width": 128, "heads": 2, "mlp_dim": 256, "projection_dim": 128},
    }

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic_shapes"  # or "finehard" (data.train_path, data.image_root)
    config.data.tokenizer = "words"  # or "gemma" (data.tokenizer_path: the SigLIP 2 / FG-CLIP 2 folder)
    config.data.synthetic_image_size = 48
    config.data.max_num_patches = 36  # the NaFlex bucket (released: 1024)
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
    config.optim.decay_position_embeddings = False
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
