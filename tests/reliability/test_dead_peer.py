"""Peer faults in a 2-process run. A dead or hung peer: the surviving process exits with an error
naming the failure within the configured timeout (`distributed.hang_timeout_s`) instead of waiting in
a collective forever. A preemption notice (SIGTERM) to one process: both checkpoint the same step and
exit with status 75.

Killed peer (either one): its sockets close, and usually the survivor's next collective fails at once
and is reported as such; where the survivor's collective keeps waiting instead (seen now and then
with process 1 killed), the watchdog ends it after `hang_timeout_s` without a completed step. With
the coordinator (process 0) killed, JAX's coordination client in the survivor may end it first, at
once, by SIGABRT with its own message ("... another task died"): a named failure too, in JAX's words.
Stopped peer (SIGSTOP: alive, holding its connections, silent): only the watchdog can tell. JAX's
heartbeat check is set far beyond both (300 s). Our exits have status 69 (EX_UNAVAILABLE)."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from demo_runs import ROOT, cpu_env, free_port, train_command
from vlalign_jax.train import checkpoint_manifest
from vlalign_jax.train.preemption import PREEMPTED_EXIT_STATUS
from vlalign_jax.train.watchdog import HUNG_EXIT_STATUS

HANG_TIMEOUT_S = 8
JAX_ABORT = "Terminating process because the JAX distributed service detected fatal errors"


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def _start_pair(workdir: Path, cache: Path) -> list[subprocess.Popen]:
    port = free_port()
    overrides = {"train.steps": 100_000, "train.batch_size": 16, "train.checkpoint_every": 5, "train.log_every": 2,
                 "distributed.coordinator_address": f"127.0.0.1:{port}", "distributed.num_processes": 2,
                 "distributed.heartbeat_timeout_s": 300, "distributed.hang_timeout_s": HANG_TIMEOUT_S}
    return [subprocess.Popen(train_command(workdir, {**overrides, "distributed.process_id": i}), env=cpu_env(1, cache),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def _wait_for_step(workdir: Path, step: int, procs, timeout: float = 300) -> None:
    metrics, deadline = workdir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if metrics.exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
            if any(row.get("step", 0) >= step for row in rows):
                return
        time.sleep(0.1)
    raise AssertionError(f"the pair did not reach step {step}: " + " | ".join(
        (p.communicate()[0] or "")[-1500:] for p in procs if p.poll() is not None))


def _fail_peer(tmp_path, cache, how: int, victim: int = 1) -> tuple[int, str, float]:
    """Start a pair, hit process `victim` with signal `how` mid-training; the other's status, output and
    seconds from the signal to its exit."""
    procs = _start_pair(tmp_path, cache)
    survivor = procs[1 - victim]
    try:
        _wait_for_step(tmp_path, 12, procs)  # past a checkpoint: saves are collective too
        procs[victim].send_signal(how)
        hit = time.monotonic()
        out, _ = survivor.communicate(timeout=HANG_TIMEOUT_S + 60)
        return survivor.returncode, out, time.monotonic() - hit
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1], ids=["coordinator_killed", "worker_killed"])
def test_a_killed_peer_stops_the_survivor_with_a_named_error(tmp_path, compilation_cache, victim):
    status, out, seconds = _fail_peer(tmp_path, compilation_cache, signal.SIGKILL, victim)
    if status == -signal.SIGABRT:  # JAX's coordination client ended it first (the coordinator is gone)
        how = "JAX's coordination client"
        assert JAX_ABORT in out and "another task died" in out, out[-3000:]
    else:
        how = "a failed collective" if "collective failed" in out else "the hang watchdog"
        assert status == HUNG_EXIT_STATUS, out[-3000:]
        assert "most likely died" in out and ("collective failed" in out or "no training progress" in out), out[-3000:]
    print(f"\nprocess {victim} killed: the other exited with status {status} after {seconds:.1f} s, by {how}")
    assert seconds < HANG_TIMEOUT_S + 5, seconds


@pytest.mark.slow
def test_a_hung_peer_stops_the_survivor_after_the_hang_timeout(tmp_path, compilation_cache):
    status, out, seconds = _fail_peer(tmp_path, compilation_cache, signal.SIGSTOP)
    print(f"\nstopped peer: the survivor exited with status {status} after {seconds:.1f} s")
    assert status == HUNG_EXIT_STATUS, out[-3000:]
    assert f"(hang timeout {HANG_TIMEOUT_S} s)" in out and "This is process 0 of 2" in out, out[-3000:]
    assert HANG_TIMEOUT_S - 1 <= seconds < HANG_TIMEOUT_S + 5, seconds
    committed = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert committed and all(checkpoint_manifest.verify(p) is None for p in committed)  # committed steps stay


@pytest.mark.slow
def test_sigterm_to_one_process_checkpoints_the_same_step_on_both(tmp_path, compilation_cache):
    procs = _start_pair(tmp_path, compilation_cache)
    try:
        _wait_for_step(tmp_path, 12, procs)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [PREEMPTED_EXIT_STATUS] * 2, outs[0][-2000:] + outs[1][-2000:]
    stopped = [re.search(r"stopped after step (\d+)", out) for out in outs]
    assert all(stopped) and stopped[0].group(1) == stopped[1].group(1), outs
    assert (tmp_path / "checkpoints" / stopped[0].group(1)).is_dir()
