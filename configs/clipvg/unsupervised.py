"""CLIP-VG, unsupervised (research/clipvg.md 3.2, 5.1, `train_and_eval_script/*unsup*.sh`): the fully
supervised recipe (configs/clipvg/fully_supervised.py) trained on the pseudo-language labels
(`<dataset>_train_pseudo`, Pseudo-Q templates, or the multi-source labels after MSA) on 6 GPUs x 64 =
global batch 384; model selection still uses the annotated val split, as the paper does.

    vlalign train --config configs/clipvg/unsupervised.py --workdir runs/clipvg_unc_unsup \\
        --config.model.init_from=ViT-B-16.pt --config.data.dataset=unc \\
        --config.data.split_root=data/pseudo_split --config.data.data_root=data
"""

import importlib.util
from pathlib import Path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("fully_supervised", Path(__file__).with_name("fully_supervised.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.train_split = "train_pseudo"
    config.train.batch_size = 384
    return config
