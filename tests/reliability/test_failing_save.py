"""A save that fails mid-run (the disk fills up) stops the run with an error naming the step, the
folder and the cause, leaves the earlier checkpoints untouched, and the same command resumes later.

The failure is real, not mocked: from the save of step 8 on, the child process may not grow any file
past 16 KiB (RLIMIT_FSIZE, with SIGXFSZ ignored), so the kernel refuses orbax's writes with EFBIG,
"File too large", as it would refuse them with ENOSPC on a full disk."""

import subprocess
import sys

import jax
import numpy as np

from demo_runs import ROOT, cpu_env, train_command
from vlalign_jax.train import checkpoint_manifest
from vlalign_jax.train.checkpoint import load_params

CHILD = '''
import resource, signal, sys
from vlalign_jax import cli
from vlalign_jax.train import checkpoint

fail_at, limit = int(sys.argv[1]), int(sys.argv[2])
original = checkpoint.Checkpointer.save


def save(self, step, *args, **kwargs):
    if step == fail_at:
        self.wait()  # the saves before this one complete normally
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return original(self, step, *args, **kwargs)


checkpoint.Checkpointer.save = save
sys.exit(cli.main(sys.argv[3:]))
'''
RUN = {"train.steps": 12, "train.batch_size": 16, "train.checkpoint_every": 4, "train.log_every": 1}


def test_a_save_failing_for_space_stops_the_run_and_keeps_the_earlier_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    command = train_command(workdir, RUN)
    (tmp_path / "child.py").write_text(CHILD)
    failed = subprocess.run([sys.executable, str(tmp_path / "child.py"), "8", str(16 * 1024), *command[3:]],
                            env=cpu_env(1), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2, failed.stderr[-3000:]
    prefix = f"vlalign train: error: saving checkpoint step 8 under {workdir / 'checkpoints'} failed"
    error = next((line for line in failed.stderr.splitlines() if line.startswith(prefix)), None)
    assert error is not None, failed.stderr[-3000:]
    assert "File too large" in error and "the checkpoints before it are untouched (newest: step 4)" in error

    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["4"]
    assert checkpoint_manifest.has_manifest(checkpoints / "4") and checkpoint_manifest.verify(checkpoints / "4") is None
    before = load_params(workdir)

    resumed = subprocess.run(command, env=cpu_env(1), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 4" in resumed.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["12", "8"]  # keep_checkpoints=2; the cut write is gone
    after = jax.tree.leaves(load_params(workdir))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), after))  # it trained on
