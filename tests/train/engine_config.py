"""A very small CLIP run config shared by the engine tests (fp32, seconds on a CPU)."""

from demo_runs import DEMO, SMALL_MODEL
from vlalign_jax.train.config import build_config


def small_config(**overrides):
    pairs = {"model.overrides": SMALL_MODEL, "train.batch_size": "16", "train.steps": "3",
             "train.progress_bar": "False", "train.eval_every": "0", "train.log_every": "1",
             "data.num_threads": "1", "data.max_objects": "2", "optim.warmup_steps": "1",
             "optim.lr": "1e-3"}
    pairs.update({k: str(v) for k, v in overrides.items()})
    return build_config(DEMO, list(pairs.items()))
