"""Two processes x 4 CPU devices (gloo collectives) follow the same loss trajectory as 1 x 8."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL_MODEL = ("{'vision': {'image_size': 32, 'patch_size': 16, 'width': 32, 'layers': 1, 'heads': 2, "
               "'mlp_dim': 64}, 'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, "
               "'mlp_dim': 64}, 'embed_dim': 16}")
OVERRIDES = [f"--config.model.overrides={SMALL_MODEL}", "--config.train.steps=3", "--config.train.batch_size=32", "--config.train.log_every=1",
             "--config.train.checkpoint_every=3", "--config.train.eval_every=0", "--config.train.progress_bar=False",
             "--config.mesh.data=-1", "--config.data.num_threads=1"]


def _run(workdir: Path, devices: int, extra=(), process_id=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"}
    cmd = [sys.executable, "-m", "vlalign_jax.cli", "train", "--config", str(ROOT / "configs/demo/clip_shapes.py"),
           "--workdir", str(workdir), *OVERRIDES, *extra]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = _run(tmp_path / "single", 8)
    out, _ = single.communicate(timeout=300)
    assert single.returncode == 0, out

    port = _free_port()
    procs = [_run(tmp_path / "multi", 4, [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                                          "--config.distributed.num_processes=2",
                                          f"--config.distributed.process_id={i}"]) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out

    want, got = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(want) == len(got) == 3
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (got, want)
