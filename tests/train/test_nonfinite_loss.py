"""Exact resume: 20 steps straight equal 10 steps, a kill -9, and a resume, bit for bit (CPU); and
SIGTERM (a preemption notice) checkpoints the step in flight, exits with status 75, resumes exactly.
Also: a non-finite loss stops the run naming the step, without touching the saved checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from engine_config import DEMO, SMALL_MODEL, small_config
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.loop import NonFiniteLossError, train
from vlalign_jax.train.preemption import PREEMPTED_EXIT_STATUS

ROOT = Path(__file__).resolve().parents[2]


def _command(workdir):
    overrides = {"model.overrides": SMALL_MODEL, "train.batch_size": 16, "train.steps": 20,
                 "train.checkpoint_every": 10, "train.eval_every": 0, "train.progress_bar": False,
                 "data.num_threads": 1, "optim.warmup_steps": 2}
    return [sys.executable, "-m", "vlalign_jax.cli", "train", "--config", DEMO, "--workdir", str(workdir),
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def _env():
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    return {**os.environ, "XLA_FLAGS": flags + " --xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The params of the 20 steps run uninterrupted."""
    workdir = tmp_path_factory.mktemp("straight")
    done = subprocess.run(_command(workdir), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_params(workdir)


def _wait_for(path, proc, timeout=600):
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
def test_kill_and_resume_is_bitwise_exact(tmp_path, straight):

    proc = subprocess.Popen(_command(tmp_path / "killed"), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "killed" / "checkpoints" / "10" / "commit_success.txt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "checkpoints" / "20").exists()

    resumed = subprocess.run(_command(tmp_path / "killed"), env=_env(), cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr

    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), load_params(tmp_path / "killed"), straight)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_resume_is_exact(tmp_path, straight):
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen(_command(workdir), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # config.json is written once the trainer listens for SIGTERM, before compiling: the notice lands
    # during setup or a step, and whichever step is the first to finish next is checkpointed.
    _wait_for(workdir / "config.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT_STATUS, stderr[-3000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if (p / "commit_success.txt").exists())
    stopped = steps[-1]
    assert 1 <= stopped < 20 and f"stopped after step {stopped}" in stderr  # the step in flight, saved
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in metrics if "loss" in row) == stopped

    resumed = subprocess.run(_command(workdir), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped}" in resumed.stderr
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), load_params(workdir), straight)


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
