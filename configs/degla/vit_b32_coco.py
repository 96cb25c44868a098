"""DeGLA's released recipe: OpenAI CLIP ViT-B/32 fine-tuned on COCO train2014 captions with 4 LLM-made
hard negatives each (research/degla.md section 3: global batch 256, lr 1e-6 peak, AdamW (0.9, 0.98,
eps 1e-6), weight decay 0.1 on tensors of 2+ dims, 50 warmup steps then cosine, 5 epochs, EMA teacher
0.9996, loss weights 1 / 0.005 / 0.1 / 0.1). `degla.tgc_variant = "released_code"` reproduces the
released training run's TGC mask; "paper" is the method as described.

    vlalign convert ViT-B-32.pt clip_b32 --to flax            # optional: any family loads directly
    vlalign train --config configs/degla/vit_b32_coco.py --workdir runs/degla_b32 \
        --config.model.init_from=ViT-B-32.pt --config.data.train_path=data/DeGLA.json \
        --config.data.image_root=data/coco
    vlalign export runs/degla_b32 degla_b32.pt --to degla     # the student alone, open_clip-loadable
"""

import ml_collections

from vlalign_jax.parallel.distributed import default_config as distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "degla"
    config.loss = "softmax"

    config.degla = ml_collections.ConfigDict()
    config.degla.num_negatives = 4  # hard negatives per image (DeGLA: 4 LLM-made ones)
    config.degla.global_weight = 1.0  # NegCLIP-style global contrast over captions + all negatives
    config.degla.distill_weight = 0.005  # squared L2 to the EMA teacher (summed, as released)
    config.degla.igc_weight = 0.1  # Image-Grounded Contrast: each image vs its caption and its negatives
    config.degla.tgc_weight = 0.1  # Text-Grounded Contrast: caption to teacher caption vs its negatives
    config.degla.tgc_scale = 10.0  # TGC's fixed logit scale
    config.degla.tgc_variant = "released_code"  # "paper", or "released_code" (the released mask; see losses/degla.py)

    config.model = ml_collections.ConfigDict()
    config.model.name = "ViT-B-32"
    config.model.dtype = "bfloat16"  # the reference trains with fp16 AMP; fp32 master weights either way
    config.model.remat = "none"
    config.model.overrides = {"act": "quick_gelu"}  # OpenAI's ViT-B/32
    config.model.init_from = "ViT-B-32.pt"  # OpenAI's checkpoint (TorchScript or state dict), or a converted one
    config.model.init_family = ""  # guessed from the file

    config.data = ml_collections.ConfigDict()
    config.data.name = "degla_json"
    config.data.train_path = "data/DeGLA.json"  # {image_id, original, enhanced: [4 negatives]} records
    config.data.heldout_path = ""  # optional records of the same format for held-out evaluation
    config.data.image_root = "data/coco"  # holds train2014/COCO_train2014_<id>.jpg
    config.data.tokenizer = "clip"
    config.data.vocab_path = ""  # "" = the BPE vocabulary shipped with open_clip
    config.data.train_crop_scale = (0.9, 1.0)  # open_clip's train transform
    config.data.seed = 42
    config.data.num_threads = 4
    config.data.num_workers = 8
    config.data.on_error = "raise"
    config.data.max_skip_fraction = 0.01

    config.train = ml_collections.ConfigDict()
    config.train.steps = 0  # set by train.epochs
    config.train.batch_size = 256  # 8 GPUs x 32 in the release
    config.train.seed = 42
    config.train.epochs = 5
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = True
    config.train.log_every = 10
    config.train.eval_every = 0
    config.train.accum_steps = 1
    config.train.ema_decay = 0.9996  # the EMA teacher
    config.train.skip_nonfinite = False
    config.train.progress_bar = True

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-6
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 0.1
    config.optim.decay_position_embeddings = True  # every tensor of 2+ dims, as open_clip
    config.optim.b1 = 0.9
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.max_grad_norm = 0.0  # no clipping in the release
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
