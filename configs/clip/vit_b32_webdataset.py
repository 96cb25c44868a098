"""OpenAI-style CLIP ViT-B/32 from scratch on local webdataset tar shards (jpg/png + txt/json members).

    vlalign train --config configs/clip/vit_b32_webdataset.py --workdir runs/b32 \
        --config.data.train_shards='/data/cc12m/{00000..01242}.tar'
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "clip"
    config.loss = "softmax"

    config.model = ml_collections.ConfigDict()
    config.model.name = "ViT-B-32"
    config.model.dtype = "bfloat16"
    config.model.remat = "none"
    config.model.init_from = ""  # start from weights: a checkpoint (any converter family) or a run's workdir
    config.model.init_family = ""  # "" = guess from the contents; or openai, open_clip, hf, degla, flax
    config.model.overrides = {}

    config.data = ml_collections.ConfigDict()
    config.data.name = "webdataset"
    config.data.train_shards = "data/shards/{00000..00099}.tar"  # local, uncompressed tar shards
    config.data.heldout_shards = ""  # optional shards for the held-out retrieval eval
    config.data.caption_field = "txt"  # or a json member's "caption"
    config.data.tokenizer = "clip"
    config.data.vocab_path = ""  # "" = the BPE vocabulary shipped with open_clip
    config.data.train_crop_scale = (0.9, 1.0)  # open_clip's RandomResizedCrop scale
    config.data.seed = 0
    config.data.num_threads = 4  # reader threads per process (or per worker)
    config.data.num_workers = 8  # grain worker processes for decode + transform + tokenize
    config.data.on_error = "skip"  # web-scale data has broken files: drop, count, report
    config.data.max_skip_fraction = 0.01  # ... and stop if more than 1% are bad

    config.train = ml_collections.ConfigDict()
    config.train.steps = 10_000
    config.train.batch_size = 1024
    config.train.seed = 0
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = True
    config.train.log_every = 50
    config.train.eval_every = 1000
    config.train.accum_steps = 1
    config.train.ema_decay = 0.0
    config.train.skip_nonfinite = False
    config.train.progress_bar = True

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 500
    config.optim.weight_decay = 0.2
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
