"""Multi-process start-up: `jax.distributed.initialize` from the config or the environment.

`config.distributed.coordinator_address` / `num_processes` / `process_id` win; otherwise JAX's own
cluster detection (SLURM, Open MPI, TPU pods, or JAX_COORDINATOR_ADDRESS etc.) runs when
`config.distributed.auto` is true. On CPU, cross-process collectives use gloo.

A dead peer is noticed two ways: JAX's coordination service declares a process dead after
`heartbeat_timeout_s` without heartbeats and stops the others; and the training loop's watchdog
(`train/watchdog.py`) exits when no step completes for `hang_timeout_s`, which also catches a peer
that is alive but stuck.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

log = logging.getLogger(__name__)
ENV_HINTS = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def default_config() -> ml_collections.ConfigDict:
    """The `config.distributed` block of every recipe: one process unless set otherwise."""
    config = ml_collections.ConfigDict()
    config.coordinator_address = ""  # "host:port" of process 0; "" = single process (or `auto`)
    config.num_processes = 1
    config.process_id = 0
    config.auto = False  # let JAX detect the cluster (SLURM, Open MPI, TPU pods, JAX_COORDINATOR_ADDRESS)
    config.timeout_s = 300  # how long start-up waits for every process to join
    config.heartbeat_timeout_s = 100  # a process silent this long is declared dead and the others stop
    config.hang_timeout_s = 900.0  # exit when no training step completes this long (0 = never)
    return config


def initialize(distributed) -> None:
    """Join the process group if this run is multi-process; a no-op for single-process runs."""
    if jax.distributed.is_initialized():
        return
    explicit = bool(distributed.get("coordinator_address"))
    if not explicit and not (distributed.get("auto", False) and any(k in os.environ for k in ENV_HINTS)):
        return
    jax.config.update("jax_cpu_collectives_implementation", distributed.get("cpu_collectives", "gloo"))
    kwargs = {}
    if explicit:
        kwargs = dict(coordinator_address=distributed.coordinator_address,
                      num_processes=distributed.num_processes, process_id=distributed.process_id)
    if distributed.get("local_device_ids") is not None:
        kwargs["local_device_ids"] = list(distributed.local_device_ids)
    jax.distributed.initialize(initialization_timeout=distributed.get("timeout_s", 300),
                               heartbeat_timeout_seconds=distributed.get("heartbeat_timeout_s", 100), **kwargs)
    log.info("process %d of %d, %d local devices, %d global", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
