"""Two processes x 4 CPU devices (gloo collectives) follow the same loss trajectory as 1 x 8."""

import json
import subprocess
from pathlib import Path

import pytest

from demo_runs import ROOT, cpu_env, free_port, train_command

OVERRIDES = {"train.steps": 3, "train.batch_size": 32, "train.log_every": 1, "train.checkpoint_every": 3,
             "mesh.data": -1}


def _run(workdir: Path, devices: int, extra=None):
    return subprocess.Popen(train_command(workdir, {**OVERRIDES, **(extra or {})}), env=cpu_env(devices), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = _run(tmp_path / "single", 8)
    out, _ = single.communicate(timeout=300)
    assert single.returncode == 0, out

    port = free_port()
    procs = [_run(tmp_path / "multi", 4, {"distributed.coordinator_address": f"127.0.0.1:{port}",
                                          "distributed.num_processes": 2, "distributed.process_id": i})
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out

    want, got = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(want) == len(got) == 3
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (got, want)
