"""PNG grouped bar charts comparing checkpoints, drawn with PIL alone (as `plots`, whose palette,
fonts and tick rules it shares): one group of bars per metric, one bar per checkpoint in that
checkpoint's colour, a legend naming the checkpoints. `vlalign eval --plot` draws its headline
metrics (in %) this way. A missing value (None or NaN) gets no bar and an "n/a" under its slot.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from vlalign_jax.eval.plots import _SUPERSAMPLE, PALETTE, _font, _shorten, _text_size, format_ticks, nice_ticks

BAR_WIDTH, BAR_GAP, GROUP_GAP = 26, 4, 28  # output pixels
MIN_SLOT = 140  # a group's width at least, so its two label lines fit
HEIGHT = 480


@dataclasses.dataclass(frozen=True)
class Bar:
    """A drawn bar: its group (metric) and series (checkpoint) index, value and box in output pixels
    (left, top, right, bottom)."""

    group: int
    series: int
    value: float
    box: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where `bar_chart` put things: the bars, and the legend's colour swatch per series (boxes)."""

    bars: tuple[Bar, ...]
    legend: tuple[tuple[int, int, int, int], ...]
    size: tuple[int, int]


def _missing(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` shortened with an ellipsis until it is at most `width` pixels wide."""
    for limit in range(len(text), 1, -1):
        candidate = _shorten(text, limit)
        if _text_size(draw, candidate, font)[0] <= width:
            return candidate
    return text[:1]


def bar_chart(groups: Sequence[str], series: Sequence[str], values: Sequence[Sequence[float | None]],
              title: str = "", y_label: str = "") -> tuple[Image.Image, Layout]:
    """The chart and its layout; `values[s][g]` is series s in group g. A group name may hold a
    newline: its two lines go under the group's bars."""
    if not groups or not series:
        raise ValueError("a bar chart needs at least one group and one series")
    if len(values) != len(series) or any(len(row) != len(groups) for row in values):
        raise ValueError(f"values must be [{len(series)} series][{len(groups)} groups]")
    s = _SUPERSAMPLE
    font, title_font = _font(12 * s), _font(16 * s)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [_shorten(name, 40) for name in series]
    legend_width = max(_text_size(probe, name, font)[0] for name in names) // s + 44
    group_width = len(series) * BAR_WIDTH + (len(series) - 1) * BAR_GAP
    finite = [v for row in values for v in row if not _missing(v)]
    y_hi = max([v for v in finite if v > 0], default=1.0) * 1.1
    y_lo = min(0.0, min(finite, default=0.0) * 1.1)
    ticks = nice_ticks(y_lo, y_hi, 5)
    tick_labels = format_ticks(ticks)
    left = 24 + max(_text_size(probe, t, font)[0] for t in tick_labels) // s + (18 if y_label else 0)
    slot = max(group_width + GROUP_GAP, MIN_SLOT)
    plot_width = len(groups) * slot
    width = max(left + plot_width + 24 + legend_width, _text_size(probe, title, title_font)[0] // s + 40)
    top, bottom = 48, HEIGHT - 64

    image = Image.new("RGB", (width * s, HEIGHT * s), "white")
    draw = ImageDraw.Draw(image)

    def y_px(value: float) -> float:
        return bottom - (value - y_lo) / (y_hi - y_lo) * (bottom - top)

    right = left + plot_width
    for tick, label in zip(ticks, tick_labels):
        draw.line([(left * s, y_px(tick) * s), (right * s, y_px(tick) * s)], fill="#e6e6e6", width=s)
        draw.text(((left - 8) * s, y_px(tick) * s), label, fill="#333333", font=font, anchor="rm")
    draw.line([(left * s, y_px(0) * s), (right * s, y_px(0) * s)], fill="#666666", width=s)
    draw.rectangle([left * s, top * s, right * s, bottom * s], outline="#999999", width=s)
    if title:
        draw.text((width * s / 2, 14 * s), title, fill="#111111", font=title_font, anchor="mt")
    if y_label:
        label = Image.new("RGBA", _text_size(probe, y_label, font), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), y_label, fill="#333333", font=font, anchor="lt")
        label = label.rotate(90, expand=True)
        image.paste(label, (6 * s, int((top + bottom) * s / 2 - label.height / 2)), label)

    bars = []
    for g, group in enumerate(groups):
        x0 = left + g * slot + (slot - group_width) // 2
        for i, line in enumerate(group.split("\n")[:2]):
            text = _fit(draw, line, font, (slot - 6) * s)
            draw.text(((x0 + group_width / 2) * s, (bottom + 8 + 16 * i) * s), text, fill="#222222", font=font,
                      anchor="mt")
        for k in range(len(series)):
            bx = x0 + k * (BAR_WIDTH + BAR_GAP)
            value = values[k][g]
            if _missing(value):
                draw.text(((bx + BAR_WIDTH / 2) * s, (y_px(0) - 4) * s), "n/a", fill="#999999", font=_font(9 * s),
                          anchor="md")
                continue
            y0, y1 = sorted((round(y_px(0)), round(y_px(value))))
            box = (bx, y0, bx + BAR_WIDTH, max(y1, y0 + 1))
            draw.rectangle([box[0] * s, box[1] * s, box[2] * s - 1, box[3] * s - 1], fill=PALETTE[k % len(PALETTE)])
            text = f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"
            draw.text(((bx + BAR_WIDTH / 2) * s, (min(y0, y1) - 3) * s), text, fill="#333333", font=_font(9 * s),
                      anchor="md")
            bars.append(Bar(g, k, float(value), box))

    legend = []
    lx = right + 20
    for k, name in enumerate(names):
        cy = top + 10 + 22 * k
        swatch = (lx, cy - 7, lx + 14, cy + 7)
        draw.rectangle([swatch[0] * s, swatch[1] * s, swatch[2] * s - 1, swatch[3] * s - 1],
                       fill=PALETTE[k % len(PALETTE)])
        draw.text(((lx + 20) * s, cy * s), name, fill="#222222", font=font, anchor="lm")
        legend.append(swatch)
    return image.resize((width, HEIGHT), Image.Resampling.LANCZOS), Layout(tuple(bars), tuple(legend), (width, HEIGHT))


def write_bar_chart(path: str | Path, groups: Sequence[str], series: Sequence[str],
                    values: Sequence[Sequence[float | None]], title: str = "", y_label: str = "") -> Layout:
    """Draw `bar_chart` and save it as a PNG at `path` (folders made as needed)."""
    image, layout = bar_chart(groups, series, values, title, y_label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return layout
