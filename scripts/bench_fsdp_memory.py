"""FSDP memory per device: the compiled CLIP training step on 8 host devices, replicated vs FSDP.

    python scripts/bench_fsdp_memory.py --model ViT-L-14 --batch-size 16 --dtype bfloat16
    python scripts/bench_fsdp_memory.py --model ViT-B-16 --batch-size 16 --dtype bfloat16

Builds the real jitted, sharded training step (`setup_run`) for mesh data=8 (params and AdamW state
replicated) and mesh fsdp=8 (both sharded over `fsdp`), and WITHOUT running it lowers and compiles
it on abstract inputs carrying the state/batch shardings; XLA's `memory_analysis()` gives the
per-device argument, output and temporary bytes. The state is fp32 (params + two Adam moments);
`--dtype` is the compute dtype. Prints one JSON object and a markdown table; `ratio` is the FSDP
per-device state bytes over 1/8 of the replicated state bytes (1.0 = perfect sharding).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402


def _mb(x: int) -> str:
    return f"{x / 1e6:,.1f} MB" if x < 1e9 else f"{x / 1e9:,.2f} GB"


def measure(model: str, batch_size: int, dtype: str = "bfloat16", remat: str = "none", loss: str = "softmax",
            overrides: str = "{}") -> dict:
    import jax

    from vlalign_jax.parallel.memory import step_memory
    from vlalign_jax.train.config import build_config

    results = {}
    for name, mesh in (("data=8", {"data": 8, "fsdp": 1}), ("fsdp=8", {"data": 1, "fsdp": 8})):
        config = build_config("configs/demo/clip_shapes.py", [
            ("model.name", model), ("model.overrides", overrides), ("model.dtype", dtype), ("model.remat", remat),
            ("data.tokenizer", "clip"), ("loss", loss), ("train.batch_size", str(batch_size)),
            ("train.steps", "10"), ("train.eval_every", "0"), ("mesh.data", str(mesh["data"])),
            ("mesh.fsdp", str(mesh["fsdp"])), ("mesh.tensor", "1")])
        results[name] = step_memory(config, jax.devices()[:8])
    rep, fsdp = results["data=8"], results["fsdp=8"]
    return {"model": model, "global_batch": batch_size, "compute_dtype": dtype, "state_dtype": "float32",
            "remat": remat, "loss": loss, "devices": 8, "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "results": results,
            "ratio_state": fsdp["state_bytes"] / (rep["state_bytes"] / 8),
            "ratio_argument": fsdp["argument_bytes"] / (rep["argument_bytes"] / 8),
            "ratio_total": fsdp["total_bytes"] / rep["total_bytes"]}


def table(out: dict) -> str:
    rows = ["| model | mesh | params | state / device | argument | output | temp | alias | total | compile |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["results"].items():
        rows.append(f"| {out['model']} | {name} | {r['params_count'] / 1e6:.0f} M | {_mb(r['state_bytes'])} | "
                    f"{_mb(r['argument_bytes'])} | {_mb(r['output_bytes'])} | {_mb(r['temp_bytes'])} | "
                    f"{_mb(r['alias_bytes'])} | {_mb(r['total_bytes'])} | {r['compile_seconds']:.0f} s |")
    rows.append(f"\nFSDP state / (replicated state / 8) = **{out['ratio_state']:.3f}**; "
                f"argument ratio {out['ratio_argument']:.3f}; total fsdp / data = {out['ratio_total']:.3f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (2 per device on 8 devices)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--loss", default="softmax")
    parser.add_argument("--overrides", default="{}", help="model.overrides (a dict literal)")
    args = parser.parse_args()
    out = measure(args.model, args.batch_size, args.dtype, args.remat, args.loss, args.overrides)
    print(json.dumps(out, indent=2))
    print(table(out))


if __name__ == "__main__":
    main()
