"""`vlalign eval --suite grounding`: Acc@0.5 and mIoU per split of a CLIP-VG checkpoint or training run,
and a PNG grid of predicted against ground-truth boxes (CLIP-VG, research/clipvg.md 3.1, 3.3, 5.2).

Data: the split files of a reference dataset (unc, unc+, gref, gref_umd, referit, flickr) under
`split_root/<dataset>/<dataset>_<split>.jsonl|.pth`, images from `image_root` or the reference's
folder under `data_root`, the reported splits by default (`data.grounding.EVAL_SPLITS`); or, for a
workdir trained on `synthetic_shapes`, the run's held-out referring expressions with the run's data
config (split "val", the first `eval.num_heldout` examples, as the run's own evaluation).

Every example of a split gets the reference's eval transform (long side to the model's image size,
centred on the zero canvas) and is scored once as `eval.grounding` scores it: the predicted box
clamped to the canvas, IoU with the target in the normalised canvas frame, right when >= 0.5.
`released_code` truncates the ground truth to integers as the released loader does (3.1).

Model: a CLIP-VG checkpoint file (family `clipvg`, tokenized with CLIP BPE at the model's text context
length) or a `vlalign train` workdir of the `clipvg` method (model and tokenizer rebuilt from its
config.json: `data.tokenizer` "words" is the synthetic vocabulary, "clip" CLIP BPE; params from its
newest checkpoint). The tokenizer's vocabulary must have the model's size.

Grid: `grid_samples` examples spread evenly over the first split, each drawn on its original image
(boxes mapped back from the canvas by undoing the centred pad offset and the resize ratio, computed
from the image size as the transform computes them), scaled so its long side fills a square tile;
prediction in red, then ground truth in green on top, the expression and IoU written under the tile.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlalign_jax.data.grounding import EVAL_SPLITS, GroundingData, closed_vocabulary
from vlalign_jax.data.grounding_transforms import GroundingTransform, pad_offsets
from vlalign_jax.data.pipeline import iter_eval_batches
from vlalign_jax.data.sources.grounding_splits import ALIASES, LAYOUTS
from vlalign_jax.eval.grounding import GroundingPredictions, box_predictor, predict
from vlalign_jax.eval.workdirs import run_config

SYNTHETIC = "synthetic_shapes"
DATASETS = (*LAYOUTS, SYNTHETIC)
GT_COLOR, PREDICTION_COLOR = (0, 255, 0), (255, 0, 0)
TILE_SIZE, TILE_GAP, LINE_WIDTH, CAPTION_LINES = 256, 8, 2, 3


@dataclasses.dataclass(frozen=True)
class GroundingModel:
    """A CLIP-VG model with its params and tokenizer; `run_config` is the workdir's saved config (or None)."""

    model: Any
    params: Any
    tokenizer: Callable[[Sequence[str]], np.ndarray]
    run_config: ml_collections.ConfigDict | None

    @property
    def image_size(self) -> int:
        return self.model.config.clip.vision.image_size


def read_run_config(path: str | Path, family: str | None = None) -> ml_collections.ConfigDict | None:
    """`workdirs.run_config` (a training workdir's saved config, else None) as a ConfigDict, the form
    the data and model builders take."""
    saved = run_config(path, family)
    return ml_collections.ConfigDict(saved) if saved is not None else None


def _check_vocabulary(params: Any, vocab_size: int, what: str, checkpoint: str | Path) -> None:
    rows = np.shape(params["clip"]["text_model"]["token_embedding"]["embedding"])[0]
    if rows != vocab_size:
        raise ValueError(f"{checkpoint}: the model's text vocabulary has {rows} entries, {what} {vocab_size}; "
                         f"this model was not trained with that tokenizer")


def load_grounding_model(checkpoint: str | Path, family: str | None = None) -> GroundingModel:
    """A CLIP-VG model from a checkpoint (any family the converters read; `clipvg` is the reference's
    `.pth`) or a training workdir of the `clipvg` method."""
    from vlalign_jax.models.grounding import CLIPVG

    run = read_run_config(checkpoint, family)
    if run is not None:
        from vlalign_jax.data.image_text import make_tokenizer
        from vlalign_jax.methods.clip import DTYPES
        from vlalign_jax.methods.clipvg import model_config
        from vlalign_jax.train.checkpoint import load_params

        if run.get("method") != "clipvg":
            raise ValueError(f"{checkpoint} is a run of method {run.get('method')!r}; the grounding suite "
                             f"evaluates CLIP-VG runs (method 'clipvg')")
        context_length = model_config(run).clip.text.context_length
        tokenizer, vocab_size = make_tokenizer(run.data, context_length, closed_vocabulary(run.data))
        params = load_params(checkpoint)
        _check_vocabulary(params, vocab_size, f"its data.tokenizer {run.data.tokenizer!r}", checkpoint)
        model = CLIPVG(model_config(run, vocab_size), dtype=DTYPES[run.model.get("dtype", "float32")])
        return GroundingModel(model, params, tokenizer, run)
    from vlalign_jax.data.tokenizers import ClipTokenizer
    from vlalign_jax.eval.encoders import load_model

    model, params = load_model(checkpoint, family)
    if not isinstance(model, CLIPVG):
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}, not a CLIP-VG model (family clipvg, "
                         f"or a CLIP-VG run's workdir)")
    tokenizer = ClipTokenizer(None, model.config.clip.text.context_length)
    _check_vocabulary(params, tokenizer.vocab_size, "CLIP's BPE tokenizer", checkpoint)
    return GroundingModel(model, params, tokenizer, None)


def split_sources(split_root: str | Path, dataset: str, splits: Sequence[str] | None = None, *,
                  image_root: str | Path | None = None, data_root: str | Path | None = None,
                  released_code: bool = False) -> dict[str, Any]:
    """{split: GroundingSplit} for `splits` (default: the reported ones), `.jsonl` preferred to `.pth`;
    a missing split file is a FileNotFoundError naming the paths looked for."""
    from vlalign_jax.data.sources.grounding_splits import GroundingSplit, image_dir, layout, split_path

    name = layout(dataset).name
    if image_root is None and data_root is None:
        raise ValueError("the grounding suite needs the images: pass image_root (--image-root) or the "
                         "reference's data_root (--data-root)")
    images = Path(image_root) if image_root is not None else image_dir(data_root, name)
    sources = {}
    for split in splits or EVAL_SPLITS[name]:
        path = split_path(split_root, name, split)
        found = [p for p in (path.with_suffix(".jsonl"), path) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"no {name} split {split!r}: neither {path.with_suffix('.jsonl')} nor {path} "
                                    f"exists")
        sources[split] = GroundingSplit(found[0], images, name, released_code=released_code)
    return sources


def canvas_to_image(boxes: np.ndarray, width: int, height: int, image_size: int) -> np.ndarray:
    """Normalised canvas xyxy [..., 4] -> pixels of the original `width` x `height` image: the inverse of
    the eval transform's box mapping (ratio `image_size / long side`, centred pad offset)."""
    ratio = float(image_size / float(max(height, width)))  # as grounding_transforms.resize_long_side
    top, left = pad_offsets(max(1, round(height * ratio)), max(1, round(width * ratio)), image_size)
    offset = np.array([left, top, left, top], np.float64)
    return (np.asarray(boxes, np.float64) * image_size - offset) / ratio


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def tile_height(tile_size: int = TILE_SIZE) -> int:
    """A tile's height: the square image area plus `CAPTION_LINES` lines of the default font."""
    return tile_size + CAPTION_LINES * _line_height(_font()) + 4


def _line_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom) + 3


def _fit(text: str, font: Any, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _caption(expression: str, iou: float, font: Any, width: int) -> list[str]:
    """The expression wrapped on `CAPTION_LINES - 1` lines (cut with "..."), then the IoU."""
    if not isinstance(font, ImageFont.FreeTypeFont):  # the bitmap fallback font is latin-1 only
        expression = expression.encode("latin-1", "replace").decode("latin-1")
    lines, current = [], ""
    for word in expression.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            candidate = word
        current = candidate
    lines.append(current)
    kept = lines[:CAPTION_LINES - 1]
    if len(lines) > len(kept):
        kept[-1] += " ..."
    return [_fit(line, font, width) for line in kept] + [f"IoU {iou:.2f} ({'hit' if iou >= 0.5 else 'miss'})"]


def draw_tile(image: Image.Image, target: Sequence[float], predicted: Sequence[float], expression: str,
              iou: float, tile_size: int = TILE_SIZE) -> Image.Image:
    """One tile: `image` scaled so its long side is `tile_size`, centred in a square, with the boxes
    (x1y1x2y2 pixels of `image`) outlined inside their pixels, the caption below."""
    font = _font()
    tile = Image.new("RGB", (tile_size, tile_height(tile_size)), "white")
    scale = tile_size / max(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    x0, y0 = (tile_size - width) // 2, (tile_size - height) // 2
    tile.paste(image.convert("RGB").resize((width, height), resample), (x0, y0))
    draw = ImageDraw.Draw(tile)
    for box, color in ((predicted, PREDICTION_COLOR), (target, GT_COLOR)):  # ground truth on top
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        # Continuous edges -> the first and last pixel inside the box, kept on the image.
        left, right = min(max(round(x1), 0), width - 1), min(max(round(x2) - 1, 0), width - 1)
        top, bottom = min(max(round(y1), 0), height - 1), min(max(round(y2) - 1, 0), height - 1)
        draw.rectangle((x0 + left, y0 + top, x0 + max(left, right), y0 + max(top, bottom)), outline=color,
                       width=LINE_WIDTH)
    line = _line_height(font)
    for i, text in enumerate(_caption(expression, iou, font, tile_size - 8)):
        draw.text((4, tile_size + 2 + i * line), text, fill="black", font=font)
    return tile


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a square-ish grid of `count` tiles."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / columns)), columns


def sample_indices(num_examples: int, count: int) -> list[int]:
    """`count` indices spread evenly over `num_examples` (first and last included), in order."""
    if count <= 0 or num_examples <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, num_examples - 1, min(count, num_examples)).round()})


def draw_grid(source: Any, predictions: GroundingPredictions, image_size: int, path: str | Path,
              num_samples: int = 16, tile_size: int = TILE_SIZE) -> Path:
    """The PNG grid of `num_samples` examples of `source` (predictions in its order) at `path`."""
    tiles = []
    for index in sample_indices(len(predictions.iou), num_samples):
        record = source[index]
        image = record["image"]
        image = Image.fromarray(np.asarray(image, np.uint8)) if isinstance(image, np.ndarray) else image
        predicted = canvas_to_image(predictions.predicted[index], image.width, image.height, image_size)
        tiles.append(draw_tile(image, record["box"], predicted, record["expression"], float(predictions.iou[index]),
                               tile_size))
    rows, columns = grid_shape(len(tiles))
    width, height = tile_size + TILE_GAP, tile_height(tile_size) + TILE_GAP
    grid = Image.new("RGB", (columns * width - TILE_GAP, rows * height - TILE_GAP), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _synthetic_run(checkpoint: str | Path, family: str | None) -> ml_collections.ConfigDict:
    run = read_run_config(checkpoint, family)
    if run is None or run.get("data", {}).get("name") != SYNTHETIC:
        found = "not a training workdir" if run is None else f"a run on data.name={run.data.get('name')!r}"
        raise ValueError(f"--dataset {SYNTHETIC} evaluates a workdir trained on the synthetic shapes, with its data "
                         f"config; {checkpoint} is {found}")
    return run


def canonical_dataset(name: str) -> str:
    """The reference's folder name for a dataset name or alias (refcoco -> unc, flickr30k -> flickr, ...)."""
    canonical = ALIASES.get(name.lower(), name)
    if canonical not in DATASETS:
        raise ValueError(f"unknown grounding dataset {name!r}; expected one of {list(DATASETS)} or an alias "
                         f"{sorted(ALIASES)}")
    return canonical


def evaluate(checkpoint: str | Path, dataset: str, split_root: str | Path | None = None, *,
             family: str | None = None, image_root: str | Path | None = None, data_root: str | Path | None = None,
             splits: Sequence[str] | None = None, batch_size: int = 64, released_code: bool = False,
             grid: str | Path | None = None, grid_samples: int = 16, num_threads: int = 8) -> dict[str, Any]:
    """Acc@0.5, mIoU and the example count per split; with `grid`, the PNG of the first split."""
    dataset = canonical_dataset(dataset)
    sources = None
    if dataset == SYNTHETIC:  # a wrong checkpoint or a missing split file fails before the model loads
        _synthetic_run(checkpoint, family)
    else:
        if split_root is None:
            raise ValueError(f"--dataset {dataset} needs the split root (--data)")
        sources = split_sources(split_root, dataset, splits, image_root=image_root, data_root=data_root,
                                released_code=released_code)
    loaded = load_grounding_model(checkpoint, family)
    limit = None
    if sources is None:
        from vlalign_jax.data.grounding import grounding_data

        run = loaded.run_config
        data = grounding_data(run.data, loaded.image_size, loaded.model.config.clip.text.context_length)
        limit = run.get("eval", {}).get("num_heldout") or None  # as the run's own evaluation
        unknown = sorted(set(splits or ()) - set(data.evaluation))
        if unknown:
            raise ValueError(f"{SYNTHETIC} has the held-out split {list(data.evaluation)} only, not {unknown}")
        sources = data.evaluation
    else:
        transform = GroundingTransform(train=False, imsize=loaded.image_size, released_code=released_code)
        vocab_size = np.shape(loaded.params["clip"]["text_model"]["token_embedding"]["embedding"])[0]
        # Only evaluation: no training source, and the transform slots both hold the eval transform.
        data = GroundingData(None, sources, loaded.tokenizer, vocab_size, transform, transform)
    predictor, params = box_predictor(loaded.model), jax.device_put(loaded.params)
    results: dict[str, Any] = {"suite": "grounding", "dataset": dataset, "checkpoint": str(checkpoint),
                               "released_code": released_code, "splits": {}}
    first = None
    for split, source in sources.items():
        predictions = predict(predictor, params, iter_eval_batches(source, data.eval_preprocess, batch_size, limit,
                                                                   num_threads))
        results["splits"][split] = {**predictions.metrics(), "examples": int(len(predictions.iou))}
        first = first or (source, predictions)
    if grid is not None and grid_samples > 0 and first is not None:
        results["grid"] = str(draw_grid(*first, loaded.image_size, grid, grid_samples))
    return results


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per split: Acc@0.5 and mIoU in %, and the number of examples."""
    rows = [f"| grounding: {results['dataset']} | Acc@0.5 (%) | mIoU (%) | examples |", "|---|---|---|---|"]
    rows += [f"| {split} | {_percent(m['acc@0.5'])} | {_percent(m['miou'])} | {m['examples']} |"
             for split, m in results["splits"].items()]
    return "\n".join(rows)
