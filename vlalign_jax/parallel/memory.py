"""Per-device memory of the compiled training step, measured without running it.

`step_memory(config)` builds the real jitted, sharded step from a run config (`setup_run`), lowers
and compiles it against abstract inputs (`jax.ShapeDtypeStruct`s carrying the state and batch
shardings, so nothing is allocated or initialised) and returns XLA's memory analysis per device,
together with the per-device bytes of the train state computed from its shardings.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np


def _device_bytes(abstract: jax.ShapeDtypeStruct) -> int:
    """Bytes of one device's shard of an abstract array with a sharding."""
    shape = abstract.sharding.shard_shape(abstract.shape)
    return math.prod(shape) * np.dtype(abstract.dtype).itemsize


def step_memory(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> dict:
    """Compile `config`'s training step on abstract inputs and report per-device bytes.

    Returns a dict: state_bytes (params + optimizer state + extras on one device, from the
    shardings), params_bytes, batch_bytes (one device's slice of the batch), and XLA's
    argument/output/temp/alias/generated-code bytes of the compiled step, total_bytes =
    argument + output + temp - alias (donated state buffers are reused for the new state),
    plus compile_seconds and XLA's FLOP count per device.
    """
    from vlalign_jax.train.checkpoint import abstract_with_shardings
    from vlalign_jax.train.loop import setup_run

    run = setup_run(config, devices)
    state = abstract_with_shardings(run.abstract, run.shardings)
    mc = run.method.model.config
    b = config.train.batch_size
    shapes = {"pixels": ((b, mc.vision.image_size, mc.vision.image_size, 3), np.float32),
              "tokens": ((b, mc.text.context_length), np.int32)}
    batch = {k: jax.ShapeDtypeStruct(*shapes[k], sharding=run.data_sharding) for k in run.method.batch_fields}
    start = time.perf_counter()
    with run.context():
        compiled = run.step_fn.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    out = {
        "mesh": dict(run.mesh.shape),
        "num_devices": run.mesh.size,
        "state_bytes": sum(_device_bytes(x) for x in jax.tree.leaves(state)),
        "params_bytes": sum(_device_bytes(x) for x in jax.tree.leaves(state.params)),
        "params_count": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
        "batch_bytes": sum(_device_bytes(x) for x in batch.values()),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "generated_code_bytes": int(mem.generated_code_size_in_bytes),
        "compile_seconds": seconds,
        "flops_per_device": float(cost.get("flops", 0.0)),  # XLA's count for one device's program
    }
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out
