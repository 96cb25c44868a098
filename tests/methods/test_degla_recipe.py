"""DeGLA's released recipe end to end at tiny scale (scripts/degla_recipe_smoke.py): starting weights
as an OpenAI-style state dict -> `vlalign negatives` -> `vlalign train` with configs/degla/vit_b32_coco.py
-> `vlalign export --to degla` -> open_clip loads the export strictly and agrees with our embeddings."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_runs_from_converted_weights_to_an_open_clip_loadable_export():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts/degla_recipe_smoke.py"), "--model", "tiny",
                           "--steps", "2", "--images", "16"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["open_clip_loaded_export"]
    assert report["max_abs_diff_open_clip_vs_ours"] < 1e-4  # fp32 on both sides; differences are rounding
    assert len(report["losses"]) == 2 and all(0 < loss < 20 for loss in report["losses"])
