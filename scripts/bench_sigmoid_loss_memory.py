# Per-device compiled memory of SigLIP loss + grad: dense B x B vs the ppermute ring, on host CPU devices.
#   python scripts/bench_sigmoid_loss_memory.py [--devices 8] [--batches 1024,4096,16384,65536] [--dim 512]
# Nothing is executed: each variant's value_and_grad is compiled ahead of time (CPU, a few seconds)
# and `compiled.memory_analysis()` of the per-device SPMD program is read.
"""Show that the chunked (ring) sigmoid loss needs O((B/n)^2) logits memory per device, the dense one O(B^2)."""

import argparse
import os
import sys

_parser = argparse.ArgumentParser(description=__doc__)
_parser.add_argument("--devices", type=int, default=8)
_parser.add_argument("--batches", default="1024,4096,16384,65536", help="global batch sizes, comma separated")
_parser.add_argument("--dim", type=int, default=512)
ARGS = _parser.parse_args()
# must be set before jax is imported
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vlalign_jax.losses.contrastive import (chunked_sigmoid_contrastive_loss,  # noqa: E402
                                            sigmoid_contrastive_loss)


def compiled_memory(loss_fn, mesh, batch: int, dim: int) -> dict[str, int]:
    """Per-device byte counts of jit(value_and_grad(loss)) with the batch sharded over `data`."""
    batch_sharded, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    embeds = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=batch_sharded)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    grad_fn = jax.value_and_grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1, 2, 3))
    compiled = jax.jit(grad_fn).lower(embeds, embeds, scalar, scalar).compile()
    stats = compiled.memory_analysis()
    return {"temp_bytes": stats.temp_size_in_bytes, "argument_bytes": stats.argument_size_in_bytes,
            "output_bytes": stats.output_size_in_bytes}


def main() -> None:
    n = ARGS.devices
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    chunked = lambda i, t, s, b: chunked_sigmoid_contrastive_loss(i, t, s, b, mesh, axis_names="data")  # noqa: E731
    rows = []
    for batch in (int(b) for b in ARGS.batches.split(",")):
        dense_mem = compiled_memory(sigmoid_contrastive_loss, mesh, batch, ARGS.dim)
        ring_mem = compiled_memory(chunked, mesh, batch, ARGS.dim)
        b = batch // n
        rows.append({
            "global_batch": batch, "per_device_batch": b,
            "dense": dense_mem, "chunked": ring_mem,
            # temp bytes in units of one fp32 [B, B] matrix (dense) and one fp32 [b, b] block (chunked)
            "dense_temp/(4B^2)": round(dense_mem["temp_bytes"] / (4 * batch * batch), 3),
            "chunked_temp/(4b^2)": round(ring_mem["temp_bytes"] / (4 * b * b), 3),
            "dense_temp/chunked_temp": round(dense_mem["temp_bytes"] / max(ring_mem["temp_bytes"], 1), 2),
        })
    print(json.dumps({"devices": n, "dim": ARGS.dim, "backend": jax.default_backend(),
                      "jax": jax.__version__, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
