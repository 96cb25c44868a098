"""CLIP-VG's image+box transforms for visual grounding, with PIL and numpy (no torch).

Reference: CLIP-VG `datasets/__init__.py::make_transforms` and `datasets/transforms.py` (inherited from
TransVG), with the flags its training scripts always pass (`--aug_crop --aug_scale --aug_translate`,
no `--aug_blur`):

- train: RandomSelect(A, B, p=0.5) -> ColorJitter(0.4, 0.4, 0.4) -> [GaussianBlur, off] -> [no
  horizontal flip: "harmful to the grounding task"] -> ToTensor -> NormalizeAndPad(imsize, translate).
  A resizes the long side to a random scale in `imsize - 32 i`, i = 0..6 (224 ... 32). B resizes the
  short side to 400/500/600, takes a random crop with sides in [384, 600] (up to 20 tries, kept only
  if the box centre passes the test below; the box is clipped to the crop), then does A's resize.
  Expressions naming a direction ('left', 'right', 'top', 'bottom', 'middle') always take A, so no
  crop can cut away what they refer to. ColorJitter applies, with probability 0.8, PIL ImageEnhance
  brightness, contrast and saturation, each with a factor U(0.6, 1.4), in random order.
- eval: resize the long side to imsize -> ToTensor -> NormalizeAndPad(imsize), centred.

Resizes are PIL bilinear to `(round(w r), round(h r))` with `r = size / long side` (or short side), and
the box is scaled by `r` in float32, as the reference does. NormalizeAndPad normalises with ImageNet's
mean/std (not CLIP's), pastes the image into a zero (in normalised units) square canvas at
`top = randint(0, dh), left = randint(0, dw)` in training or `round(d / 2 - 0.1)` in eval, marks the
padding in a mask, shifts the box and returns it as (cx, cy, w, h) / imsize: the model's target.

Outputs: `pixels` float32 [imsize, imsize, 3]; `pad_mask` bool [imsize, imsize], True on padding (the
reference's `mask`, 1 on padding, which becomes the visual key-padding mask); `box` float32 [4]
normalised cxcywh; `box_xyxy` float32 [4], the same box in canvas pixels; `expression`.

Randomness comes only from the `rng` argument (a numpy Generator or a seed). Photometric draws use
their own stream split off first, so turning jitter or blur on or off leaves the geometry unchanged.

Released-code quirks, reproduced with `released_code=True`; the default follows the evident intent:
1. The crop test is `cx > region[0] and cy > region[1]` with region = (top, left, h, w): x is compared
   with the row offset, and a centre right of or below the crop passes, so a crop can cut the box
   away entirely (clipped to zero area). Intent: the box centre lies inside the crop.
2. Direction words are matched as substrings ('bright' has 'right', 'laptop' has 'top'). Intent: whole
   words, plus 'leftmost', 'topmost', ...
3. The (unused) flip swaps 'left'/'right' as substrings ('bright' -> 'bleft'). Intent: whole words.
The optional horizontal flip (`horizontal_flip=True`, p=0.5, after colour jitter as in the reference's
commented-out line) mirrors image and box and swaps 'left'/'right' in the expression.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from vlalign_jax.data.transforms import to_normalized_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIRECTION_WORDS = ("left", "right", "top", "bottom", "middle")
CROP_SHORT_SIDES = (400, 500, 600)
CROP_MIN_SIZE, CROP_MAX_SIZE, CROP_TRIES = 384, 600, 20
JITTER_PROB, JITTER_STRENGTH = 0.8, 0.4
BLUR_PROB, BLUR_SIGMA = 0.5, (0.1, 2.0)
FLIP_PROB = 0.5

_DIRECTION_RE = re.compile(r"\b(?:left|right|top|bottom|middle)(?:most)?\b", re.IGNORECASE)
_LEFT_RIGHT_RE = re.compile(r"\b(left|right)(?=(?:most)?\b)", re.IGNORECASE)
_PLACEHOLDER = "*&^special^&*"  # the reference's temporary token while swapping


def train_scales(imsize: int = 224) -> tuple[int, ...]:
    """`--aug_scale`: long sides `imsize - 32 i` for i = 0..6."""
    return tuple(imsize - 32 * i for i in range(7))


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _as_box(box: Sequence[float] | np.ndarray) -> np.ndarray:
    box = np.array(box, dtype=np.float32).reshape(-1)
    if box.shape != (4,):
        raise ValueError(f"box must be [x1, y1, x2, y2], got shape {box.shape}")
    return box


def _resize(image: Image.Image, box: np.ndarray, ratio: float) -> tuple[Image.Image, np.ndarray]:
    # Sides at least 1 so extreme aspect ratios at scale 32 do not fail (the reference would).
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    # torchvision's F.resize on a PIL image is this PIL call; the box is a float32 tensor times r.
    return image.resize(size, Image.Resampling.BILINEAR), box * np.float32(ratio)


def resize_long_side(image: Image.Image, box: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Reference `resize_according_to_long_side`."""
    return _resize(image, box, float(size / float(max(image.height, image.width))))


def resize_short_side(image: Image.Image, box: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Reference `resize_according_to_short_side`."""
    return _resize(image, box, float(size / float(min(image.height, image.width))))


def crop_keeps_box(box: np.ndarray, top: int, left: int, height: int, width: int, released_code: bool = False) -> bool:
    """Whether RandomSizeCrop accepts the crop (see quirk 1 in the module docstring)."""
    cx, cy = (box[0] + box[2]) / np.float32(2), (box[1] + box[3]) / np.float32(2)
    if released_code:
        return bool(cx > top and cy > left)
    return bool(left < cx < left + width and top < cy < top + height)


def crop(image: Image.Image, box: np.ndarray, top: int, left: int, height: int, width: int
         ) -> tuple[Image.Image, np.ndarray]:
    """Reference `crop`: cut the region and clip the box to it."""
    image = image.crop((left, top, left + width, top + height))
    box = box - np.array([left, top, left, top], np.float32)
    box = np.minimum(box.reshape(2, 2), np.array([width, height], np.float32)).reshape(-1)
    return image, np.maximum(box, np.float32(0))


def _random_size_crop(image: Image.Image, box: np.ndarray, rng: np.random.Generator, released_code: bool
                      ) -> tuple[Image.Image, np.ndarray]:
    for _ in range(CROP_TRIES):
        width = int(rng.integers(CROP_MIN_SIZE, min(image.width, CROP_MAX_SIZE) + 1))
        height = int(rng.integers(CROP_MIN_SIZE, min(image.height, CROP_MAX_SIZE) + 1))
        top = int(rng.integers(0, image.height - height + 1))
        left = int(rng.integers(0, image.width - width + 1))
        if crop_keeps_box(box, top, left, height, width, released_code):
            return crop(image, box, top, left, height, width)
    return image, box


def mentions_direction(expression: str, released_code: bool = False) -> bool:
    """RandomSelect's test for spatial words (quirk 2)."""
    if released_code:
        return any(word in expression for word in DIRECTION_WORDS)
    return _DIRECTION_RE.search(expression) is not None


def swap_left_right(expression: str, released_code: bool = False) -> str:
    """Swap 'left' and 'right' for a mirrored image (quirk 3); keeps capitalisation."""
    if released_code:
        return expression.replace("right", _PLACEHOLDER).replace("left", "right").replace(_PLACEHOLDER, "left")

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT_RE.sub(swap, expression)


def horizontal_flip(image: Image.Image, box: np.ndarray, expression: str, released_code: bool = False
                    ) -> tuple[Image.Image, np.ndarray, str]:
    """Reference `RandomHorizontalFlip` without its coin: mirror image and box, swap left/right."""
    width = np.float32(image.width)
    box = np.array([width - box[2], box[1], width - box[0], box[3]], np.float32)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), box, swap_left_right(expression, released_code)


def _color_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() >= JITTER_PROB:
        return image
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for op in rng.permutation(3):
        factor = float(rng.uniform(1 - JITTER_STRENGTH, 1 + JITTER_STRENGTH))
        image = enhancers[op](image).enhance(factor)
    return image


def pad_offsets(height: int, width: int, imsize: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
    """(top, left) of the image on the canvas: random with `rng` (translate), else centred as the reference."""
    dh, dw = imsize - height, imsize - width
    if dh < 0 or dw < 0:
        raise ValueError(f"a {width}x{height} image does not fit the {imsize}x{imsize} canvas")
    if rng is None:
        return round(dh / 2.0 - 0.1), round(dw / 2.0 - 0.1)
    top = int(rng.integers(0, dh + 1))
    return top, int(rng.integers(0, dw + 1))


def normalize_and_pad(image: Image.Image, box: np.ndarray, expression: str, imsize: int, top: int, left: int
                      ) -> dict[str, Any]:
    """Reference `ToTensor` + `NormalizeAndPad` at a given offset, channels last."""
    pixels = to_normalized_array(image, IMAGENET_MEAN, IMAGENET_STD)  # [h, w, 3]
    height, width = pixels.shape[:2]
    canvas = np.zeros((imsize, imsize, 3), np.float32)
    canvas[top:top + height, left:left + width] = pixels
    pad_mask = np.ones((imsize, imsize), bool)
    pad_mask[top:top + height, left:left + width] = False
    x1, y1, x2, y2 = box + np.array([left, top, left, top], np.float32)
    cxcywh = np.array([(x1 + x2) / np.float32(2), (y1 + y2) / np.float32(2), x2 - x1, y2 - y1], np.float32)
    return {"pixels": canvas, "pad_mask": pad_mask, "box": cxcywh / np.float32(imsize),
            "box_xyxy": np.array([x1, y1, x2, y2], np.float32), "expression": expression}


def grounding_eval_transform(image: Image.Image | np.ndarray, box: Sequence[float] | np.ndarray, expression: str,
                             imsize: int = 224) -> dict[str, Any]:
    """Eval/test transform: long side to `imsize`, normalise, centre on the canvas.

    `image` is PIL or uint8 [h, w, 3]; `box` is x1y1x2y2 in its pixels.
    """
    image, box = resize_long_side(_as_image(image), _as_box(box), imsize)
    top, left = pad_offsets(image.height, image.width, imsize)
    return normalize_and_pad(image, box, expression, imsize, top, left)


def grounding_train_transform(
    image: Image.Image | np.ndarray,
    box: Sequence[float] | np.ndarray,
    expression: str,
    rng: np.random.Generator | int,
    imsize: int = 224,
    *,
    scales: Sequence[int] | None = None,
    crop_prob: float = 0.5,
    color_jitter: bool = True,
    blur: bool = False,
    translate: bool = True,
    horizontal_flip_prob: float = 0.0,
    released_code: bool = False,
) -> dict[str, Any]:
    """Training transform, deterministic given `rng`.

    Defaults are the released scripts' flags: `scales=None` is `train_scales(imsize)` (`--aug_scale`;
    pass `(imsize,)` without it), `crop_prob=0.5` (`--aug_crop`; 0 without), `blur=False`
    (`--aug_blur`), `translate=True` (`--aug_translate`). `horizontal_flip_prob` > 0 enables the flip
    the reference leaves out (use `FLIP_PROB`, 0.5, as its class does).
    """
    rng = np.random.default_rng(rng)
    photometric_rng = np.random.default_rng(rng.integers(2**63))
    image, box = _as_image(image), _as_box(box)
    scales = train_scales(imsize) if scales is None else tuple(scales)
    if min(scales) <= 0 or max(scales) > imsize:
        raise ValueError(f"scales {scales} must lie in [1, imsize={imsize}]")
    # RandomSelect draws its coin only for expressions without direction words.
    if mentions_direction(expression, released_code) or not rng.random() < crop_prob:
        image, box = resize_long_side(image, box, scales[int(rng.integers(len(scales)))])
    else:
        image, box = resize_short_side(image, box, CROP_SHORT_SIDES[int(rng.integers(len(CROP_SHORT_SIDES)))])
        image, box = _random_size_crop(image, box, rng, released_code)
        image, box = resize_long_side(image, box, scales[int(rng.integers(len(scales)))])
    if color_jitter:
        image = _color_jitter(image, photometric_rng)
    if blur and photometric_rng.random() < BLUR_PROB:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(photometric_rng.uniform(*BLUR_SIGMA))))
    if horizontal_flip_prob > 0 and rng.random() < horizontal_flip_prob:
        image, box, expression = horizontal_flip(image, box, expression, released_code)
    top, left = pad_offsets(image.height, image.width, imsize, rng if translate else None)
    return normalize_and_pad(image, box, expression, imsize, top, left)


@dataclasses.dataclass(frozen=True)
class GroundingTransform:
    """Either transform with its settings bound, mapping a `GroundingSplit` record to model inputs.

    The result is the record without its PIL image, plus `pixels`, `pad_mask`, `box` (normalised
    cxcywh, replacing the pixel box) and `box_xyxy`; `expression` is updated when flipped.
    """

    train: bool
    imsize: int = 224
    scales: tuple[int, ...] | None = None
    crop_prob: float = 0.5
    color_jitter: bool = True
    blur: bool = False
    translate: bool = True
    horizontal_flip_prob: float = 0.0
    released_code: bool = False

    def __call__(self, record: dict[str, Any], rng: np.random.Generator | int | None = None) -> dict[str, Any]:
        if self.train:
            if rng is None:
                raise ValueError("the training transform needs an rng (a numpy Generator or a seed)")
            out = grounding_train_transform(
                record["image"], record["box"], record["expression"], rng, self.imsize, scales=self.scales,
                crop_prob=self.crop_prob, color_jitter=self.color_jitter, blur=self.blur, translate=self.translate,
                horizontal_flip_prob=self.horizontal_flip_prob, released_code=self.released_code)
        else:
            out = grounding_eval_transform(record["image"], record["box"], record["expression"], self.imsize)
        return {**{k: v for k, v in record.items() if k != "image"}, **out}
