"""SigLIP 2 NaFlex image preprocessing with numpy and PIL, without torch.

Reproduces transformers' (5.23) ``Siglip2ImageProcessor`` (torchvision backend, what
``AutoImageProcessor`` and the bare class name give) and ``Siglip2ImageProcessorPil``:

1. Target size: the largest scale found by the processor's bisection over ``[1e-6, 100]`` (stop
   width 1e-5) at which ``max(1, ceil(side * scale / patch))`` patches per side fit in
   ``max_num_patches``. Aspect ratio is kept up to rounding each side up to a whole patch; small
   images are upscaled.
2. Resize the uint8 RGB image to that size. ``resize_backend="torchvision"`` (default) repeats
   torch's CPU uint8 antialiased kernel bit for bit: separable, horizontal pass first, uint8
   between passes, weights rounded to int16 at the largest precision that fits.
   ``resize_backend="pil"`` calls ``PIL.Image.resize``, as the PIL processor does (22-bit weights).
   The two round differently: at most one uint8 level (2/255 after normalisation), on 0 to 15% of
   the values (median 0.01%) of the test photographs at the five buckets. Torch on CUDA resizes
   in float and matches neither.
3. Rescale by 1/255 and normalise (mean = std = 0.5), in each backend's float32 order. The two
   orders differ by at most 6e-8.
4. Patchify row-major over the ``(h_patches, w_patches)`` grid, each patch flattened in
   ``(row, column, channel)`` order, zero-pad to ``max_num_patches`` rows and return
   ``pixel_values``, ``pixel_attention_mask`` (1 = real patch) and ``spatial_shapes``.

FG-CLIP 2 (``shared/research/fgclip.md`` 2.2) resizes with PIL bilinear (``resize_backend="pil"``)
and chooses the budget per image with the rule in :func:`pick_naflex_bucket`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

NAFLEX_BUCKETS = (128, 256, 576, 784, 1024)
SIGLIP2_MEAN = (0.5, 0.5, 0.5)
SIGLIP2_STD = (0.5, 0.5, 0.5)

ResizeBackend = Literal["torchvision", "pil"]
Resample = Literal["bilinear", "bicubic"]

_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def validate_naflex_bucket(max_num_patches: int, buckets: Sequence[int] = NAFLEX_BUCKETS) -> int:
    """Return ``max_num_patches`` if it is one of ``buckets``, else raise ``ValueError``."""
    if max_num_patches not in buckets:
        raise ValueError(
            f"max_num_patches={max_num_patches} is not a NaFlex bucket {tuple(buckets)}."
        )
    return max_num_patches


def pick_naflex_bucket(
    height: int, width: int, patch_size: int = 16, buckets: Sequence[int] = NAFLEX_BUCKETS
) -> int:
    """Smallest bucket holding the native patch count ``(H // p) * (W // p)``, else the largest.

    This is FG-CLIP 2's ``dynamic_max_patches`` rule: 1024 above 784 patches, 784 above 576, ...
    """
    native_patches = (height // patch_size) * (width // patch_size)
    for bucket in sorted(buckets):
        if native_patches <= bucket:
            return bucket
    return max(buckets)


def _side_at_scale(length: int, scale: float, patch_size: int) -> int:
    """``length * scale`` rounded up to a whole number of patches, at least one patch."""
    return max(patch_size, math.ceil(length * scale / patch_size) * patch_size)


def naflex_target_size(
    height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5
) -> tuple[int, int]:
    """Resized ``(height, width)``: patch multiples with at most ``max_num_patches`` patches.

    Bisects the scale exactly as transformers' ``get_image_size_for_max_num_patches`` (same float
    operations, same bounds and stopping width), so the result agrees with it on every input.
    """
    if min(height, width, patch_size, max_num_patches) < 1:
        raise ValueError(
            f"Need positive sizes, got {(height, width, patch_size, max_num_patches)}."
        )
    fits, too_big = eps / 10, 100.0
    while too_big - fits >= eps:
        scale = (fits + too_big) / 2
        rows = _side_at_scale(height, scale, patch_size) // patch_size
        cols = _side_at_scale(width, scale, patch_size) // patch_size
        if rows * cols <= max_num_patches:
            fits = scale
        else:
            too_big = scale
    return _side_at_scale(height, fits, patch_size), _side_at_scale(width, fits, patch_size)


def _filter_weights(offsets: np.ndarray, resample: Resample) -> np.ndarray:
    """Triangle (bilinear) or Keys a=-0.5 cubic kernel, written as torch's antialias filters."""
    x = np.abs(offsets)
    if resample == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _torch_int16_taps(
    in_size: int, out_size: int, resample: Resample
) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices ``[out, taps]``, int weights ``[out, taps]`` and their fixed-point precision.

    Mirrors torch's ``_compute_indices_int16_weights_aa``: PIL-style support widened by the
    downscale factor, weights normalised to sum 1 in float64 (summed tap by tap, in order), then
    rounded half away from zero at the largest precision (< 22 bits) whose max weight fits int16.
    """
    scale = in_size / out_size
    filter_scale = scale if scale >= 1.0 else 1.0
    support = _FILTER_SUPPORT[resample] * filter_scale
    num_taps = int(math.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    taps = np.arange(num_taps)
    weights = _filter_weights(
        (taps + first[:, None] - center[:, None] + 0.5) * (1.0 / filter_scale), resample
    )
    weights = np.where(taps < count[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for tap in range(num_taps):
        total = total + weights[:, tap]
    weights = np.where(
        total[:, None] != 0.0, weights / np.where(total != 0.0, total, 1.0)[:, None], weights
    )
    precision = 0
    while precision < 22 and int(0.5 + weights.max() * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    int_weights = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    indices = np.minimum(first[:, None] + taps, in_size - 1)
    return indices, int_weights, precision


def _resample_axis_like_torch(
    image: np.ndarray, axis: int, out_size: int, resample: Resample
) -> np.ndarray:
    """One separable uint8 pass along ``axis`` with torch's integer arithmetic and saturation."""
    if image.shape[axis] == out_size:
        return image
    indices, int_weights, precision = _torch_int16_taps(image.shape[axis], out_size, resample)
    source = np.ascontiguousarray(np.moveaxis(image, axis, 0))  # uint8; products promote to int32
    broadcast = (out_size,) + (1,) * (source.ndim - 1)
    total = np.full((out_size,) + source.shape[1:], 1 << (precision - 1), np.int32)
    for tap in range(indices.shape[1]):
        total += int_weights[:, tap].reshape(broadcast) * source[indices[:, tap]]
    resized = np.clip(total >> precision, 0, 255).astype(np.uint8)
    return np.moveaxis(resized, 0, axis)


def naflex_resize(
    image: np.ndarray,
    height: int,
    width: int,
    resample: Resample = "bilinear",
    backend: ResizeBackend = "torchvision",
) -> np.ndarray:
    """Resize uint8 ``[H, W, 3]`` to ``(height, width)`` as the chosen HF backend does on CPU."""
    if backend == "pil":
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), _PIL_FILTERS[resample]))
    if backend == "torchvision":
        if resample not in _FILTER_SUPPORT:
            raise ValueError(f"Unknown resample {resample!r}; expected 'bilinear' or 'bicubic'.")
        horizontal = _resample_axis_like_torch(image, 1, width, resample)
        return _resample_axis_like_torch(horizontal, 0, height, resample)
    raise ValueError(f"Unknown resize backend {backend!r}; expected 'torchvision' or 'pil'.")


def rescale_and_normalize(
    image: np.ndarray,
    backend: ResizeBackend = "torchvision",
    image_mean: Sequence[float] = SIGLIP2_MEAN,
    image_std: Sequence[float] = SIGLIP2_STD,
) -> np.ndarray:
    """uint8 ``[..., 3]`` -> float32 ``(x / 255 - mean) / std`` in the backend's operation order.

    torchvision folds the 1/255 into mean and std (``(x - 127.5) / 127.5`` in float32); the PIL
    backend rescales in float64, casts to float32, then normalises. Results differ by <= 1 ulp.
    """
    if backend == "torchvision":
        mean = np.asarray(image_mean, np.float32) * np.float32(255.0)
        std = np.asarray(image_std, np.float32) * np.float32(255.0)
        return (image.astype(np.float32) - mean) / std
    rescaled = (image.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (rescaled - np.asarray(image_mean, np.float32)) / np.asarray(image_std, np.float32)


def patchify(image: np.ndarray, patch_size: int) -> np.ndarray:
    """``[H, W, C]`` -> ``[H/p * W/p, p*p*C]``: row-major patches, each as (row, col, channel)."""
    height, width, channels = image.shape
    rows, cols = height // patch_size, width // patch_size
    grid = image.reshape(rows, patch_size, cols, patch_size, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * cols, patch_size * patch_size * channels)


def unpatchify(
    pixel_values: np.ndarray, spatial_shapes: Sequence[int], patch_size: int
) -> np.ndarray:
    """Inverse of :func:`patchify` on the first ``rows * cols`` (real) patches: ``[H, W, C]``."""
    rows, cols = int(spatial_shapes[0]), int(spatial_shapes[1])
    patches = np.asarray(pixel_values)[: rows * cols]
    channels = patches.shape[-1] // (patch_size * patch_size)
    grid = patches.reshape(rows, cols, patch_size, patch_size, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * patch_size, cols * patch_size, channels)


def _as_uint8_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image (any mode, made RGB) or uint8 ``[H, W]`` / ``[H, W, 3]`` array -> ``[H, W, 3]``."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(
            f"Expected a uint8 image array, got {array.dtype}; convert floats to uint8 first."
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected a channels-last [H, W, 3] image, got shape {array.shape}.")
    return array


def naflex_preprocess(
    image: Image.Image | np.ndarray,
    patch_size: int = 16,
    max_num_patches: int = 256,
    resample: Resample = "bilinear",
    resize_backend: ResizeBackend = "torchvision",
    image_mean: Sequence[float] = SIGLIP2_MEAN,
    image_std: Sequence[float] = SIGLIP2_STD,
) -> dict[str, np.ndarray]:
    """One image -> SigLIP 2 NaFlex inputs, equal to ``Siglip2ImageProcessor`` (``resize_backend``
    ``"torchvision"``) or ``Siglip2ImageProcessorPil`` (``"pil"``) for the same arguments.

    Returns ``pixel_values`` float32 ``[max_num_patches, p*p*3]`` (zero rows after the image),
    ``pixel_attention_mask`` int32 ``[max_num_patches]`` and ``spatial_shapes`` int32
    ``[h_patches, w_patches]``. Any ``max_num_patches`` works; see :func:`validate_naflex_bucket`.
    """
    pixels = _as_uint8_rgb(image)
    height, width = naflex_target_size(
        pixels.shape[0], pixels.shape[1], patch_size, max_num_patches
    )
    resized = naflex_resize(pixels, height, width, resample, resize_backend)
    patches = patchify(
        rescale_and_normalize(resized, resize_backend, image_mean, image_std), patch_size
    )
    num_patches = patches.shape[0]
    pixel_values = np.zeros((max_num_patches, patches.shape[1]), np.float32)
    pixel_values[:num_patches] = patches
    pixel_attention_mask = np.zeros((max_num_patches,), np.int32)
    pixel_attention_mask[:num_patches] = 1
    spatial_shapes = np.array([height // patch_size, width // patch_size], np.int32)
    return {
        "pixel_values": pixel_values,
        "pixel_attention_mask": pixel_attention_mask,
        "spatial_shapes": spatial_shapes,
    }
