"""Kill anywhere, resume exactly: 20 SIGKILLs at random moments (start-up, training, mid checkpoint write),
each followed by the same command, end with params bitwise equal to an uninterrupted run; a partial
write is never resumed from (scripts/kill_anywhere.py). And SIGTERM, a preemption notice, checkpoints
the step in flight, exits with status 75 and resumes exactly.

Every child shares JAX's persistent compilation cache, so a restart costs its imports and set-up only."""

import importlib.util
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from demo_runs import ROOT, cpu_env, train_command
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.preemption import PREEMPTED_EXIT_STATUS

KILLS = 20
RUN = {"train.steps": 48, "train.batch_size": 16, "train.checkpoint_every": 4, "train.keep_checkpoints": 2,
       "train.log_every": 1, "optim.warmup_steps": 2}


def _harness():
    spec = importlib.util.spec_from_file_location("kill_anywhere", ROOT / "scripts/kill_anywhere.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
    """The final params of the run uninterrupted (it also fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("straight")
    done = subprocess.run(train_command(workdir, RUN), env=cpu_env(1, cache), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_params(workdir)


def _assert_bitwise_equal(got, want):
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.slow
def test_twenty_kills_anywhere_resume_to_the_uninterrupted_params(tmp_path, cache, straight):
    workdir = tmp_path / "killed"
    report = _harness().kill_anywhere(train_command(workdir, RUN), workdir, kills=KILLS, seed=0,
                                      env=cpu_env(1, cache), logs=tmp_path / "logs")
    summary = report.to_dict()
    (tmp_path / "report.json").write_text(json.dumps(summary))
    print(f"\nkill anywhere: {len(report.kills)} kills ({sum(k.moment == 'start-up' for k in report.kills)} in start-up, "
          f"{sum(k.moment == 'training' for k in report.kills)} in training, {sum(k.moment == 'saving' for k in report.kills)} "
          f"aimed at a save), {report.cut_writes} cut a checkpoint write, {report.resumes_checked()} starts checked, "
          f"{len(report.wrong_resumes())} wrong, final params bitwise equal, {report.seconds:.0f} s")
    assert len(report.kills) == KILLS and report.final_returncode == 0
    assert {k.moment for k in report.kills} == {"start-up", "training", "saving"}, summary
    assert report.cut_writes >= 3, summary  # kills that left a checkpoint write half done
    assert report.resumes_checked() >= KILLS // 2 and not report.wrong_resumes(), summary
    assert max(max(k.committed, default=0) for k in report.kills) >= RUN["train.checkpoint_every"] * 2, summary
    _assert_bitwise_equal(load_params(workdir), straight)


def _wait_for(path, proc, timeout=600):
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_resume_is_exact(tmp_path, cache, straight):
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen(train_command(workdir, RUN), env=cpu_env(1, cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # config.json is written once the trainer listens for SIGTERM, before compiling: the notice lands
    # during setup or a step, and whichever step is the first to finish next is checkpointed.
    _wait_for(workdir / "config.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT_STATUS, stderr[-3000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    stopped = steps[-1]
    assert 1 <= stopped < RUN["train.steps"] and f"stopped after step {stopped}" in stderr  # the step in flight
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in metrics if "loss" in row) == stopped

    resumed = subprocess.run(train_command(workdir, RUN), env=cpu_env(1, cache), cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped}" in resumed.stderr
    _assert_bitwise_equal(load_params(workdir), straight)
