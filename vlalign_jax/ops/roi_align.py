"""RoIAlign (He et al. 2017, Mask R-CNN, Sec. 3) with torchvision's exact semantics, channels-last.

Reproduces `torchvision.ops.roi_align` (its CPU kernel, `roi_align_kernel.cpp` and
`roi_align_common.h`), which FG-CLIP uses to pool a box's dense image features (research notes,
fgclip.md Sec. 3.10: output 1x1, aligned=True, sampling_ratio=-1). Per box, in feature-cell units:

- `start = box * spatial_scale - offset`, offset 0.5 when `aligned` else 0; the roi size is
  `end - start`, forced to >= 1 only when not `aligned` (aligned boxes may be empty or inverted).
- Each of the `out_h x out_w` bins is sampled on a `grid_h x grid_w` grid of points
  `y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h` (likewise x), where the grid is
  `sampling_ratio` on both axes or, when `sampling_ratio <= 0`, `ceil(roi_h / out_h)` and
  `ceil(roi_w / out_w)` (adaptive, per box).
- A point with y < -1, y > height, x < -1 or x > width contributes 0. Otherwise a coordinate <= 0
  becomes 0, and one whose floor is >= size - 1 snaps to the last row/column; then bilinear weights.
- A bin's value is the sum over its points divided by `max(grid_h * grid_w, 1)`, so an adaptive
  grid with an empty axis (a zero-size or inverted aligned box) gives 0. (torchvision itself raises
  for a box inverted on one axis only, under aligned adaptive sampling; here it gives 0 too.)
- Positions are computed with torchvision's float32 operations, order and roundings (see
  `_rounded`, `_divide`), so a sample exactly on a border is kept or dropped as torchvision's x86
  CPU kernel does, also when XLA compiles optimised. Checked on CPU only; torchvision's CUDA kernel
  is compiled with FMA contraction, so at such ties it can differ from its own CPU kernel.

Static shapes. The adaptive grid depends on the data, so each axis samples a static
`max_adaptive_samples` points per bin and masks those past the box's own grid: the sum and the count
are then exactly torchvision's. The default, `ceil((size + 1) / out)` per axis ((H+1) x (W+1) points
for a 1x1 output, as fgclip.md suggests), covers every box whose scaled extent is at most size + 1
cells: any box inside the map, and any box inside the band [-1, size] of sample coordinates
outside which samples count zero (with `aligned`, boxes up to half a cell past each border). A
larger box has its grid clipped to the bound on that axis: its bins then average `min(grid, bound)`
evenly spaced points per axis, a coarser sampling than torchvision's (pass a larger bound).

How it is computed. Bilinear interpolation at (y, x) is a product of a row weight and a column
weight, and every border rule above acts on one axis alone, so a bin's value is
`sum_{h,w} row_w[ph, h] * col_w[pw, w] * features[h, w]`, where `row_w[ph, :]` sums the row weights
of that bin's sample rows (likewise columns), built by a scatter-add of each sample's two bilinear
weights. The op is then two small dense contractions per box, with no `[boxes, height, width]`
weight map. Cost per image, with N boxes, P x Q outputs and C channels: the weights take
O(N * (P * (bound_h + H) + Q * (bound_w + W))) work and [N, P, H] + [N, Q, W] memory; the contractions take
about N * min(P, Q) * H * W * C multiply-adds through an intermediate [N, P, W, C] or [N, H, Q, C]
(whichever order is cheaper). So every box costs a pass over the whole map, whatever its size, while
a sampling kernel's cost grows with the box (about 4 * area * C for adaptive sampling): right
for FG-CLIP (1x1, a few boxes, ~24x24 maps: about one matrix-vector product of the map per box),
wasteful for hundreds of small 7x7 boxes on a large detection map.

Gradients. W.r.t. features: exactly torchvision's backward (each sample's bilinear weights / count).
W.r.t. boxes: torchvision defines none; here boxes get the almost-everywhere derivative of the
sample positions through the bilinear weights (zero across the clamped and out-of-range parts; the
integer grid size has no gradient). Apply `jax.lax.stop_gradient` to the boxes to match torchvision.
Masked boxes get no gradient, and pass none to the features.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a pair of ints as a validated `(h, w)` tuple of positive Python ints."""
    try:
        pair = tuple(operator.index(v) for v in (
            (value, value) if isinstance(value, numbers.Integral) else value))
    except TypeError:
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _rounded(x: jax.Array) -> jax.Array:
    """`x` rounded to its dtype before it meets another operation, as in torchvision's C++.

    Under jit XLA fuses `a * b + c` into one FMA, a rounding fewer, which can move a sample across
    a border (y = height + 1 ulp counts zero, y = height counts). A select that XLA cannot fold
    keeps the product a value of its own (NaN stays NaN). An `optimization_barrier` does not:
    XLA:CPU removes it before fusion.
    """
    return jnp.where(jnp.isnan(x), jnp.nan, x)


def _divide(numerator: jax.Array, denominator: jax.Array | float) -> jax.Array:
    """`numerator / denominator` with one rounding, as in torchvision's C++.

    XLA rewrites a division by a broadcast (a constant, or a per-box value spread over samples) into
    a multiplication by its reciprocal, a rounding more; it cannot do so through this select.
    """
    return numerator / jnp.where(jnp.isnan(numerator), jnp.nan, denominator)


def _axis_weights(start: jax.Array, end: jax.Array, pooled: int, size: int | jax.Array, sampling_ratio: int,
                  num_samples: int, aligned: bool, num_cells: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Summed bilinear weights of each bin's sample points along one axis.

    start, end: [batch, boxes] box edges on this axis, already multiplied by spatial_scale.
    size: the map's extent on this axis, an int or a per-image int array [batch] (maps of different
    sizes padded to `num_cells`, static; default `size`).
    Returns the weights `[batch, boxes, pooled, num_cells]` (not yet divided by the sample count;
    zero on cells >= the image's size) and the number of sample points per bin along this axis,
    `[batch, boxes]` int32.
    The float operations follow torchvision's kernel in order and rounding, so the sample positions
    and every border decision (validity test, clamp at 0, snap to the last cell) agree bit for bit
    with its CPU kernel (on x86-64, whose build does not contract to FMA).
    """
    if num_cells is None:
        num_cells = size
    extent = jnp.asarray(size, jnp.float32)
    if extent.ndim:  # per image: broadcast against [batch, boxes, pooled, samples]
        extent = extent[:, None, None, None]
    offset = jnp.float32(0.5 if aligned else 0.0)
    roi_start = start - offset
    roi_size = (end - offset) - roi_start
    if not aligned:
        roi_size = jnp.maximum(roi_size, jnp.float32(1.0))
    bin_size = _divide(roi_size, jnp.float32(pooled))
    if sampling_ratio > 0:
        grid = jnp.full(start.shape, sampling_ratio, jnp.int32)
    else:
        # torchvision's ceil(roi_size / pooled), i.e. of the bin size. Clipped before the int cast,
        # so a huge or non-finite box cannot overflow int32.
        grid = jnp.clip(jnp.ceil(bin_size), 0, num_samples).astype(jnp.int32)

    bin_index = jnp.arange(pooled, dtype=jnp.float32)[:, None]            # [pooled, 1]
    sample_index = jnp.arange(num_samples, dtype=jnp.int32)                # [samples]
    roi_start = roi_start[..., None, None]                                 # [batch, boxes, 1, 1]
    bin_size = bin_size[..., None, None]
    grid_f = jnp.maximum(grid, 1).astype(jnp.float32)[..., None, None]
    # [batch, boxes, pooled, samples]
    step = (sample_index.astype(jnp.float32) + jnp.float32(0.5)) * bin_size
    coord = (roi_start + _rounded(bin_index * bin_size)) + _divide(step, grid_f)
    used = ((coord >= -1.0) & (coord <= extent)
            & (sample_index < grid[..., None, None]))
    # Samples outside [-1, size] are dropped by `used`; the clip keeps them finite and in range.
    coord = jnp.clip(jnp.where(coord <= 0.0, jnp.float32(0.0), coord), 0.0, extent)
    low = jnp.floor(coord)
    at_edge = low >= extent - 1.0
    low = jnp.where(at_edge, extent - 1.0, low)
    high = jnp.where(at_edge, low, low + 1.0)
    coord = jnp.where(at_edge, low, coord)
    frac = coord - low
    low_weight = jnp.where(used, 1.0 - frac, 0.0)
    high_weight = jnp.where(used, frac, 0.0)
    # Scatter-add each sample's two weights into its cells: O(samples + cells) per bin, where a one-hot
    # [samples, cells] product would cost their product (a million per bin and box at 1024 patches).
    lead = low.shape[:-1]                                                  # [batch, boxes, pooled]
    low_index = low.astype(jnp.int32).reshape(-1, num_samples)
    high_index = high.astype(jnp.int32).reshape(-1, num_samples)

    def scatter(lo: jax.Array, hi: jax.Array, lo_w: jax.Array, hi_w: jax.Array) -> jax.Array:
        return jnp.zeros(num_cells, lo_w.dtype).at[lo].add(lo_w).at[hi].add(hi_w)

    weights = jax.vmap(scatter)(low_index, high_index, low_weight.reshape(-1, num_samples),
                                high_weight.reshape(-1, num_samples))
    return weights.reshape(lead + (num_cells,)), grid


def _bin_weights(boxes: jax.Array, batch: int, height: int | jax.Array, width: int | jax.Array,
                 num_rows: int, num_cols: int, output_size: int | Sequence[int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool, box_mask: jax.Array | None,
                 max_adaptive_samples: int | Sequence[int] | None) -> tuple[jax.Array, jax.Array]:
    """Validated arguments -> row weights [batch, boxes, out_h, num_rows] already divided by each bin's
    sample count (zero for masked boxes) and column weights [batch, boxes, out_w, num_cols]."""
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [batch={batch}, max_boxes, 4], got {boxes.shape}")
    out_h, out_w = _pair(output_size, "output_size")
    if not isinstance(sampling_ratio, numbers.Integral):
        raise TypeError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    sampling_ratio = int(sampling_ratio)
    if sampling_ratio > 0:
        samples_h = samples_w = sampling_ratio
    elif max_adaptive_samples is None:
        samples_h, samples_w = math.ceil((num_rows + 1) / out_h), math.ceil((num_cols + 1) / out_w)
    else:
        samples_h, samples_w = _pair(max_adaptive_samples, "max_adaptive_samples")

    boxes = boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))
    if box_mask is not None:
        if box_mask.shape != boxes.shape[:2]:
            raise ValueError(f"box_mask must be {boxes.shape[:2]}, got {box_mask.shape}")
        # Padding boxes become zeros before any arithmetic, so NaN/inf padding cannot leak through
        # 0 * NaN into the output or the gradients.
        boxes = jnp.where(box_mask[..., None], boxes, 0.0)
    scaled = _rounded(boxes * jnp.asarray(spatial_scale, boxes.dtype))  # no FMA with the shift
    x1, y1, x2, y2 = (scaled[..., i] for i in range(4))
    row_weights, grid_h = _axis_weights(y1, y2, out_h, height, sampling_ratio, samples_h, aligned, num_rows)
    col_weights, grid_w = _axis_weights(x1, x2, out_w, width, sampling_ratio, samples_w, aligned, num_cols)

    scale = 1.0 / jnp.maximum(grid_h * grid_w, 1).astype(row_weights.dtype)  # [batch, boxes]
    if box_mask is not None:
        scale = jnp.where(box_mask, scale, 0.0)
    return row_weights * scale[..., None, None], col_weights


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int | Sequence[int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = True,
              box_mask: jax.Array | None = None,
              max_adaptive_samples: int | Sequence[int] | None = None,
              precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST) -> jax.Array:
    """Pools each box of each image to a fixed grid, as `torchvision.ops.roi_align` does.

    features: [batch, height, width, channels] (channels-last; torchvision takes NCHW).
    boxes: [batch, max_boxes, 4] as (x1, y1, x2, y2) in input coordinates; they are multiplied by
      `spatial_scale` to reach feature cells (e.g. 1/16 for a stride-16 map). Box n of image b pools
      from image b only (torchvision's `[K, 5]` rois carry that batch index explicitly).
    output_size: int or (out_h, out_w).
    sampling_ratio: points per bin and axis; <= 0 means torchvision's adaptive `ceil(roi / out)`.
    aligned: shift boxes by -0.5 cell (pixel-centre model) and allow boxes smaller than a cell.
    box_mask: optional [batch, max_boxes] bool; False boxes (padding) give zeros and no gradient.
      Their coordinates may be anything, NaN included.
    max_adaptive_samples: static per-axis bound on the adaptive grid, an int or (h, w); default
      `ceil((height + 1) / out_h)`, `ceil((width + 1) / out_w)`. Exact wherever a box's adaptive
      grid fits under it; see the module docstring. Ignored when `sampling_ratio > 0`.
    precision: of the two contractions with the feature map. HIGHEST keeps fp32 parity with torch on
      accelerators whose default fp32 matmul rounds to bf16/tf32.
    Returns [batch, max_boxes, out_h, out_w, channels] in the features' dtype (computed in fp32 or
    wider).
    """
    if features.ndim != 4:
        raise ValueError(f"features must be [batch, height, width, channels], got {features.shape}")
    batch, height, width, _ = features.shape
    row_weights, col_weights = _bin_weights(boxes, batch, height, width, height, width, output_size,
                                            spatial_scale, sampling_ratio, aligned, box_mask,
                                            max_adaptive_samples)
    out_h, out_w = row_weights.shape[2], col_weights.shape[2]

    compute_dtype = jnp.promote_types(features.dtype, row_weights.dtype)
    values = features.astype(compute_dtype)
    row_weights = row_weights.astype(compute_dtype)
    col_weights = col_weights.astype(compute_dtype)
    # Contract first along the axis that makes the pair of contractions cheaper (static shapes).
    channels = features.shape[-1]
    rows_first = (out_h * height * width + out_h * out_w * width) * channels
    cols_first = (out_w * height * width + out_h * out_w * height) * channels
    if rows_first <= cols_first:
        pooled = jnp.einsum("bnph,bhwc->bnpwc", row_weights, values, precision=precision)
        pooled = jnp.einsum("bnpwc,bnqw->bnpqc", pooled, col_weights, precision=precision)
    else:
        pooled = jnp.einsum("bnqw,bhwc->bnhqc", col_weights, values, precision=precision)
        pooled = jnp.einsum("bnhqc,bnph->bnpqc", pooled, row_weights, precision=precision)
    return pooled.astype(features.dtype)


def roi_align_tokens(tokens: jax.Array, grid_shapes: jax.Array, boxes: jax.Array,
                     output_size: int | Sequence[int], spatial_scale: float = 1.0, sampling_ratio: int = -1,
                     aligned: bool = True, box_mask: jax.Array | None = None,
                     max_grid: int | Sequence[int] | None = None,
                     max_adaptive_samples: int | Sequence[int] | None = None,
                     precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST) -> jax.Array:
    """`roi_align` over token sequences whose images each have their own patch grid (NaFlex).

    tokens: [batch, max_tokens, channels]; image b's first `h_b * w_b` tokens are its (h_b, w_b) grid,
      row-major, and the rest is padding (ignored, NaN allowed). grid_shapes: [batch, 2] int (h, w),
      e.g. SigLIP 2's `spatial_shapes`. Boxes, output_size, spatial_scale, sampling_ratio, aligned and
      box_mask as `roi_align`, in image b's own cells (FG-CLIP 2 scales normalised x by w_b, y by h_b).
    Equal to `roi_align` run image by image on `tokens[b, :h*w].reshape(h, w, channels)`, with the
    borders at each image's own h and w, under one static shape for jit.
    max_grid: static bound (rows, cols) on every image's grid, an int or a pair; default
      (max_tokens, max_tokens), which holds for any grid of at most max_tokens patches. Tokens in
      rows or columns past the bound get no weight, so a tighter bound must hold for the data. The
      adaptive-sampling bound defaults to it as in `roi_align` (`ceil((rows + 1) / out_h)`, ...).
    Cost per box: the per-axis weights are O(out * (samples + bound)) (a scatter-add), then a gather to
    [out_h, out_w, max_tokens] weights and one contraction with the tokens, O(out_h * out_w *
    max_tokens * channels); at 1024 tokens, 64 boxes of 256 channels take 18 ms forward and backward on
    one CPU core.
    Returns [batch, max_boxes, out_h, out_w, channels] in the tokens' dtype.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [batch, max_tokens, channels], got {tokens.shape}")
    batch, max_tokens, _ = tokens.shape
    if grid_shapes.shape != (batch, 2):
        raise ValueError(f"grid_shapes must be [batch={batch}, 2] (rows, cols), got {grid_shapes.shape}")
    num_rows, num_cols = _pair(max_tokens if max_grid is None else max_grid, "max_grid")
    rows = grid_shapes[:, 0].astype(jnp.int32)
    cols = jnp.maximum(grid_shapes[:, 1].astype(jnp.int32), 1)
    row_weights, col_weights = _bin_weights(boxes, batch, rows, cols, num_rows, num_cols, output_size,
                                            spatial_scale, sampling_ratio, aligned, box_mask,
                                            max_adaptive_samples)
    # Token n of image b sits at row n // w_b, column n % w_b; padding and out-of-bound tokens get 0.
    index = jnp.arange(max_tokens, dtype=jnp.int32)[None, :]                # [1, max_tokens]
    token_row, token_col = index // cols[:, None], index % cols[:, None]     # [batch, max_tokens]
    inside = (index < (rows * cols)[:, None]) & (token_row < num_rows) & (token_col < num_cols)

    def spread(weights: jax.Array, cell: jax.Array, size: int) -> jax.Array:
        # [batch, boxes, out, size] -> [batch, boxes, out, max_tokens]: each token's cell weight
        cell = jnp.broadcast_to(jnp.minimum(cell, size - 1)[:, None, None, :],
                                weights.shape[:3] + (max_tokens,))
        return jnp.where(inside[:, None, None, :], jnp.take_along_axis(weights, cell, axis=-1), 0.0)

    compute_dtype = jnp.promote_types(tokens.dtype, row_weights.dtype)
    token_weights = (spread(row_weights, token_row, num_rows)[:, :, :, None, :]
                     * spread(col_weights, token_col, num_cols)[:, :, None, :, :]).astype(compute_dtype)
    values = jnp.where(inside[..., None], tokens.astype(compute_dtype), 0.0)
    pooled = jnp.einsum("bmpqn,bnc->bmpqc", token_weights, values, precision=precision)
    return pooled.astype(tokens.dtype)
