"""PNG line charts of a run's `metrics.jsonl`, drawn with PIL alone (no matplotlib dependency).

One chart per metric group: metrics sharing a parent name (`loss/contrastive`, `loss/tgc`, and
`loss` itself) share one chart with a legend; a metric with no siblings gets a chart of its own.
The x axis is the training step. Non-finite values are left out of the curves.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from vlalign_jax.train.metrics import METRICS_FILE, read_metrics_jsonl

Series = list[tuple[float, float]]  # (step, value), sorted by step

# Tableau 10: distinguishable, and readable on white.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_SUPERSAMPLE = 2  # draw at twice the size and downscale: PIL's lines and text are otherwise jagged
_MAX_MARKED_POINTS = 40  # sparse curves (eval every N steps) get dots so single points stay visible
_DENSE_POINTS = 300


def plot_metrics(workdir: str | Path, out_dir: str | Path | None = None, keys: Iterable[str] | None = None,
                 size: tuple[int, int] = (800, 480)) -> list[Path]:
    """Write one PNG per metric group of `WORKDIR/metrics.jsonl`; return their paths.

    `out_dir` defaults to `WORKDIR/plots`. `keys` picks metrics by name or by group prefix
    (`"loss"` selects `loss` and `loss/*`); by default every metric is drawn. Files are named
    after the group with `/` replaced by `_` (`eval/retrieval` -> `eval_retrieval.png`).
    """
    workdir = Path(workdir)
    series = metric_series(read_metrics_jsonl(workdir / METRICS_FILE))
    if keys is not None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        series = {name: points for name, points in series.items()
                  if any(name == key or name.startswith(key.rstrip("/") + "/") for key in keys)}
        if not series:
            raise ValueError(f"no metric in {workdir / METRICS_FILE} matches {keys}")
    out_dir = workdir / "plots" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    paths: list[Path] = []
    used: set[str] = set()
    for group, names in metric_groups(series).items():
        curves = {_label(name, group): series[name] for name in names}
        stem = re.sub(r"[^\w.@=+-]", "_", group.replace("/", "_"))
        while stem in used:  # `a/b` and `a_b` would otherwise overwrite each other
            stem += "_"
        used.add(stem)
        path = out_dir / f"{stem}.png"
        draw_chart(group, curves, size).save(path)
        paths.append(path)
    return paths


def metric_series(rows: Sequence[dict]) -> dict[str, Series]:
    """name -> finite (step, value) points. For a step logged twice the later row wins: a resumed
    run re-logs the steps after its checkpoint, and those are the values its state continued from."""
    by_step: dict[str, dict[float, float]] = {}
    for row in rows:
        step = row.get("step")
        if not _is_number(step):
            continue
        for name, value in row.items():
            if name in ("step", "time") or not _is_number(value):
                continue
            by_step.setdefault(name, {})
            if math.isfinite(value):
                by_step[name][step] = float(value)
            else:
                by_step[name].pop(step, None)
    return {name: sorted(points.items()) for name, points in sorted(by_step.items()) if points}


def metric_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Chart title -> metric names drawn in it: siblings under one parent share a chart."""
    names = sorted(names)
    parents = {name.rsplit("/", 1)[0] for name in names if "/" in name}
    groups: dict[str, list[str]] = {}
    for name in names:
        group = name if name in parents else (name.rsplit("/", 1)[0] if "/" in name else name)
        groups.setdefault(group, []).append(name)
    # A lone child is clearer titled by its full name than as a one-line group.
    return dict(sorted(((members[0], members) if len(members) == 1 else (group, members))
                       for group, members in groups.items()))


def draw_chart(title: str, curves: dict[str, Series], size: tuple[int, int] = (800, 480)) -> Image.Image:
    """A line chart of `curves` (label -> points) over steps, with a legend when there are several."""
    s = _SUPERSAMPLE
    width, height = size[0] * s, size[1] * s
    title_font, font = _font(17 * s), _font(12 * s)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    xs = [x for points in curves.values() for x, _ in points]
    ys = [y for points in curves.values() for _, y in points]
    x_lo, x_hi = _padded_range(min(xs), max(xs), pad=0.0)
    y_lo, y_hi = _padded_range(min(ys), max(ys), pad=0.05)

    legend = len(curves) > 1
    labels = [_shorten(label) for label in curves]
    legend_width = (max(_text_size(draw, label, font)[0] for label in labels) + 40 * s) if legend else 0
    top, bottom = 48 * s, height - 50 * s
    y_ticks = nice_ticks(y_lo, y_hi, max(3, (bottom - top) // (60 * s)))
    y_labels = format_ticks(y_ticks)
    left = 20 * s + max(_text_size(draw, label, font)[0] for label in y_labels)
    right = width - 24 * s - legend_width
    x_ticks = nice_ticks(x_lo, x_hi, max(2, (right - left) // (100 * s)), integer=True)
    x_labels = format_ticks(x_ticks)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    # Grid and tick labels.
    for tick, label in zip(y_ticks, y_labels):
        _, py = to_px(x_lo, tick)
        draw.line([(left, py), (right, py)], fill="#e6e6e6", width=s)
        draw.text((left - 8 * s, py), label, fill="#333333", font=font, anchor="rm")
    for tick, label in zip(x_ticks, x_labels):
        px, _ = to_px(tick, y_lo)
        draw.line([(px, top), (px, bottom)], fill="#e6e6e6", width=s)
        draw.line([(px, bottom), (px, bottom + 5 * s)], fill="#666666", width=s)
        draw.text((px, bottom + 8 * s), label, fill="#333333", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="#999999", width=s)
    draw.text(((left + right) / 2, height - 10 * s), "step", fill="#333333", font=font, anchor="md")
    draw.text(((left + right) / 2, 16 * s), title, fill="#111111", font=title_font, anchor="mt")

    # Curves, clipped to the plot area by construction (the axis ranges cover every point).
    for index, points in enumerate(curves.values()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in points]
        if len(pixels) > 1:
            # Thinner lines for dense curves, whose noise would otherwise merge into a band.
            line_width = 2 * s if len(pixels) <= _DENSE_POINTS else s + 1
            draw.line(pixels, fill=colour, width=line_width, joint="curve")
        if len(pixels) <= _MAX_MARKED_POINTS:
            r = 3 * s
            for px, py in pixels:
                draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)

    if legend:
        lx, ly = right + 16 * s, top + 4 * s
        for index, label in enumerate(labels):
            colour = PALETTE[index % len(PALETTE)]
            cy = ly + index * 20 * s + 8 * s
            draw.line([(lx, cy), (lx + 16 * s, cy)], fill=colour, width=3 * s)
            draw.text((lx + 22 * s, cy), label, fill="#222222", font=font, anchor="lm")

    return image.resize(size, Image.Resampling.LANCZOS)


def nice_ticks(lo: float, hi: float, target: int = 6, integer: bool = False) -> list[float]:
    """Ticks at multiples of 1, 2 or 5 x 10^k inside [lo, hi], about `target` of them."""
    raw = (hi - lo) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    spacing = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        spacing = max(spacing, 1)
    first, last = math.ceil(lo / spacing - 1e-9), math.floor(hi / spacing + 1e-9)
    # Multiples of the spacing (not repeated addition), rounded to 12 digits so 3 * 1e-5 is 3e-5.
    return [float(f"{i * spacing:.12g}") for i in range(first, last + 1)]


def format_ticks(ticks: Sequence[float]) -> list[str]:
    """Labels with just the digits the spacing needs: `0.25`, `1.5k`, `2e-5`."""
    if len(ticks) < 2:
        return [f"{t:g}" for t in ticks]
    spacing = abs(ticks[1] - ticks[0])
    largest = max(abs(t) for t in ticks)
    if largest >= 1e4:  # steps and throughputs: 12.5k reads faster than 12500
        unit, suffix = next((u, x) for u, x in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if largest >= u * 10)
        decimals = max(0, -math.floor(math.log10(spacing / unit) + 1e-9))
        return ["0" if t == 0 else f"{t / unit:.{decimals}f}{suffix}" for t in ticks]
    if spacing >= 1e-3:
        decimals = max(0, -math.floor(math.log10(spacing) + 1e-9))
        return [f"{t:.{decimals}f}" for t in ticks]
    # Learning rates and the like: scientific, as many digits as tell ticks apart.
    digits = max(1, math.floor(math.log10(largest)) - math.floor(math.log10(spacing) + 1e-9) + 1)
    return ["0" if t == 0 else re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{t:.{digits}g}").replace("e+", "e")
            for t in ticks]


def _padded_range(lo: float, hi: float, pad: float) -> tuple[float, float]:
    if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):  # a flat curve still needs a visible range
        half = 0.1 * abs(lo) or 1.0
        return lo - half, hi + half
    margin = pad * (hi - lo)
    return lo - margin, hi + margin


def _label(name: str, group: str) -> str:
    return name[len(group) + 1:] if name.startswith(group + "/") else name


def _shorten(label: str, limit: int = 32) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font bundled with Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0
