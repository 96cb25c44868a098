"""The reliability histogram as a PNG, drawn with PIL (as the paper's Fig. 5: 1,000 bins over (0, 1]).

One bar per bin (about a pixel wide at the default size), r on the x axis with ticks every 0.1,
counts on the y axis; the r == 0 examples are not drawn but counted in the subtitle.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

from vlalign_jax.curriculum.reliability import Histogram
from vlalign_jax.eval.plots import format_ticks, nice_ticks

_BAR = "#1f77b4"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable font bundled with Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def draw_histogram(hist: Histogram, title: str, size: tuple[int, int] = (1100, 440)) -> Image.Image:
    """An RGB image of exactly `size` (width, height)."""
    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title_font, font = _font(16), _font(12)
    bins = len(hist.counts)
    peak = int(hist.counts.max()) if bins else 0
    top, bottom = 54, height - 44
    y_ticks = nice_ticks(0.0, float(max(peak, 1)), max(3, (bottom - top) // 60), integer=True)
    y_top = max(y_ticks[-1], float(max(peak, 1)))
    y_labels = format_ticks(y_ticks)
    left = 16 + max(draw.textbbox((0, 0), label, font=font)[2] for label in y_labels)
    right = width - 20

    draw.text((width / 2, 8), title, fill="#111111", font=title_font, anchor="mt")
    positive = hist.total - hist.zeros
    subtitle = (f"{hist.total} pseudo-labels: {positive} with r > 0 in {bins} bins over (0, 1], "
                f"{hist.zeros} with r = 0 (not drawn)")
    draw.text((width / 2, 30), subtitle, fill="#444444", font=font, anchor="mt")

    def y_px(count: float) -> float:
        return bottom - count / y_top * (bottom - top)

    for tick, label in zip(y_ticks, y_labels):
        draw.line([(left, y_px(tick)), (right, y_px(tick))], fill="#e6e6e6")
        draw.text((left - 6, y_px(tick)), label, fill="#333333", font=font, anchor="rm")
    for k in range(11):
        x = left + k / 10 * (right - left)
        draw.line([(x, bottom), (x, bottom + 4)], fill="#666666")
        draw.text((x, bottom + 6), f"{k / 10:.1f}", fill="#333333", font=font, anchor="mt")
    draw.text(((left + right) / 2, height - 4), "reliability r (IoU of the measurer's box with the pseudo box)",
              fill="#333333", font=font, anchor="md")

    scale = (right - left) / max(bins, 1)
    for k, count in enumerate(hist.counts.tolist()):
        if count:
            x0 = left + math.floor(k * scale)
            x1 = max(x0, left + math.ceil((k + 1) * scale) - 1)
            draw.rectangle([x0, y_px(count), x1, bottom], fill=_BAR)
    draw.rectangle([left, top, right, bottom], outline="#999999")
    return image
