# DeGLA's released recipe end to end on a short schedule, with no downloads:
#   python scripts/degla_recipe_smoke.py [--model ViT-B-32|tiny] [--steps 3] [--batch-size 8] [--workdir DIR]
# 1. starting weights: an open_clip model of the architecture (random: no weights can be downloaded
#    here), saved as an OpenAI-style state dict, as `model.init_from` would get ViT-B-32.pt;
# 2. COCO-style captions + train2014 images written to disk; `vlalign negatives` (rules) makes DeGLA JSON;
# 3. `vlalign train --config configs/degla/vit_b32_coco.py` (the released recipe; steps and batch reduced);
# 4. `vlalign export ... --to degla`, then open_clip loads the export and its embeddings are compared
#    with ours. Prints one JSON line.
"""Run DeGLA's recipe from converted weights to an open_clip-loadable export, on a short schedule."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vlalign_jax.cli import main as vlalign  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["dog", "cat", "man", "woman", "car", "horse", "bus", "bird"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
PLACES = ["table", "street", "grass", "bench", "beach", "road"]


def write_coco(root: Path, count: int, seed: int = 0) -> Path:
    """`count` train2014 JPEGs and a captions_train2014.json with one caption each."""
    rng = np.random.default_rng(seed)
    (root / "train2014").mkdir(parents=True)
    annotations = []
    for i in range(count):
        image_id = 1000 + i
        pixels = rng.integers(0, 255, (int(rng.integers(200, 400)), int(rng.integers(200, 400)), 3), np.uint8)
        Image.fromarray(pixels).save(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg", quality=85)
        a, b = rng.choice(SUBJECTS, 2, replace=False)
        caption = (f"A {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {a} next to a "
                   f"{rng.choice(COLOURS)} {b} on the {rng.choice(PLACES)}.")
        annotations.append({"image_id": image_id, "id": i, "caption": caption})
    path = root / "annotations" / "captions_train2014.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"annotations": annotations}))
    return path


def open_clip_kwargs(model_name: str) -> dict:
    """Constructor arguments of a QuickGELU open_clip CLIP with our `model_name`'s architecture."""
    from vlalign_jax.models.clip_configs import get_clip_config

    c = get_clip_config(model_name)
    return dict(embed_dim=c.embed_dim, quick_gelu=True,
                vision_cfg=dict(image_size=c.vision.image_size, patch_size=c.vision.patch_size, width=c.vision.width,
                                layers=c.vision.layers, mlp_ratio=c.vision.mlp_dim / c.vision.width),
                text_cfg=dict(context_length=c.text.context_length, vocab_size=c.text.vocab_size,
                              width=c.text.width, heads=c.text.width // 64, layers=c.text.layers))


def open_clip_model(model_name: str) -> "object":
    """A fresh, randomly initialised open_clip model of the architecture (OpenAI's config for ViT-B-32)."""
    import open_clip

    if model_name == "ViT-B-32":
        return open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    return open_clip.model.CLIP(**open_clip_kwargs(model_name))


def starting_weights(model_name: str, path: Path) -> None:
    """Random starting weights of the architecture, saved as an OpenAI-style state dict."""
    import torch

    torch.manual_seed(0)
    torch.save(open_clip_model(model_name).state_dict(), path)


def open_clip_loads(export: Path, model_name: str) -> "object":
    """The export loaded by open_clip into a fresh model of the same architecture (strict keys)."""
    import open_clip
    import torch

    model = open_clip_model(model_name)
    open_clip.load_checkpoint(model, str(export), strict=True)
    return model.eval().to(torch.float32)


def parity(open_clip_model: "object", workdir: Path, image_size: int, context_length: int) -> float:
    """Max |difference| of image and text embeddings, open_clip on the export vs ours on the run."""
    import jax
    import torch

    from vlalign_jax.data.tokenizers import ClipTokenizer
    from vlalign_jax.eval.encoders import load_model

    model, params = load_model(workdir)
    rng = np.random.default_rng(1)
    pixels = rng.standard_normal((2, image_size, image_size, 3)).astype(np.float32)
    tokens = ClipTokenizer(context_length=context_length)(["a red dog on the grass", "two cats"])
    ours_image = np.asarray(model.apply({"params": params}, pixels, method="encode_image"))
    ours_text = np.asarray(model.apply({"params": params}, jax.numpy.asarray(tokens), method="encode_text"))
    with torch.no_grad():
        theirs_image = open_clip_model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
        theirs_text = open_clip_model.encode_text(torch.from_numpy(tokens.astype(np.int64))).numpy()
    return float(max(np.abs(ours_image - theirs_image).max(), np.abs(ours_text - theirs_text).max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32", choices=("ViT-B-32", "tiny"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workdir", default=None, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.workdir or scratch)
        base.mkdir(parents=True, exist_ok=True)
        report: dict = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size}
        start = time.perf_counter()
        starting_weights(args.model, base / "start.pt")
        captions = write_coco(base / "coco", args.images)
        assert vlalign(["negatives", "--captions", str(captions), "--out", str(base / "degla.jsonl"),
                        "--no-progress"]) == 0
        overrides = [f"--config.model.init_from={base / 'start.pt'}",
                     f"--config.data.train_path={base / 'degla.jsonl'}",
                     f"--config.data.image_root={base / 'coco'}", "--config.train.epochs=0",
                     f"--config.train.steps={args.steps}", f"--config.train.batch_size={args.batch_size}",
                     "--config.data.num_workers=0", "--config.data.num_threads=2", "--config.model.dtype=float32",
                     "--config.train.progress_bar=False", "--config.train.log_every=1",
                     f"--config.train.checkpoint_every={args.steps}", "--config.optim.warmup_steps=1"]
        if args.model != "ViT-B-32":
            overrides += [f"--config.model.name={args.model}", "--config.model.overrides={}"]
        assert vlalign(["train", "--config", str(ROOT / "configs/degla/vit_b32_coco.py"),
                        "--workdir", str(base / "run"), *overrides]) == 0
        assert vlalign(["export", str(base / "run"), str(base / "degla_export.pt"), "--to", "degla"]) == 0
        loaded = open_clip_loads(base / "degla_export.pt", args.model)
        from vlalign_jax.train.metrics import read_metrics_jsonl
        rows = [r for r in read_metrics_jsonl(base / "run" / "metrics.jsonl") if "loss" in r]
        config = json.loads((base / "run" / "model.json").read_text())["config"]
        report.update({
            "losses": [round(r["loss"], 5) for r in rows],
            "final_terms": {k: rows[-1][k] for k in ("loss/negclip", "loss/distill", "loss/igc", "loss/tgc")},
            "open_clip_loaded_export": True,
            "max_abs_diff_open_clip_vs_ours": parity(loaded, base / "run", config["vision"]["image_size"],
                                                     config["text"]["context_length"]),
            "seconds": round(time.perf_counter() - start, 1),
        })
    print(json.dumps(report))


if __name__ == "__main__":
    main()
