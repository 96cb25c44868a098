"""Training-step throughput: our jitted CLIP step vs open_clip's PyTorch step, same model and batch.

    python scripts/bench_train_step.py --model ViT-B-32 --batch-size 32 --steps 10           # CPU
    python scripts/bench_train_step.py --model ViT-B-16 --batch-size 256 --dtype bfloat16    # GPU

Both sides: random images and token ids, forward + softmax contrastive loss + backward + AdamW, data
already on the device, synchronised timing after warm-up. open_clip runs eagerly (add --torch-compile
for torch.compile) with bf16 autocast when --dtype bfloat16. Prints one JSON object with images/s of
each, their ratio and, where the device's peak is known, MFU from XLA's FLOP count.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def bench_jax(args) -> dict:
    import jax

    from vlalign_jax.train.config import build_config
    from vlalign_jax.train.loop import setup_run
    from vlalign_jax.train.throughput import peak_flops

    config = build_config("configs/demo/clip_shapes.py", [
        ("model.name", args.model), ("model.overrides", "{}"), ("model.dtype", args.dtype),
        ("model.remat", args.remat), ("data.tokenizer", "clip"), ("train.batch_size", str(args.batch_size)),
        ("train.steps", str(args.steps + args.warmup)), ("mesh.data", "-1")])
    run = setup_run(config)
    mc = run.method.model.config
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.batch_size, mc.vision.image_size, mc.vision.image_size, 3), np.float32)
    tokens = rng.integers(1, mc.text.vocab_size - 1, (args.batch_size, mc.text.context_length)).astype(np.int32)
    tokens[:, -1] = mc.text.vocab_size - 1
    batch = run.global_batch({"pixels": pixels, "tokens": tokens})
    with run.context():
        state = run.init_state()
        compiled = run.step_fn.lower(state, batch).compile()
        cost = compiled.cost_analysis()
        flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0))
        for _ in range(args.warmup):
            state, metrics = run.step_fn(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = run.step_fn(state, batch)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / args.steps
    peak = peak_flops(jax.devices()[0].device_kind)
    out = {"images_per_sec": args.batch_size / seconds, "step_ms": 1e3 * seconds, "device": jax.devices()[0].device_kind}
    if peak and flops:
        out["mfu_xla_flops"] = flops / seconds / peak
    return out


def bench_torch(args) -> dict:
    import open_clip
    import torch

    from vlalign_jax.models.clip_configs import get_clip_config

    cfg = get_clip_config(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = open_clip.model.CLIP(
        cfg.embed_dim,
        dict(image_size=cfg.vision.image_size, patch_size=cfg.vision.patch_size, width=cfg.vision.width,
             layers=cfg.vision.layers, head_width=cfg.vision.width // cfg.vision.heads,
             mlp_ratio=cfg.vision.mlp_dim / cfg.vision.width),
        dict(context_length=cfg.text.context_length, vocab_size=cfg.text.vocab_size, width=cfg.text.width,
             heads=cfg.text.heads, layers=cfg.text.layers),
        quick_gelu=cfg.act == "quick_gelu").to(device)
    if args.torch_compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    loss_fn = open_clip.loss.ClipLoss()
    images = torch.randn(args.batch_size, 3, cfg.vision.image_size, cfg.vision.image_size, device=device)
    tokens = torch.randint(1, cfg.text.vocab_size - 1, (args.batch_size, cfg.text.context_length), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            image_features, text_features, logit_scale = model(images, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))

    for _ in range(args.warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    return {"images_per_sec": args.batch_size / seconds, "step_ms": 1e3 * seconds, "device": device,
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--torch-compile", action="store_true")
    args = parser.parse_args()
    ours, theirs = bench_jax(args), bench_torch(args)
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "dtype": args.dtype,
                      "vlalign_jax": ours, "open_clip": theirs,
                      "ratio_images_per_sec": ours["images_per_sec"] / theirs["images_per_sec"]}, indent=2))


if __name__ == "__main__":
    main()
