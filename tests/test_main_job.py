"""The README's main job learns: the demo CLIP reaches held-out image-to-text R@1 >= 0.8."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_reaches_retrieval_target(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device, as a user runs it
    result = subprocess.run([sys.executable, "-m", "vlalign_jax.cli", "train", "--config",
                             str(ROOT / "configs/demo/clip_shapes.py"), "--workdir", str(tmp_path),
                             "--config.train.progress_bar=False"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "eval/retrieval/i2t_R@1" in r][-1]
    assert final["step"] == 400
    assert final["eval/retrieval/i2t_R@1"] >= 0.8, final
