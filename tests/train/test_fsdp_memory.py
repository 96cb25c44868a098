"""FSDP over 8 devices holds about 1/8 of the replicated train state per device, measured on the
compiled step (the same code path as scripts/bench_fsdp_memory.py), without running it."""

import jax

from demo_runs import small_config
from vlalign_jax.parallel.memory import step_memory


def test_fsdp_state_is_an_eighth_of_the_replicated_state():
    replicated = step_memory(small_config(**{"mesh.data": 8, "mesh.fsdp": 1}), jax.devices()[:8])
    fsdp = step_memory(small_config(**{"mesh.data": 1, "mesh.fsdp": 8}), jax.devices()[:8])
    assert fsdp["params_count"] == replicated["params_count"]
    ratio = fsdp["state_bytes"] / (replicated["state_bytes"] / 8)
    assert ratio <= 1.1, (ratio, replicated, fsdp)
    # XLA's own accounting of the step's inputs (state + this device's batch slice) agrees
    assert fsdp["argument_bytes"] <= 1.1 * replicated["argument_bytes"] / 8 + fsdp["batch_bytes"], (replicated, fsdp)
    # the state buffers are donated: the new state reuses them
    assert fsdp["alias_bytes"] >= fsdp["state_bytes"] * 0.99
