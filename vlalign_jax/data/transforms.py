"""CLIP image preprocessing with PIL and numpy, without torch.

Reproduces open_clip's ``image_transform`` (eval: shortest-side bicubic resize, centre crop, RGB,
normalise; train: RandomResizedCrop with bicubic resize, RGB, normalise) and, with
``crop_rounding="floor"``, transformers' ``CLIPImageProcessor`` centre crop. Outputs are
channels-last float32 ``[H, W, 3]`` arrays, as the JAX models expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CropRounding = Literal["torchvision", "floor"]


def resize_shortest_side(
    image: Image.Image, size: int, resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """Resize so the shorter side is ``size``, with torchvision ``Resize(int)``'s output size.

    The long side is ``int(size * long / short)``, i.e. truncated, and a square keeps ``size`` on
    both sides. PIL resizes ``RGBA``/``LA`` with premultiplied alpha and ``P`` images with nearest.
    """
    width, height = image.size
    # Evaluate `size * long` first and truncate, exactly as torchvision does;
    # `size * (long / short)` or rounding would differ by one pixel on some shapes.
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) == image.size:
        return image
    return image.resize((new_width, new_height), resample)


def _crop_offset(length: int, crop: int, rounding: CropRounding) -> int:
    """Top (or left) offset of a centred crop; negative when the crop pads the image."""
    if rounding == "floor":
        # transformers: (length - crop) // 2, also when negative, so an odd padding puts the
        # extra zero row before the image.
        return (length - crop) // 2
    if rounding == "torchvision":
        if length < crop:
            # torchvision pads (crop - length) // 2 before and the rest after, then crops at 0.
            return -((crop - length) // 2)
        # Python's round() rounds halves to even: 55.5 -> 56 but 84.5 -> 84.
        return int(round((length - crop) / 2.0))
    raise ValueError(f"Unknown crop rounding {rounding!r}; expected 'torchvision' or 'floor'.")


def center_crop(
    image: Image.Image, size: int, rounding: CropRounding = "torchvision"
) -> Image.Image:
    """Crop a centred ``size`` x ``size`` square, zero-padding sides shorter than ``size``.

    ``rounding="torchvision"`` (open_clip's ``CenterCrop``) starts the crop at
    ``round((length - size) / 2)`` with round-half-to-even; ``rounding="floor"``
    (transformers' ``CLIPImageProcessor``) at ``(length - size) // 2``. They differ by one pixel
    when ``length - size`` is odd and its floor half is odd: e.g. ``rocket()`` resized to
    224 x 335 is cropped at column 56 by torchvision and 55 by transformers. When padding an odd
    amount, torchvision puts the extra zero row after the image and transformers before it.
    """
    width, height = image.size
    top = _crop_offset(height, size, rounding)
    left = _crop_offset(width, size, rounding)
    # PIL fills the box outside the image with zeros, the same fill torchvision pads with.
    return image.crop((left, top, left + size, top + size))


def to_normalized_array(
    image: Image.Image,
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
) -> np.ndarray:
    """Convert to RGB and return ``(pixels / 255 - mean) / std`` as float32 ``[H, W, 3]``.

    Each step is a float32 op in torchvision's order (ToTensor's ``/ 255`` then Normalize's
    subtract and divide), so results agree with ``ToTensor() + Normalize()`` to float32 rounding.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean_array = np.asarray(mean, dtype=np.float32)
    std_array = np.asarray(std, dtype=np.float32)
    return (pixels - mean_array) / std_array  # [height, width, 3]


def clip_eval_transform(
    image: Image.Image,
    image_size: int = 224,
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
    crop_rounding: CropRounding = "torchvision",
) -> np.ndarray:
    """open_clip's eval transform: shortest-side bicubic resize, centre crop, RGB, normalise.

    RGB conversion comes after resizing as in open_clip, because PIL resizes RGBA with
    premultiplied alpha; converting first would change the colours at transparent edges.
    Returns float32 ``[image_size, image_size, 3]``.
    """
    image = resize_shortest_side(image, image_size, Image.Resampling.BICUBIC)
    image = center_crop(image, image_size, crop_rounding)
    return to_normalized_array(image, mean, std)


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """Sample ``(top, left, crop_height, crop_width)`` as torchvision ``RandomResizedCrop`` does.

    Up to 10 tries draw an area fraction uniform in ``scale`` and an aspect ratio (width / height)
    log-uniform in ``ratio``; the first box that fits is placed uniformly at random. If none fits,
    fall back to a centred crop of the whole image with its aspect ratio clamped to ``ratio``.
    Draws come from ``rng`` (not torch's generator), so a seed gives the same box every time.
    """
    if scale[0] > scale[1] or ratio[0] > ratio[1]:
        raise ValueError(f"scale and ratio must be (min, max); got scale={scale}, ratio={ratio}.")
    area = height * width
    log_ratio_min, log_ratio_max = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * float(rng.uniform(scale[0], scale[1]))
        aspect_ratio = math.exp(float(rng.uniform(log_ratio_min, log_ratio_max)))
        crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width

    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_width, crop_height = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        crop_width, crop_height = int(round(height * ratio[1])), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def clip_train_transform(
    image: Image.Image,
    rng: np.random.Generator,
    image_size: int = 224,
    scale: tuple[float, float] = (0.9, 1.0),
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
) -> np.ndarray:
    """open_clip's train transform: RandomResizedCrop (bicubic), RGB, normalise.

    open_clip passes only ``scale`` (default ``(0.9, 1.0)``), so the aspect-ratio range is
    torchvision's default ``(3/4, 4/3)``. Deterministic given ``rng``. Returns float32
    ``[image_size, image_size, 3]``.
    """
    top, left, crop_height, crop_width = random_resized_crop_box(
        rng, image.height, image.width, scale=scale
    )
    image = image.crop((left, top, left + crop_width, top + crop_height))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return to_normalized_array(image, mean, std)


@dataclasses.dataclass(frozen=True)
class ClipEvalTransform:
    """``clip_eval_transform`` with its settings bound, for data pipelines that map one callable."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    crop_rounding: CropRounding = "torchvision"

    def __call__(self, image: Image.Image) -> np.ndarray:
        return clip_eval_transform(image, self.image_size, self.mean, self.std, self.crop_rounding)


@dataclasses.dataclass(frozen=True)
class ClipTrainTransform:
    """``clip_train_transform`` with its settings bound; the caller supplies the generator."""

    image_size: int = 224
    scale: tuple[float, float] = (0.9, 1.0)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        return clip_train_transform(image, rng, self.image_size, self.scale, self.mean, self.std)
