"""Parity of vlalign_jax.data.transforms with open_clip, torchvision and CLIPImageProcessor.

Tolerance 1e-5 everywhere: both sides resize with the same PIL call, so pixels are identical and
only float32 rounding of the normalisation (about 1e-7) could differ. Measured with torch 2.14.1,
torchvision 0.29.1, open_clip 3.3.0 and transformers 5.23.0, every parity check here is exactly 0.
"""

import math

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipEvalTransform,
    center_crop,
    clip_eval_transform,
    clip_train_transform,
    random_resized_crop_box,
    resize_shortest_side,
)

skimage_data = pytest.importorskip("skimage.data")

ATOL = 1e-5


def _rgba_image() -> Image.Image:
    """Astronaut with alpha ramping 0 -> 255 left to right, so premultiplied resizing matters."""
    rgb = skimage_data.astronaut()
    alpha = np.broadcast_to(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), rgb.shape[:2])
    return Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")


@pytest.fixture(scope="module")
def images() -> dict[str, Image.Image]:
    """Real photographs in the modes and shapes a dataset throws at the transform."""
    return {
        "astronaut": Image.fromarray(skimage_data.astronaut()),  # 512 x 512
        "coffee": Image.fromarray(skimage_data.coffee()),  # 400 x 600
        "chelsea": Image.fromarray(skimage_data.chelsea()),  # 300 x 451
        "rocket": Image.fromarray(skimage_data.rocket()),  # 427 x 640
        "camera": Image.fromarray(skimage_data.camera()),  # 512 x 512, mode L
        "rgba": _rgba_image(),
        "tiny": Image.fromarray(skimage_data.chelsea()[100:117, 200:223]),  # 17 x 23, upsampled
        "wide": Image.fromarray(skimage_data.astronaut()[200:260]),  # 60 x 512
    }


def _pil_clip_processor(image_size: int):
    """transformers' PIL/numpy CLIPImageProcessor with OpenAI defaults at ``image_size``.

    In transformers v5 ``CLIPImageProcessor`` is the torchvision backend and the PIL one is
    ``CLIPImageProcessorPil``; in v4 ``CLIPImageProcessor`` itself is the PIL one.
    """
    transformers = pytest.importorskip("transformers")
    processor_class = (
        getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    )
    processor = processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    assert getattr(processor, "backend", "pil") == "pil"
    assert tuple(processor.image_mean) == OPENAI_CLIP_MEAN
    assert tuple(processor.image_std) == OPENAI_CLIP_STD
    assert processor.resample == Image.Resampling.BICUBIC
    def preprocess(image: Image.Image) -> np.ndarray:
        return processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)

    return preprocess


def _torchvision_normalized(image: Image.Image) -> np.ndarray:
    """torchvision ToTensor + Normalize with the OpenAI statistics, as HWC numpy."""
    transforms = pytest.importorskip("torchvision.transforms")
    tensor = transforms.functional.to_tensor(image.convert("RGB"))
    tensor = transforms.functional.normalize(tensor, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return tensor.numpy().transpose(1, 2, 0)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("image_size", [224, 336])
def test_eval_transform_matches_open_clip(images, image_size):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(image_size, is_train=False)
    for name, image in images.items():
        ours = clip_eval_transform(image, image_size)
        expected = reference(image).numpy().transpose(1, 2, 0)
        assert _max_abs(ours, expected) <= ATOL, name
    assert ClipEvalTransform(image_size)(images["rocket"]).shape == (image_size, image_size, 3)


@pytest.mark.parametrize("image_size", [224, 336])
def test_eval_transform_with_floor_rounding_matches_clip_image_processor(images, image_size):
    """Matches the PIL CLIPImageProcessor on every image but the RGBA one.

    The processor composites transparency onto white *before* resizing, whereas open_clip (and we)
    resize RGBA with premultiplied alpha and then drop the alpha channel; that case is covered by
    ``test_rgba_matches_clip_image_processor_after_white_compositing``. The processor rescales in
    float64 then casts to float32, which could differ from our float32 ``/ 255`` by one ulp
    (~2e-7 after dividing by std); measured difference is 0.
    """
    processor = _pil_clip_processor(image_size)
    for name, image in images.items():
        if name == "rgba":
            continue
        ours = clip_eval_transform(image, image_size, crop_rounding="floor")
        assert _max_abs(ours, processor(image)) <= ATOL, name


def test_rgba_matches_clip_image_processor_after_white_compositing(images):
    image = images["rgba"]
    on_white = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    processor = _pil_clip_processor(224)
    expected = processor(image)
    ours = clip_eval_transform(on_white.convert("RGB"), crop_rounding="floor")
    assert _max_abs(ours, expected) <= ATOL
    # Without compositing the transparent left side differs (dropped alpha shows the raw colours).
    assert _max_abs(clip_eval_transform(image, crop_rounding="floor"), expected) > 0.5


def test_default_rounding_is_a_one_pixel_shift_from_clip_image_processor(images):
    """rocket() is 427 x 640, resized to 224 x 335: 335 - 224 = 111 is odd, so torchvision starts
    the crop at round(55.5) = 56 (half to even) and the processor at 111 // 2 = 55. The crops then
    differ by up to several units, but column j + 1 of the processor's crop is our column j."""
    image = images["rocket"]
    assert resize_shortest_side(image, 224).size == (335, 224)
    ours = clip_eval_transform(image, 224)
    expected = _pil_clip_processor(224)(image)
    assert _max_abs(ours, expected) > 0.1
    assert _max_abs(ours[:, :-1], expected[:, 1:]) <= ATOL


def test_resize_shortest_side_size_matches_torchvision():
    functional = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(0)
    # Shapes whose long side truncates (427 x 640 -> 335.7), squares, and ties on either side.
    shapes = [(1, 1), (17, 23), (23, 17), (31, 31), (427, 640), (640, 427), (3, 20)] + [
        tuple(int(v) for v in rng.integers(16, 160, size=2)) for _ in range(20)
    ]
    for height, width in shapes:
        image = Image.new("L", (width, height))
        for size in (224, 336):
            assert resize_shortest_side(image, size).size == functional.resize(image, size).size


def test_center_crop_pads_like_torchvision_and_transformers(images):
    """A 17 x 23 image in a 32 crop pads 15 rows and 9 columns: odd amounts, where torchvision puts
    the extra zero row after the image and transformers before it."""
    functional = pytest.importorskip("torchvision.transforms.functional")
    image_transforms = pytest.importorskip("transformers.image_transforms")
    image = images["tiny"]
    for size in (8, 20, 32):  # crop inside, mixed crop and pad, pad on both sides
        expected = np.asarray(functional.center_crop(image, size))
        assert np.array_equal(np.asarray(center_crop(image, size)), expected)
        expected = image_transforms.center_crop(
            np.asarray(image), (size, size), input_data_format="channels_last"
        )
        assert np.array_equal(np.asarray(center_crop(image, size, rounding="floor")), expected)
    torchvision_crop, floor_crop = center_crop(image, 32), center_crop(image, 32, "floor")
    assert not np.array_equal(np.asarray(torchvision_crop), np.asarray(floor_crop))
    with pytest.raises(ValueError):
        center_crop(image, 8, rounding="ceil")


def _is_fallback(box, height, width, ratio):
    """torchvision's fallback: centred, full width or height, aspect ratio clamped to ``ratio``."""
    top, left, crop_height, crop_width = box
    if width / height < ratio[0]:
        expected_size = (round(width / ratio[0]), width)
    elif width / height > ratio[1]:
        expected_size = (height, round(height * ratio[1]))
    else:
        expected_size = (height, width)
    return (crop_height, crop_width) == expected_size and (top, left) == (
        (height - crop_height) // 2,
        (width - crop_width) // 2,
    )


@pytest.mark.parametrize(
    "scale, height, width, min_sampled",
    [
        # At 90%+ of the area a crop needs the image's own aspect ratio within about 5%, so
        # a 3:2 image (needing ratio >= 1.35 > 4/3) always falls back; a square mostly does not.
        ((0.9, 1.0), 427, 640, 0),
        ((0.9, 1.0), 640, 300, 0),
        ((0.9, 1.0), 512, 512, 400),
        ((0.08, 1.0), 427, 640, 490),
        ((0.08, 1.0), 512, 512, 490),
        ((0.08, 1.0), 640, 300, 490),
    ],
)
def test_random_resized_crop_box_respects_scale_and_ratio(scale, height, width, min_sampled):
    ratio = (3 / 4, 4 / 3)
    num_sampled = 0
    for seed in range(500):
        box = random_resized_crop_box(np.random.default_rng(seed), height, width, scale, ratio)
        top, left, crop_height, crop_width = box
        assert 0 <= top and top + crop_height <= height and 0 <= left and left + crop_width <= width
        rng = np.random.default_rng(seed)
        assert box == random_resized_crop_box(rng, height, width, scale, ratio)
        if _is_fallback(box, height, width, ratio):
            continue
        num_sampled += 1
        # Sides are rounded to integers: the drawn area and ratio are within half a pixel per side.
        area = height * width
        assert (crop_height - 0.5) * (crop_width - 0.5) <= scale[1] * area
        assert (crop_height + 0.5) * (crop_width + 0.5) >= scale[0] * area
        assert (crop_width - 0.5) / (crop_height + 0.5) <= ratio[1]
        assert (crop_width + 0.5) / (crop_height - 0.5) >= ratio[0]
    assert num_sampled >= min_sampled


def test_random_resized_crop_box_fallback_on_wide_image():
    # A 60 x 512 strip cannot hold 90% of its area at aspect <= 4/3: centred 60 x 80 crop.
    for seed in range(20):
        assert random_resized_crop_box(np.random.default_rng(seed), 60, 512) == (0, 216, 60, 80)
    # Tall: full width, height = round(60 / (3/4)) = 80.
    assert random_resized_crop_box(np.random.default_rng(0), 512, 60) == (216, 0, 80, 60)


@pytest.mark.parametrize("name", ["coffee", "camera", "rgba", "tiny"])
def test_train_transform_matches_torchvision_resized_crop(images, name):
    functional = pytest.importorskip("torchvision.transforms.functional")
    image = images[name]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        box = random_resized_crop_box(rng, image.height, image.width, (0.08, 1.0))
        expected = functional.resized_crop(
            image, *box, [224, 224], functional.InterpolationMode.BICUBIC
        )
        ours = clip_train_transform(image, np.random.default_rng(seed), scale=(0.08, 1.0))
        assert _max_abs(ours, _torchvision_normalized(expected)) <= ATOL


def test_train_transform_is_deterministic_by_seed(images):
    image = images["chelsea"]
    first = clip_train_transform(image, np.random.default_rng(7))
    assert np.array_equal(first, clip_train_transform(image, np.random.default_rng(7)))
    assert first.shape == (224, 224, 3) and math.isfinite(float(first.sum()))
