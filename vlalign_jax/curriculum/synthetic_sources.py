"""Pseudo-label sources with known label noise, drawn from the synthetic shapes (demo and tests).

Each source has its own `synthetic_num_train` images of the synthetic shapes with their referring
expressions ("the red circle", "the small red circle", "the red circle at the top left"); a
fraction `noise` of its boxes (per `curriculum.synthetic_sources`) is replaced by a box of the same size elsewhere in the image (IoU
with the true box below 0.3), as an unreliable pseudo-label would be, and marked `"noisy": true` in
its record, so a selection's label precision can be read off its file. The val split is clean (the
annotated val split of the paper). Written once as

    ROOT/images/<source>_<i>.png, val_<i>.png
    ROOT/split/<dataset>/<dataset>_<source>.jsonl, <dataset>_val.jsonl
    ROOT/done.json   (the parameters; rewritten data when they change)
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from vlalign_jax.curriculum.workspace import write_json_atomic, write_jsonl_atomic
from vlalign_jax.data.sources.synthetic import SyntheticShapes, SyntheticShapesConfig

MAX_NOISY_IOU = 0.3


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def wrong_box(box: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A box of `box`'s size elsewhere in the image, overlapping it by IoU < 0.3 where one fits."""
    w, h = box[2] - box[0], box[3] - box[1]
    moved = box
    for _ in range(50):
        x, y = rng.uniform(0, image_size - w), rng.uniform(0, image_size - h)
        moved = np.array([x, y, x + w, y + h], np.float64)
        if _iou(moved, box) < MAX_NOISY_IOU:
            break
    return moved


def _write_images(shapes: SyntheticShapes, images: Path, prefix: str) -> list[tuple[str, str, np.ndarray]]:
    rows = []
    for i in range(len(shapes)):
        example = shapes[i]
        name = f"{prefix}_{i}.png"
        Image.fromarray(example["image"]).save(images / name)
        rows.append((name, example["referring_expression"], np.asarray(example["referring_box"], np.float64)))
    return rows


def write_synthetic_sources(root: str | Path, dataset: str, settings) -> Path:
    """Write (unless already there with the same parameters) the sources of `settings.synthetic_sources`
    and a clean val split under `root`; returns `root`."""
    root = Path(root)
    params = {"dataset": dataset, "sources": [[name, settings.synthetic_sources[name]] for name in settings.sources],
              "num_train": settings.synthetic_num_train, "num_val": settings.synthetic_num_val,
              "image_size": settings.synthetic_image_size, "seed": settings.synthetic_seed}
    marker = root / "done.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    images, split = root / "images", root / "split" / dataset
    images.mkdir(parents=True, exist_ok=True)
    shapes_config = SyntheticShapesConfig(image_size=settings.synthetic_image_size, max_objects=2)
    fields = ("image", "referring_expression", "referring_box")
    n = settings.synthetic_num_train
    for k, name in enumerate(settings.sources):
        # Each source its own images: shapes k * n ... (k + 1) * n - 1 of one stream.
        shapes = SyntheticShapes("train", (k + 1) * n, settings.synthetic_seed, shapes_config, fields)
        rng = np.random.default_rng([settings.synthetic_seed, zlib.crc32(name.encode())])
        records = []
        for i, (image_file, expression, box) in enumerate(_write_images(_Tail(shapes, k * n), images, name)):
            noisy = bool(rng.random() < settings.synthetic_sources[name])
            label = wrong_box(box, settings.synthetic_image_size, rng) if noisy else box
            records.append({"image_file": image_file, "box": [float(v) for v in label], "expression": expression,
                            "dataset": dataset, "noisy": noisy})
        write_jsonl_atomic(split / f"{dataset}_{name}.jsonl", records)
    val = SyntheticShapes("heldout", settings.synthetic_num_val, settings.synthetic_seed, shapes_config, fields)
    write_jsonl_atomic(split / f"{dataset}_val.jsonl",
                       [{"image_file": f, "box": [float(v) for v in b], "expression": e, "dataset": dataset}
                        for f, e, b in _write_images(val, images, "val")])
    write_json_atomic(marker, params)
    return root


class _Tail:
    """Examples `start`... of a source."""

    def __init__(self, source, start: int):
        self.source, self.start = source, start

    def __len__(self) -> int:
        return len(self.source) - self.start

    def __getitem__(self, index: int):
        return self.source[self.start + index]
