"""Multi-process start-up: `jax.distributed.initialize` from the config or the environment.

`config.distributed.coordinator_address` / `num_processes` / `process_id` win; otherwise JAX's own
cluster detection (SLURM, Open MPI, TPU pods, or JAX_COORDINATOR_ADDRESS etc.) runs when
`config.distributed.auto` is true. On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
ENV_HINTS = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


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
    jax.distributed.initialize(initialization_timeout=distributed.get("timeout_s", 300), **kwargs)
    log.info("process %d of %d, %d local devices, %d global", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
