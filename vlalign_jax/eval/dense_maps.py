"""Patch-text similarity heatmaps of a dense-feature model, drawn over the image as a PNG:
`vlalign dense --image IMG --text "..."` (research/fgclip.md 1.3, 2.4).

The dense map [h, w, D] is compared with the caption's embedding on the walk its features are trained
against: FG-CLIP 1's `encode_image_dense` lives in the projected space of region captions (short walk,
`text_projection`); FG-CLIP 2's `dense_feature_head` is trained against box captions through
`boxtext_head` (box walk; the maintainers pair them too, issue #44). Each patch's cosine similarity
says where the model finds the caption. The map covers the whole image (FG-CLIP 1's square resize and
FG-CLIP 2's NaFlex resize, which keeps the aspect ratio up to whole patches, crop nothing), so
stretching it back to the image's size puts every cell over the pixels it saw.

Rendering uses PIL and numpy only: the map is min-max scaled to [0, 1] (or a given range), upsampled
bilinearly to the image size, coloured with `colormap` (black -> violet -> red -> orange -> pale
yellow, luminance rising throughout, so brighter always means more similar) and blended over the image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# (position, RGB) anchors of the colour map; each channel is linear between anchors.
COLORMAP_ANCHORS = ((0.0, (0, 0, 0)), (0.25, (60, 0, 130)), (0.5, (200, 30, 60)),
                    (0.75, (255, 150, 0)), (1.0, (255, 255, 200)))


def similarity_heatmap(dense: np.ndarray, text_embed: np.ndarray) -> np.ndarray:
    """Cosine similarity [h, w] of every patch of `dense` [h, w, D] to `text_embed` [D] (a zero
    patch scores 0)."""
    dense = np.asarray(dense, np.float64)
    text = np.asarray(text_embed, np.float64).reshape(-1)
    if dense.ndim != 3 or dense.shape[-1] != text.shape[0]:
        raise ValueError(f"need dense [h, w, D] and text [D]; got {dense.shape} and {text.shape}")
    text_norm = np.linalg.norm(text)
    if text_norm == 0 or not np.isfinite(text_norm):
        raise ValueError("the text embedding is zero or not finite")
    norms = np.linalg.norm(dense, axis=-1)
    return (dense @ (text / text_norm) / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 RGB [..., 3]."""
    values = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    positions = [p for p, _ in COLORMAP_ANCHORS]
    channels = [np.interp(values, positions, [rgb[c] for _, rgb in COLORMAP_ANCHORS]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] -> [height, width] for size (width, height), bilinear (PIL, half-pixel centres)."""
    image = Image.fromarray(np.ascontiguousarray(heatmap, np.float32))  # mode "F"
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), np.float32)


def render_heatmap(image: Image.Image, heatmap: np.ndarray, path: str | Path | None = None,
                   alpha: float = 0.6, value_range: tuple[float, float] | None = None) -> Image.Image:
    """The heatmap [h, w] coloured and blended (weight `alpha`) over `image`, at the image's size;
    written as PNG to `path` when given. `value_range` (low, high) fixes the colour scale, else the
    map's own min and max are used (a constant map is drawn at the low end)."""
    heat = np.asarray(heatmap, np.float64)
    if heat.ndim != 2 or not np.all(np.isfinite(heat)):
        raise ValueError(f"the heatmap must be a finite [h, w] array, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    low, high = value_range if value_range is not None else (heat.min(), heat.max())
    scaled = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    colours = colormap(upsample(np.clip(scaled, 0.0, 1.0), image.size)).astype(np.float32)
    base = np.asarray(image.convert("RGB"), np.float32)
    overlay = Image.fromarray(np.rint((1.0 - alpha) * base + alpha * colours).astype(np.uint8))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        overlay.save(path, format="PNG")
    return overlay


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vlalign dense`."""
    from vlalign_jax.eval.region_encoders import add_encoder_arguments

    parser.add_argument("--checkpoint", required=True, help="FG-CLIP 1 or 2 checkpoint (any converter family) "
                        "or training workdir")
    parser.add_argument("--family", default=None, help="checkpoint family (default: guessed)")
    parser.add_argument("--image", required=True, help="the image")
    parser.add_argument("--text", required=True, help="the caption to locate")
    parser.add_argument("--out", default="heat.png", help="PNG to write (default heat.png)")
    parser.add_argument("--walk", default=None, choices=("short", "box", "long"),
                        help="text walk (default: the one the dense features are trained against, short for "
                             "FG-CLIP 1 and box for FG-CLIP 2)")
    parser.add_argument("--alpha", type=float, default=0.6, help="weight of the heatmap over the image")
    add_encoder_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from vlalign_jax.eval.region_encoders import encoders_from_args

    encoders = encoders_from_args(args)
    walk = args.walk or encoders.dense_walk
    with Image.open(args.image) as image:
        image = image.convert("RGB")
    heat = similarity_heatmap(encoders.encode_dense(image), encoders.encode_texts([args.text], walk)[0])
    render_heatmap(image, heat, args.out, args.alpha)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    print(f"wrote {args.out} ({image.width}x{image.height}; {heat.shape[0]}x{heat.shape[1]} patches, {walk} "
          f"walk, cosine {heat.min():.3f} to {heat.max():.3f}, hottest patch row {row} column {col})")
    return 0
