# Input pipeline throughput: our grain pipeline vs a torch DataLoader doing the same work on the same files.
#   python scripts/bench_data.py [--images 1024] [--workers 2] [--batch 64] [--size 224] [--context 77]
# Both read one TSV of JPEG photographs (written first, COCO-sized 640x480 by default), decode with PIL,
# apply open_clip's train transform (RandomResizedCrop(scale=(0.9, 1)) bicubic + normalise) and CLIP BPE
# tokenisation, and batch. Same number of worker processes, same batch size; one warm-up epoch each,
# then images/s over `--epochs` epochs. Prints JSON with both rates and ours/torch.
"""Compare images/s of the vlalign grain pipeline with an equivalent torch DataLoader."""

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
from vlalign_jax.data.image_text import ImageTextData  # noqa: E402
from vlalign_jax.data.pipeline import train_iterator  # noqa: E402
from vlalign_jax.data.sources.csv_captions import CsvImageText  # noqa: E402
from vlalign_jax.data.tokenizers import ClipTokenizer  # noqa: E402
from vlalign_jax.data.transforms import ClipEvalTransform, ClipTrainTransform  # noqa: E402

WORDS = "a photo of the red green blue small large dog cat car tree house on in near with two".split()


def write_photos(folder: Path, count: int, width: int, height: int) -> Path:
    """JPEGs with photo-like content (smooth gradients + noise + shapes, quality 90) and a TSV table."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rows = []
    for i in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-80, 80, 3) * (xx[..., None] / width) \
            + rng.uniform(-80, 80, 3) * (yy[..., None] / height)
        pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        rows.append(f"{name}\t{' '.join(rng.choice(WORDS, size=rng.integers(4, 15)))}\n")
    table = folder / "train.tsv"
    table.write_text("filepath\ttitle\n" + "".join(rows))
    return table


def ours(table: Path, args) -> float:
    source = CsvImageText(table)
    data = ImageTextData(source, None, ClipTokenizer(context_length=args.context), 0,
                         ClipTrainTransform(args.size), ClipEvalTransform(args.size))
    batches_per_epoch = len(source) // args.batch
    iterator = train_iterator(source, data.train_preprocess, args.batch, seed=0, num_threads=args.threads,
                              num_workers=args.workers)
    try:
        for _ in range(batches_per_epoch):  # warm-up: worker start, first epoch
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches_per_epoch * args.epochs):
            batch = next(iterator)
            assert batch["pixels"].shape == (args.batch, args.size, args.size, 3)
        return batches_per_epoch * args.epochs * args.batch / (time.perf_counter() - start)
    finally:
        iterator.close()


def torch_peer(table: Path, args) -> float:
    import open_clip
    import torch
    from torchvision import transforms as T

    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    transform = T.Compose([T.RandomResizedCrop(args.size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                           T.ToTensor(), T.Normalize(mean, std)])
    tokenizer = open_clip.SimpleTokenizer(context_length=args.context)
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:]]

    class Table(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            with Image.open(table.parent / rows[i][0]) as image:
                pixels = transform(image.convert("RGB"))
            return pixels, tokenizer(rows[i][1])[0]

    torch.set_num_threads(max(args.threads, 1))
    loader = torch.utils.data.DataLoader(Table(), batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         prefetch_factor=4 if args.workers else None)
    for _ in loader:  # warm-up epoch
        pass
    start, count = time.perf_counter(), 0
    for _ in range(args.epochs):
        for pixels, _tokens in loader:
            count += pixels.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, default=2, help="worker processes for both pipelines")
    parser.add_argument("--threads", type=int, default=1,
                        help="reader threads per worker (ours; 0 = read in the worker itself) / torch intra-op (>= 1)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--context", type=int, default=77)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        table = write_photos(Path(folder), args.images, args.width, args.height)
        # Alternate the order so neither side always runs on a warmer page cache.
        ours_a = ours(table, args)
        torch_a = torch_peer(table, args)
        torch_b = torch_peer(table, args)
        ours_b = ours(table, args)
    ours_rate, torch_rate = (ours_a + ours_b) / 2, (torch_a + torch_b) / 2
    print(json.dumps({"images": args.images, "image_size": [args.width, args.height], "workers": args.workers,
                      "batch": args.batch, "output_size": args.size, "cpus": os.cpu_count(),
                      "ours_images_per_sec": round(ours_rate, 1), "torch_images_per_sec": round(torch_rate, 1),
                      "ours/torch": round(ours_rate / torch_rate, 3),
                      "runs": {"ours": [round(ours_a, 1), round(ours_b, 1)], "torch": [round(torch_a, 1), round(torch_b, 1)]}}))


if __name__ == "__main__":
    main()
