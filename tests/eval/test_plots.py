"""Metric charts: one PNG per metric group, real curves in the plot area, readable tick labels."""

import math

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.eval.plots import PALETTE, format_ticks, metric_groups, metric_series, nice_ticks, plot_metrics
from vlalign_jax.train.metrics import MetricsWriter


def write_run(workdir):
    with MetricsWriter(workdir) as writer:
        for step in range(0, 201, 10):
            writer.write_scalars(step, {
                "loss": 3 * math.exp(-step / 50) + 0.2,
                "loss/contrastive": 2 * math.exp(-step / 50) + 0.1,
                "loss/tgc": math.exp(-step / 40) + 0.1 if step != 50 else float("nan"),
                "learning_rate": 1e-4 * min(1.0, step / 50),
                "diverged": float("nan"),  # no finite point: no chart
            })
            if step % 100 == 0:
                writer.write_scalars(step, {"eval/retrieval/i2t_R@1": step / 400, "eval/retrieval/t2i_R@1": step / 500})


def colour_pixels(image, colour, box, tolerance=40):
    rgb = np.asarray(image.convert("RGB"), np.int32)
    x0, y0, x1, y1 = box
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb[y0:y1, x0:x1] - target).sum(-1) < tolerance).sum())


def test_one_png_per_group_with_curves_in_the_plot_area(tmp_path):
    write_run(tmp_path)
    paths = plot_metrics(tmp_path)
    assert sorted(p.name for p in paths) == ["eval_retrieval.png", "learning_rate.png", "loss.png"]
    assert all(p.parent == tmp_path / "plots" for p in paths)  # the CLI's default output folder
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (800, 480)
            image.load()
            assert image.getpixel((2, 2)) == (255, 255, 255)  # background outside the axes
            plot_area = (120, 60, 640, 420)
            assert colour_pixels(image, PALETTE[0], plot_area) > 200  # the first curve was drawn
            if path.name != "learning_rate.png":
                assert colour_pixels(image, PALETTE[1], plot_area) > 100  # and the second, in its colour


def test_keys_select_metrics_and_groups(tmp_path):
    write_run(tmp_path)
    out = tmp_path / "charts"
    paths = plot_metrics(tmp_path, out, keys=["loss", "learning_rate"])
    assert sorted(p.name for p in paths) == ["learning_rate.png", "loss.png"]
    assert sorted(p.name for p in out.iterdir()) == ["learning_rate.png", "loss.png"]
    with pytest.raises(ValueError, match="no metric"):
        plot_metrics(tmp_path, out, keys=["no_such_metric"])


def test_series_skip_nonfinite_and_later_rows_win():
    rows = [{"step": 1, "time": 0.0, "loss": 3.0}, {"step": 2, "time": 0.0, "loss": float("nan")},
            {"step": 3, "time": 0.0, "loss": 1.0, "note": "text"},
            {"step": 2, "time": 0.0, "loss": 2.0}, {"step": 3, "time": 0.0, "loss": 0.5}]  # resumed at step 1
    assert metric_series(rows) == {"loss": [(1, 3.0), (2, 2.0), (3, 0.5)]}


def test_groups_put_siblings_and_their_parent_in_one_chart():
    groups = metric_groups(["loss", "loss/a", "loss/b", "accuracy/i2t", "grad_norm", "eval/r/x", "eval/r/y"])
    assert groups == {"accuracy/i2t": ["accuracy/i2t"], "eval/r": ["eval/r/x", "eval/r/y"],
                      "grad_norm": ["grad_norm"], "loss": ["loss", "loss/a", "loss/b"]}


@pytest.mark.parametrize("lo, hi, target, integer, expected", [
    (0.0, 1.0, 5, False, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    (0, 20000, 5, True, ["0", "5k", "10k", "15k", "20k"]),
    (0.0, 3e-5, 6, False, ["0", "5e-6", "1e-5", "1.5e-5", "2e-5", "2.5e-5", "3e-5"]),
    (-2.5, 2.5, 5, False, ["-2", "-1", "0", "1", "2"]),
    (0, 7, 5, True, ["0", "2", "4", "6"]),
    (0, 3, 10, True, ["0", "1", "2", "3"]),  # steps are whole numbers: no tick at 0.5
])
def test_tick_labels_are_short_and_exact(lo, hi, target, integer, expected):
    assert format_ticks(nice_ticks(lo, hi, target, integer=integer)) == expected
