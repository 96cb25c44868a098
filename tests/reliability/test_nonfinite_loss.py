"""A non-finite loss stops the run naming the step, without touching the saved checkpoints; with
`train.skip_nonfinite` such updates are skipped and counted. (Kills, preemption and exact resume are
tests/reliability/test_kill_anywhere.py's.)"""

import jax
import numpy as np
import pytest

from demo_runs import small_config
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.loop import NonFiniteLossError, train


def test_nonfinite_loss_stops_and_keeps_the_checkpoint(tmp_path):
    # An absurd learning rate blows the weights up after the first updates; the loss goes NaN.
    config = small_config(**{"train.steps": 8, "train.checkpoint_every": 1, "optim.lr": 1e30,
                             "optim.warmup_steps": 0, "optim.max_grad_norm": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step (\d+)") as err:
        train(config, tmp_path)
    bad_step = int(err.value.args[0].split("at step ")[1].split()[0])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < bad_step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_params(tmp_path)))


def test_skip_nonfinite_counts_and_keeps_going(tmp_path):
    config = small_config(**{"train.steps": 6, "train.checkpoint_every": 6, "optim.lr": 1e30,
                             "optim.warmup_steps": 0, "optim.max_grad_norm": 0.0, "train.skip_nonfinite": True})
    metrics = train(config, tmp_path)
    assert metrics["nonfinite_steps"] >= 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_params(tmp_path)))
