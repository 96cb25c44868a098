"""SigLIP 2 NaFlex preprocessing (vlalign_jax.data.naflex) against transformers' Siglip2 processors.

Real photographs (scikit-image) cropped square, tall 1:3, wide 3:1, tiny 20x300 and 300x20, at every
bucket with patch 16. Tolerance 1e-6 on pixel_values: both sides do the same integer resize and the
same float32 operations, so only float32 rounding could differ (measured with transformers 5.23.0,
torch 2.14.1, torchvision 0.29.1, Pillow 13: every difference here is exactly 0). A resize that were
one uint8 level off would show up as 2/255 ~ 7.8e-3, far above the tolerance. Masks and spatial
shapes are integers and compared exactly.
"""

import math

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.naflex import (
    NAFLEX_BUCKETS,
    naflex_preprocess,
    naflex_resize,
    naflex_target_size,
    patchify,
    pick_naflex_bucket,
    rescale_and_normalize,
    unpatchify,
    validate_naflex_bucket,
)

skimage_data = pytest.importorskip("skimage.data")

PATCH = 16
ATOL = 1e-6


def _crops() -> dict[str, np.ndarray]:
    """Photographs in the aspect ratios NaFlex exists for, as contiguous uint8 [H, W, 3]."""
    astronaut, coffee, chelsea, rocket = (
        skimage_data.astronaut(),
        skimage_data.coffee(),
        skimage_data.chelsea(),
        skimage_data.rocket(),
    )
    crops = {
        "astronaut_square": astronaut,
        "coffee_tall_1x3": coffee[:, 200:333],
        "chelsea_wide_3x1": chelsea[100:250],
        "rocket_full_427x640": rocket,
        "astronaut_tiny_20x300": astronaut[200:220, 100:400],
        "rocket_tiny_300x20": rocket[50:350, 300:320],
    }
    return {name: np.ascontiguousarray(crop) for name, crop in crops.items()}


CROPS = _crops()


def _hf_processor(backend: str, max_num_patches: int, resample: str):
    """transformers' processor built directly (no download) with explicit arguments."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    siglip2 = pytest.importorskip("transformers.models.siglip2")
    cls = (
        siglip2.Siglip2ImageProcessor
        if backend == "torchvision"
        else siglip2.Siglip2ImageProcessorPil
    )
    pil_filter = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[
        resample
    ]
    return cls(patch_size=PATCH, max_num_patches=max_num_patches, resample=pil_filter)


def _assert_matches_hf(
    image: np.ndarray, max_num_patches: int, backend: str, resample: str = "bilinear"
):
    expected = _hf_processor(backend, max_num_patches, resample)(image, return_tensors="np")
    ours = naflex_preprocess(
        image, PATCH, max_num_patches, resample=resample, resize_backend=backend
    )
    assert ours["pixel_values"].dtype == np.float32
    assert ours["pixel_values"].shape == (max_num_patches, PATCH * PATCH * 3)
    np.testing.assert_array_equal(ours["spatial_shapes"], expected["spatial_shapes"][0])
    np.testing.assert_array_equal(ours["pixel_attention_mask"], expected["pixel_attention_mask"][0])
    np.testing.assert_allclose(ours["pixel_values"], expected["pixel_values"][0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("max_num_patches", NAFLEX_BUCKETS)
def test_matches_transformers_on_photographs(backend, max_num_patches):
    """torchvision: ``Siglip2ImageProcessor`` (the default); pil: ``Siglip2ImageProcessorPil``."""
    for name, image in CROPS.items():
        try:
            _assert_matches_hf(image, max_num_patches, backend)
        except AssertionError as error:
            raise AssertionError(f"{name} {image.shape} at {max_num_patches} patches") from error


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_bicubic_matches_transformers(backend):
    for name in ("coffee_tall_1x3", "chelsea_wide_3x1", "astronaut_tiny_20x300"):
        _assert_matches_hf(CROPS[name], 256, backend, resample="bicubic")


def test_target_size_matches_transformers_bisection():
    """Same bisection, same float operations: equal on many random sizes, including extremes."""
    hf = pytest.importorskip("transformers.models.siglip2.image_processing_pil_siglip2")
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.uniform(0, math.log(6000), size=(400, 2))).astype(int)
    sizes = np.concatenate([sizes, [[1, 1], [1, 6000], [16, 16], [20, 300], [512, 512], [2, 3]]])
    for height, width in sizes:
        for patch_size, budget in (
            (16, 128),
            (16, 256),
            (16, 576),
            (16, 784),
            (16, 1024),
            (14, 729),
        ):
            expected = hf.get_image_size_for_max_num_patches(
                int(height), int(width), patch_size, budget
            )
            assert naflex_target_size(int(height), int(width), patch_size, budget) == tuple(
                expected
            )


def test_target_size_keeps_budget_and_aspect_ratio():
    """Property: at most max_num_patches patches, and both sides are one common scale of the image
    rounded up to a whole patch (so the aspect ratio is kept within one patch per side)."""
    rng = np.random.default_rng(1)
    for _ in range(2000):
        height, width = (int(v) for v in np.exp(rng.uniform(0, math.log(8000), size=2)))
        budget = int(rng.choice(NAFLEX_BUCKETS + (1, 7, 4096)))
        patch_size = int(rng.choice([8, 14, 16, 32]))
        target_height, target_width = naflex_target_size(height, width, patch_size, budget)
        rows, cols = target_height // patch_size, target_width // patch_size
        assert (rows * patch_size, cols * patch_size) == (target_height, target_width)
        assert 1 <= rows * cols <= budget
        # One scale s > 0 gives rows = max(1, ceil(height * s / p)) and cols likewise exactly when
        # the ranges of s / p allowed by each side, ((rows - 1) / height, rows / height] and
        # ((cols - 1) / width, cols / width], overlap.
        lowest_scale = max((rows - 1) / height, (cols - 1) / width)
        highest_scale = min(rows / height, cols / width)
        assert lowest_scale < highest_scale, (height, width, budget, patch_size, rows, cols)


def test_backends_differ_by_at_most_one_level():
    """The torchvision kernel (int16 weights) and PIL (22-bit weights) round differently: on these
    photographs at most one uint8 level, on 0 to 15% of values, i.e. <= 2/255 after normalising."""
    for image in CROPS.values():
        for budget in (128, 1024):
            fast = naflex_preprocess(image, PATCH, budget, resize_backend="torchvision")
            slow = naflex_preprocess(image, PATCH, budget, resize_backend="pil")
            np.testing.assert_array_equal(fast["spatial_shapes"], slow["spatial_shapes"])
            np.testing.assert_allclose(
                fast["pixel_values"], slow["pixel_values"], rtol=0, atol=2 / 255 + ATOL
            )


def test_normalisation_orders_differ_by_at_most_one_ulp():
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    fast = rescale_and_normalize(levels, "torchvision")
    slow = rescale_and_normalize(levels, "pil")
    assert fast.dtype == slow.dtype == np.float32
    assert np.abs(fast - slow).max() <= 6e-8
    assert fast[0, 0, 0] == -1.0 and fast[0, -1, 0] == 1.0


def test_patch_order_and_unpatchify_round_trip():
    """Patches row-major; inside a patch (row, column, channel), matching HF's (ph, pw, c) order."""
    rows, cols = 3, 5
    image = np.arange(rows * PATCH * cols * PATCH * 3, dtype=np.float32).reshape(
        rows * PATCH, cols * PATCH, 3
    )
    patches = patchify(image, PATCH)
    assert patches.shape == (rows * cols, PATCH * PATCH * 3)
    np.testing.assert_array_equal(patches[1], image[:PATCH, PATCH : 2 * PATCH].reshape(-1))
    np.testing.assert_array_equal(patches[cols], image[PATCH : 2 * PATCH, :PATCH].reshape(-1))
    padded = np.concatenate([patches, np.zeros((4, patches.shape[1]), np.float32)])
    np.testing.assert_array_equal(unpatchify(padded, (rows, cols), PATCH), image)


def test_outputs_padding_and_unpatchify_of_a_photograph():
    image = CROPS["coffee_tall_1x3"]
    out = naflex_preprocess(image, PATCH, 256)
    rows, cols = (int(v) for v in out["spatial_shapes"])
    assert out["spatial_shapes"].dtype == out["pixel_attention_mask"].dtype == np.int32
    assert out["pixel_attention_mask"].sum() == rows * cols <= 256
    assert not out["pixel_values"][rows * cols :].any()
    resized = naflex_resize(image, rows * PATCH, cols * PATCH)
    np.testing.assert_array_equal(
        unpatchify(out["pixel_values"], (rows, cols), PATCH), rescale_and_normalize(resized)
    )


def test_pil_and_grayscale_inputs():
    image = CROPS["chelsea_wide_3x1"]
    from_array = naflex_preprocess(image, PATCH, 128)
    from_pil = naflex_preprocess(Image.fromarray(image), PATCH, 128)
    np.testing.assert_array_equal(from_array["pixel_values"], from_pil["pixel_values"])
    gray = image[:, :, 1]
    from_gray = naflex_preprocess(Image.fromarray(gray), PATCH, 128)
    np.testing.assert_array_equal(
        from_gray["pixel_values"],
        naflex_preprocess(np.dstack([gray] * 3), PATCH, 128)["pixel_values"],
    )
    with pytest.raises(TypeError):
        naflex_preprocess(image.astype(np.float32), PATCH, 128)


def test_bucket_helpers():
    assert validate_naflex_bucket(576) == 576
    with pytest.raises(ValueError):
        validate_naflex_bucket(300)
    # FG-CLIP 2: 1024 if n > 784, 784 if n > 576, 576 if n > 256, 256 if n > 128, else 128.
    for native_patches, bucket in (
        (1, 128),
        (128, 128),
        (129, 256),
        (256, 256),
        (257, 576),
        (576, 576),
        (577, 784),
        (784, 784),
        (785, 1024),
        (10_000, 1024),
    ):
        assert pick_naflex_bucket(PATCH, native_patches * PATCH + 15) == bucket
    assert pick_naflex_bucket(512, 512) == 1024 and pick_naflex_bucket(224, 224) == 256
