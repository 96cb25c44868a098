"""The small demo CLIP run many tests share: in-process (`small_config`, or `SMALL_MODEL` for another
recipe's `model.overrides`; fp32, seconds on a CPU) or as a child process, for tests that kill, stop
or connect runs (multi-host, faults).

`train_command` is the `vlalign train` command line of the small demo CLIP with the given overrides;
`cpu_env(devices)` the environment for a child with that many CPU devices (the tests' own eight are
not inherited); `free_port()` a port for a coordinator.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import ml_collections

from vlalign_jax.train.config import build_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/demo/clip_shapes.py")
SMALL_MODEL = ("{'vision': {'image_size': 32, 'patch_size': 16, 'width': 32, 'layers': 1, 'heads': 2, "
               "'mlp_dim': 64}, 'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, "
               "'mlp_dim': 64}, 'embed_dim': 16}")
QUIET = {"model.overrides": SMALL_MODEL, "train.eval_every": 0, "train.progress_bar": False, "data.num_threads": 1}


def small_config(**overrides) -> ml_collections.ConfigDict:
    """The demo config with the small model, 3 steps of batch 16, quiet, and `overrides`."""
    pairs = {"model.overrides": SMALL_MODEL, "train.batch_size": "16", "train.steps": "3",
             "train.progress_bar": "False", "train.eval_every": "0", "train.log_every": "1",
             "data.num_threads": "1", "data.max_objects": "2", "optim.warmup_steps": "1",
             "optim.lr": "1e-3"}
    pairs.update({k: str(v) for k, v in overrides.items()})
    return build_config(DEMO, list(pairs.items()))


def train_command(workdir: str | Path, overrides: dict) -> list[str]:
    """`python -m vlalign_jax.cli train` on the demo config with the small model and `overrides`."""
    settings = {**QUIET, **overrides}
    return [sys.executable, "-m", "vlalign_jax.cli", "train", "--config", DEMO, "--workdir", str(workdir),
            *(f"--config.{k}={v}" for k, v in settings.items())]


def cpu_env(devices: int, compilation_cache: str | Path | None = None) -> dict[str, str]:
    """A child's environment: `devices` CPU devices, quick compiles, optionally JAX's persistent
    compilation cache in `compilation_cache` (restarts then skip compiling)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"}
    if compilation_cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(compilation_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
