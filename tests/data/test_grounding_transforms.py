"""CLIP-VG grounding transforms: the box follows the image through every random path, the eval path
matches a brute-force numpy/PIL reimplementation of the reference's (and torchvision's pipeline), and
the released-code quirks (crop test, substring matching) are reproduced only when asked for.

Tolerances: the eval pixels are compared exactly (both sides make the same PIL resize call and the
same float32 ops); boxes to 1e-5 of the canvas against float64 arithmetic (float32 rounding). The
shape test allows BOX_TOL canvas pixels: bilinear resampling blurs an edge over about one output
pixel, and the image's rounded size differs from `r * size` by up to half a pixel.
"""

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.grounding_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GroundingTransform,
    crop_keeps_box,
    grounding_eval_transform,
    grounding_train_transform,
    horizontal_flip,
    mentions_direction,
    pad_offsets,
    swap_left_right,
    train_scales,
)

IMSIZE = 224
BOX_TOL = 1.5  # canvas pixels, see the module docstring
MEAN = np.asarray(IMAGENET_MEAN, np.float32)
STD = np.asarray(IMAGENET_STD, np.float32)


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[float], np.ndarray, np.ndarray, str]:
    """A rectangle or ellipse of one colour on a background of another, at a random size and aspect.

    Returns the uint8 image, the shape's tight x1y1x2y2 pixel box, both colours and the kind.
    """
    long_side = int(rng.integers(64, 480))
    aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))  # width / height
    width, height = (long_side, max(24, round(long_side / aspect))) if aspect >= 1 else (
        max(24, round(long_side * aspect)), long_side)
    background = rng.integers(0, 256, 3)
    shape = rng.integers(0, 256, 3)
    while np.abs(shape - background).max() < 80:
        shape = rng.integers(0, 256, 3)
    sw, sh = rng.uniform(0.3, 0.8) * width, rng.uniform(0.3, 0.8) * height
    x0, y0 = rng.uniform(0, width - sw), rng.uniform(0, height - sh)
    ys, xs = np.mgrid[:height, :width] + 0.5  # pixel centres
    kind = "rectangle" if rng.random() < 0.5 else "ellipse"
    if kind == "rectangle":
        inside = (xs >= x0) & (xs < x0 + sw) & (ys >= y0) & (ys < y0 + sh)
    else:
        inside = ((xs - x0 - sw / 2) / (sw / 2)) ** 2 + ((ys - y0 - sh / 2) / (sh / 2)) ** 2 <= 1
    image = np.where(inside[..., None], shape, background).astype(np.uint8)
    rows, cols = np.nonzero(inside)
    box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
    return image, box, shape.astype(np.float32), background.astype(np.float32), kind


def _shape_pixels(out: dict, shape: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of canvas pixels that are more shape colour than background colour."""
    rgb = (out["pixels"] * STD + MEAN) * 255
    direction = shape - background
    alpha = ((rgb - background) @ direction) / (direction @ direction)
    return np.nonzero((alpha > 0.5) & ~out["pad_mask"])


def _check_box(out: dict, shape: np.ndarray, background: np.ndarray, tight: bool, label: str) -> None:
    cx, cy, w, h = out["box"] * IMSIZE
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    np.testing.assert_allclose([x1, y1, x2, y2], out["box_xyxy"], atol=1e-3)
    rows, cols = _shape_pixels(out, shape, background)
    if len(rows):  # every shape pixel lies inside the box
        assert cols.min() >= x1 - BOX_TOL and cols.max() + 1 <= x2 + BOX_TOL, (label, cols.min(), cols.max(), x1, x2)
        assert rows.min() >= y1 - BOX_TOL and rows.max() + 1 <= y2 + BOX_TOL, (label, rows.min(), rows.max(), y1, y2)
    if tight and w >= 3 and h >= 3:  # and the box is no bigger than the shape
        assert len(rows), label
        assert cols.min() <= x1 + BOX_TOL and cols.max() + 1 >= x2 - BOX_TOL, (label, cols.min(), cols.max(), x1, x2)
        assert rows.min() <= y1 + BOX_TOL and rows.max() + 1 >= y2 - BOX_TOL, (label, rows.min(), rows.max(), y1, y2)


def test_box_encloses_the_shape_through_train_and_eval():
    rng = np.random.default_rng(0)
    crops = 0
    for scene in range(120):
        image, box, shape, background, kind = _scene(rng)
        out = grounding_eval_transform(image, box, "a thing", IMSIZE)
        _check_box(out, shape, background, tight=True, label=(scene, kind, "eval"))
        for seed in range(4):
            # A direction word forbids the crop, so an ellipse's box stays tight; a crop clips the box
            # to the crop, which stays tight only around a rectangle.
            expression = "the thing on the left" if seed % 2 else "a thing"
            out = grounding_train_transform(image, box, expression, seed + 10 * scene, IMSIZE, color_jitter=False,
                                            horizontal_flip_prob=0.5 if seed >= 2 else 0.0)
            content = np.argwhere(~out["pad_mask"])
            crops += int(not np.isclose((np.ptp(content[:, 1]) + 1) / (np.ptp(content[:, 0]) + 1),
                                        image.shape[1] / image.shape[0], rtol=0.1))
            tight = kind == "rectangle" or expression != "a thing"
            _check_box(out, shape, background, tight=tight, label=(scene, kind, seed, expression))
    assert crops > 5  # the crop path was exercised


def test_color_jitter_and_blur_leave_the_geometry_alone():
    image, box, *_ = _scene(np.random.default_rng(1))
    changed = 0
    for seed in range(8):
        plain = grounding_train_transform(image, box, "a thing", seed, color_jitter=False)
        jittered = grounding_train_transform(image, box, "a thing", seed, blur=True)
        for key in ("box", "box_xyxy", "pad_mask"):
            np.testing.assert_array_equal(plain[key], jittered[key])
        changed += not np.array_equal(plain["pixels"], jittered["pixels"])
    assert changed >= 5  # jitter applies with p=0.8


def test_deterministic_given_seed_or_generator():
    image, box, *_ = _scene(np.random.default_rng(2))
    a = grounding_train_transform(image, box, "a thing", 7)
    b = grounding_train_transform(image, box, "a thing", np.random.default_rng(7))
    c = grounding_train_transform(image, box, "a thing", 8)
    for key in ("pixels", "pad_mask", "box"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not all(np.array_equal(a[k], c[k]) for k in ("pixels", "box"))
    assert a["pixels"].dtype == np.float32 and a["pixels"].shape == (IMSIZE, IMSIZE, 3)
    assert a["pad_mask"].dtype == bool and a["box"].dtype == np.float32


def _brute_force_eval(image: Image.Image, box: list[float], imsize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's eval path written out: long side to imsize (PIL bilinear), /255, ImageNet
    normalise, paste centred on a zero canvas, shift the box, cxcywh / imsize."""
    width, height = image.size
    ratio = imsize / max(width, height)
    new_width, new_height = round(width * ratio), round(height * ratio)
    resized = np.asarray(image.resize((new_width, new_height), Image.Resampling.BILINEAR))
    normalised = (resized.astype(np.float32) / np.float32(255) - MEAN) / STD
    top, left = (imsize - new_height) // 2, (imsize - new_width) // 2  # = round(d / 2 - 0.1), see below
    pixels = np.zeros((imsize, imsize, 3), np.float32)
    pixels[top:top + new_height, left:left + new_width] = normalised
    mask = np.ones((imsize, imsize), bool)
    mask[top:top + new_height, left:left + new_width] = False
    x1, y1, x2, y2 = np.asarray(box, np.float64) * ratio + [left, top, left, top]
    return pixels, mask, np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) / imsize


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    sizes = [(640, 480), (480, 640), (333, 500), (224, 224), (1000, 37), (37, 1000), (225, 223), (101, 97)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_eval_matches_brute_force_reference():
    assert all((d // 2) == round(d / 2.0 - 0.1) for d in range(0, 1000))
    for image in _photos():
        w, h = image.size
        box = [0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]
        for imsize in (224, 384):
            out = grounding_eval_transform(image, box, "x", imsize)
            pixels, mask, cxcywh = _brute_force_eval(image, box, imsize)
            np.testing.assert_array_equal(out["pixels"], pixels)
            np.testing.assert_array_equal(out["pad_mask"], mask)
            np.testing.assert_allclose(out["box"], cxcywh, atol=1e-5)
    # A numpy array in gives the same as the PIL image.
    image = _photos()[0]
    np.testing.assert_array_equal(grounding_eval_transform(np.asarray(image), [1, 2, 3, 4], "x")["pixels"],
                                  grounding_eval_transform(image, [1, 2, 3, 4], "x")["pixels"])


def test_eval_matches_torchvision_pipeline():
    """Resize + ToTensor + Normalize + zero pad in torchvision, and the box in torch float32 as the
    reference computes it. Tolerance 1e-6 on pixels: identical PIL resize, float32 normalise in the
    same order (measured difference 0); boxes exactly equal."""
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    for image in _photos():
        w, h = image.size
        ratio = float(IMSIZE / float(max(w, h)))
        new_width, new_height = round(w * ratio), round(h * ratio)
        tensor = transforms.Compose([transforms.Resize((new_height, new_width)), transforms.ToTensor(),
                                     transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
        dh, dw = IMSIZE - new_height, IMSIZE - new_width
        top, left = round(dh / 2.0 - 0.1), round(dw / 2.0 - 0.1)
        padded = torch.nn.functional.pad(tensor, (left, dw - left, top, dh - top))
        box = [0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]
        ref = torch.tensor(np.asarray(box, np.float32)) * ratio
        ref = ref + torch.tensor([left, top, left, top])
        ref = torch.stack([(ref[0] + ref[2]) / 2.0, (ref[1] + ref[3]) / 2.0, ref[2] - ref[0], ref[3] - ref[1]])
        ref = ref / torch.tensor([IMSIZE] * 4, dtype=torch.float32)
        out = grounding_eval_transform(image, box, "x", IMSIZE)
        np.testing.assert_allclose(out["pixels"], padded.permute(1, 2, 0).numpy(), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(out["box"], ref.numpy())


def test_direction_words_forbid_the_crop_and_scales_are_reference():
    image, box, *_ = _scene(np.random.default_rng(4))
    h, w = image.shape[:2]
    assert train_scales(224) == (224, 192, 160, 128, 96, 64, 32)
    whole = {(round(h * s / max(h, w)), round(w * s / max(h, w))) for s in train_scales(IMSIZE)}
    sizes = {"left": set(), "a thing": set()}
    for seed in range(30):
        for expression in sizes:
            out = grounding_train_transform(image, box, expression, seed, crop_prob=1.0, color_jitter=False)
            rows, cols = np.nonzero(~out["pad_mask"])
            sizes[expression].add((np.ptp(rows) + 1, np.ptp(cols) + 1))
    assert sizes["left"] <= whole
    assert not sizes["a thing"] <= whole


def test_direction_word_matching():
    for text in ("the man on the left", "top shelf", "leftmost cup", "middle one", "Right side"):
        assert mentions_direction(text) and mentions_direction(text.lower(), released_code=True)
    for text in ("the bright lamp", "a laptop", "upright piano", "copyright sign"):
        assert not mentions_direction(text) and mentions_direction(text, released_code=True)


def test_flip_swaps_left_and_right():
    assert swap_left_right("man on the left of the right car") == "man on the right of the left car"
    assert swap_left_right("bright light, leftmost cup, Left arm") == "bright light, rightmost cup, Right arm"
    assert swap_left_right("bright light left", released_code=True) == "bleft light right"
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    flipped, box, text = horizontal_flip(image, np.array([2, 3, 10, 15], np.float32), "cup on the left")
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    assert box.tolist() == [20, 3, 28, 15] and text == "cup on the right"
    out = grounding_train_transform(image, [2, 3, 10, 15], "cup on the left", 0, horizontal_flip_prob=1.0)
    assert out["expression"] == "cup on the right"
    assert grounding_train_transform(image, [2, 3, 10, 15], "cup on the left", 0)["expression"] == "cup on the left"


def test_crop_test_quirk():
    box_above = np.array([250, 30, 350, 70], np.float32)  # centre (300, 50): above a crop starting at row 100
    assert crop_keeps_box(box_above, top=100, left=10, height=400, width=400, released_code=True)
    assert not crop_keeps_box(box_above, top=100, left=10, height=400, width=400)
    box_inside = np.array([30, 250, 70, 350], np.float32)  # centre (50, 300): inside, x below the top row
    assert not crop_keeps_box(box_inside, top=100, left=10, height=400, width=400, released_code=True)
    assert crop_keeps_box(box_inside, top=100, left=10, height=400, width=400)
    # Through the whole transform the released test lets crops cut a corner box away entirely.
    image = np.full((300, 400, 3), 128, np.uint8)
    empty = {False: 0, True: 0}
    for released_code in empty:
        for seed in range(40):
            out = grounding_train_transform(image, [330, 5, 395, 60], "a thing", seed, crop_prob=1.0,
                                            color_jitter=False, released_code=released_code)
            empty[released_code] += int(out["box"][2] == 0 or out["box"][3] == 0)
    assert empty[False] == 0 and empty[True] > 0


def test_pad_offsets_and_transform_object():
    assert pad_offsets(224, 100, 224) == (0, 62) and pad_offsets(101, 224, 224) == (61, 0)
    rng = np.random.default_rng(0)
    offsets = {pad_offsets(200, 100, 224, rng) for _ in range(3000)}
    assert {t for t, _ in offsets} == set(range(25)) and {left for _, left in offsets} == set(range(125))
    image, box, *_ = _scene(np.random.default_rng(6))
    record = {"image": Image.fromarray(image), "box": np.asarray(box, np.float32), "expression": "a thing", "index": 3}
    out = GroundingTransform(train=False)(record)
    assert out["index"] == 3 and "image" not in out and out["pixels"].shape == (IMSIZE, IMSIZE, 3)
    np.testing.assert_array_equal(out["box"], grounding_eval_transform(image, box, "a thing")["box"])
    with pytest.raises(ValueError, match="needs an rng"):
        GroundingTransform(train=True)(record)
    train = GroundingTransform(train=True)(record, 5)
    np.testing.assert_array_equal(train["pixels"], grounding_train_transform(image, box, "a thing", 5)["pixels"])
