"""Tiny CLIP trained from scratch on the built-in synthetic shapes dataset (CPU, a few minutes).

    vlalign train --config configs/demo/clip_shapes.py --workdir runs/demo

Held-out image->text R@1 is logged as eval/retrieval/i2t_R@1.
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "clip"
    config.loss = "softmax"

    config.model = ml_collections.ConfigDict()
    config.model.name = "tiny"
    config.model.dtype = "float32"
    config.model.remat = "none"
    config.model.init_from = ""  # start from weights: a checkpoint (any converter family) or a run's workdir
    config.model.init_family = ""  # "" = guess from the contents; or openai, open_clip, hf, degla, flax
    config.model.overrides = {"vision": {"image_size": 32, "patch_size": 8}, "text": {"context_length": 24}}

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic_shapes"
    config.data.tokenizer = "words"
    config.data.num_train = 100_000
    config.data.num_heldout = 512
    config.data.max_objects = 2
    config.data.seed = 0
    config.data.num_threads = 2  # reader threads per process (or per worker)
    config.data.num_workers = 0  # grain worker processes for read + preprocess; 0 = in process
    config.data.on_error = "raise"  # or "skip": drop bad records, count them in data/records_skipped
    config.data.max_skip_fraction = 0.01  # with "skip": stop once more records than this are bad

    config.train = ml_collections.ConfigDict()
    config.train.steps = 400
    config.train.batch_size = 128
    config.train.seed = 0
    config.train.checkpoint_every = 100
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = True
    config.train.log_every = 20
    config.train.eval_every = 100
    config.train.accum_steps = 1
    config.train.ema_decay = 0.0
    config.train.skip_nonfinite = False
    config.train.progress_bar = True

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 50
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
