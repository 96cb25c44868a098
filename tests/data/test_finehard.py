"""FineHARD (FG-CLIP stage 2) and stage-1 caption sources: fields, padding, masks, boxes, bad records."""

import json

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError, RecordErrors
from vlalign_jax.data.sources.finehard import FgclipCaptionPairs, FineHard

WIDTH, HEIGHT = 64, 48
# Non-overlapping pixel boxes on 8-pixel JPEG block edges, each a flat colour on black, so the decoded
# colours are exact up to rounding and a pixel scan finds each box again.
PAINTED = [((8, 16, 24, 40), (255, 0, 0)), ((32, 0, 64, 16), (0, 255, 0)), ((40, 24, 56, 48), (0, 0, 255))]
PAINTED_PATH = "coyo_image_0/00000/000000001.jpg"
PLAIN_PATH = "coyo_image_0/00000/000000002.jpg"
CN_PATH = "cn/0001.jpg"


def negs(tag, count=10):
    return {f"neg_{k}": f"{tag} wrong {k}" for k in range(count)}


def region(bbox, tag, negatives=None):
    box = {"bbox": bbox, "short_expr": f"{tag} short", "long_expr": f"{tag} long", "flag_short_neg": 0}
    if negatives is not None:
        box.update(flag_short_neg=1, short_expr_negs=negatives)
    return box


def record(f_path=PLAIN_PATH, bbox_info=(), **fields):
    return {"f_path": f_path, "caption": f"long caption of {f_path}", "short_caption": "a thing",
            "bbox_info": list(bbox_info), **fields}


RANDOM_BOXES = []  # slightly outside [0, 1] in places: clipped, as `expected_box` says
_rng = np.random.default_rng(0)
for _ in range(6):
    x1, y1 = _rng.uniform(-0.009, 0.5, 2)
    x2, y2 = _rng.uniform(0.6, 1.009, 2)
    RANDOM_BOXES.append([float(x1), float(y1), float(x2), float(y2)])
RANDOM_BOXES[0][0], RANDOM_BOXES[0][3] = -0.004, 1.006  # within the 0.01 tolerance: clipped
RANDOM_BOXES[2][1], RANDOM_BOXES[2][2] = -0.0099, 1.0099
RANDOM_BOXES[5] = [0.9, 0.1, 0.2, 0.5]  # invalid, but beyond max_boxes=4: never looked at

GOOD = [
    record(PAINTED_PATH, [region([x1 / WIDTH, y1 / HEIGHT, x2 / WIDTH, y2 / HEIGHT, 0.87], f"box{k}",
                                 negs(f"box{k}") if k == 1 else None)
                          for k, ((x1, y1, x2, y2), _) in enumerate(PAINTED)]),
    record(bbox_info=[region(box, f"r{k}", negs(f"r{k}") if k in (1, 3, 4) else None)
                      for k, box in enumerate(RANDOM_BOXES)]),
    record(CN_PATH, [region([0.1, 0.1, 0.5, 0.5], "ignored")], is_cn=True),
    record(),
    record(bbox_info=[region([0.0, 0.0, 1.0, 1.0], "whole")], is_cn=False),
]
BAD = [  # (record, what the error says)
    (record(bbox_info=[region([0.1, 0.1, 0.5, 0.5], "ok"), region([0.6, 0.1, 0.2, 0.5], "swapped")]),
     "box 1: 'bbox' .* has x1 > x2"),
    (record(bbox_info=[region([8, 16, 24, 40], "pixels")]), "lies outside the image"),
    (record(bbox_info=[region([0.5, 0.2, 0.5, 0.4], "flat")]), "zero area"),
    (record(bbox_info=[region([1.0, 0.2, 1.005, 0.4], "clipped flat")]), "zero area"),
    (record(bbox_info=[region([float("nan"), 0.2, 0.5, 0.4], "nan")]), "non-finite"),
    (record(bbox_info=[region([0.1, 0.2, 0.5], "three")]), "at least 4 numbers"),
    (record(bbox_info=[region([0.1, 0.2, 0.5, 0.6], "nine", negs("nine", 9))]), "9 'short_expr_negs'"),
    (record(bbox_info=[region([0.1, 0.2, 0.5, 0.6], "blank", {**negs("b", 9), "neg_9": ""})]), "empty 'short_expr_negs'"),
    (record(bbox_info=[{**region([0.1, 0.2, 0.5, 0.6], "lost"), "flag_short_neg": 1}]), "not an object"),
    (record(bbox_info=[{**region([0.1, 0.2, 0.5, 0.6], "two"), "flag_short_neg": 2}]), "must be 0 or 1"),
    (record(bbox_info=[{**region([0.1, 0.2, 0.5, 0.6], "x"), "short_expr": " "}]), "box 0: empty 'short_expr'"),
    (record(bbox_info=[{k: v for k, v in region([0.1, 0.2, 0.5, 0.6], "x").items() if k != "long_expr"}]),
     "no 'long_expr' field"),
    (record(bbox_info=["not a box"]), "box 0: expected a JSON object"),
    ({k: v for k, v in record().items() if k != "bbox_info"}, "'bbox_info' must be a list"),
    (record(caption=""), "empty 'caption'"),
    (record(short_caption="  "), "empty 'short_caption'"),
    ({k: v for k, v in record().items() if k != "f_path"}, "no 'f_path' field"),
    (record("coyo_image_0/00000/missing.jpg"), "cannot read image"),
    (record("coyo_image_0/00000/cut.jpg"), "cannot read image"),
    ([1, 2, 3], "expected a JSON object"),
]


def expected_box(box):
    """Brute force: each coordinate clipped to [0, 1] on its own, in float32."""
    return [np.float32(min(max(float(v), 0.0), 1.0)) for v in box[:4]]


def painted_bounds(pixels, colour):
    """Pixel-edge xyxy around every pixel within 40 of `colour`, found by visiting each pixel."""
    xs, ys = [], []
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            if np.abs(pixels[y, x].astype(int) - colour).max() < 40:
                xs.append(x)
                ys.append(y)
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


@pytest.fixture
def roots(tmp_path):
    image_root, cn_root = tmp_path / "grit-12m", tmp_path / "cn-images"
    folder = image_root / "coyo_image_0" / "00000"
    folder.mkdir(parents=True)
    (cn_root / "cn").mkdir(parents=True)
    painted = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for (x1, y1, x2, y2), colour in PAINTED:
        painted[y1:y2, x1:x2] = colour
    Image.fromarray(painted).save(image_root / PAINTED_PATH, quality=100, subsampling=0)
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(image_root / PLAIN_PATH)
    Image.fromarray(np.full((24, 16), 200, np.uint8)).save(cn_root / CN_PATH)  # greyscale: converted to RGB
    good = (image_root / PLAIN_PATH).read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    return image_root, cn_root


@pytest.fixture
def annotations(tmp_path):
    path = tmp_path / "jsonfiles" / "part-0.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD + [item for item, _ in BAD]))
    return path


def test_fields_padding_and_masks(annotations, roots):
    source = FineHard(annotations, *roots)
    assert len(source) == len(GOOD) + len(BAD)
    first = source[0]
    assert set(first) == {"image", "caption", "long_caption", "is_chinese", "index", "normalized_boxes", "box_mask",
                          "image_size_hw", "region_short", "region_long", "region_negatives", "region_negative_mask"}
    assert first["caption"] == "a photo of a thing" and first["long_caption"] == f"long caption of {PAINTED_PATH}"
    assert first["is_chinese"] is False and first["index"] == 0
    assert first["normalized_boxes"].dtype == np.float32 and first["normalized_boxes"].shape == (4, 4)
    np.testing.assert_array_equal(first["box_mask"], [True, True, True, False])
    np.testing.assert_array_equal(first["normalized_boxes"][3], 0)
    assert first["region_short"] == ["box0 short", "box1 short", "box2 short", ""]
    assert first["region_long"] == ["box0 long", "box1 long", "box2 long", ""]
    assert first["region_negatives"][1] == [f"box1 wrong {k}" for k in range(10)]  # in key order
    assert all(first["region_negatives"][k] == [""] * 10 for k in (0, 2, 3))
    assert first["region_negative_mask"].shape == (4, 10) and first["region_negative_mask"].dtype == bool
    np.testing.assert_array_equal(first["region_negative_mask"].all(1), [False, True, False, False])
    np.testing.assert_array_equal(first["region_negative_mask"].any(1), [False, True, False, False])

    empty = source[3]
    assert not empty["box_mask"].any() and not empty["normalized_boxes"].any()
    assert empty["region_short"] == [""] * 4 and not empty["region_negative_mask"].any()
    assert source[4]["is_chinese"] is False and source[4]["caption"] == "a photo of a thing"
    np.testing.assert_array_equal(source[4]["normalized_boxes"][0], [0, 0, 1, 1])


def test_boxes_find_the_painted_pixels(annotations, roots):
    example = FineHard(annotations, *roots)[0]
    np.testing.assert_array_equal(example["image_size_hw"], [HEIGHT, WIDTH])
    assert example["image_size_hw"].dtype == np.int32
    pixels = np.asarray(example["image"])
    height, width = example["image_size_hw"]
    for box, (_, colour) in zip(example["normalized_boxes"], PAINTED):
        in_pixels = box * np.array([width, height, width, height])
        np.testing.assert_allclose(in_pixels, painted_bounds(pixels, np.array(colour)), atol=1e-4)


def test_random_boxes_clipped_and_truncated_to_max_boxes(annotations, roots):
    example = FineHard(annotations, *roots)[1]  # 6 boxes, the last one invalid
    assert min(min(b) for b in RANDOM_BOXES[:4]) < 0 and max(max(b) for b in RANDOM_BOXES[:4]) > 1
    assert example["box_mask"].all()
    np.testing.assert_array_equal(example["normalized_boxes"], [expected_box(b) for b in RANDOM_BOXES[:4]])
    assert (example["normalized_boxes"] >= 0).all() and (example["normalized_boxes"] <= 1).all()
    assert example["region_short"] == [f"r{k} short" for k in range(4)]
    np.testing.assert_array_equal(example["region_negative_mask"].all(1), [False, True, False, True])
    assert example["region_negatives"][3] == [f"r3 wrong {k}" for k in range(10)]

    wider = FineHard(annotations, *roots, max_boxes=8)
    with pytest.raises(RecordError, match="box 5: 'bbox' .* has x1 > x2") as err:
        wider[1]  # with room for all six, the invalid one is read and fails
    assert f"{annotations} record 1" in str(err.value)


def test_chinese_record_has_no_boxes_no_prefix_and_its_own_root(annotations, roots):
    example = FineHard(annotations, *roots)[2]
    assert example["is_chinese"] is True and example["caption"] == "a thing"
    assert example["image"].mode == "RGB" and example["image"].size == (16, 24)
    assert not example["box_mask"].any() and example["region_short"] == [""] * 4


def test_configured_counts(annotations, roots):
    source = FineHard(annotations, *roots, max_boxes=2, num_region_negatives=10, short_caption_prefix="")
    example = source[0]
    assert example["caption"] == "a thing" and example["box_mask"].tolist() == [True, True]
    assert len(example["region_negatives"]) == 2 and example["region_negative_mask"].shape == (2, 10)
    with pytest.raises(RecordError, match="10 'short_expr_negs', expected exactly 5"):
        FineHard(annotations, *roots, num_region_negatives=5)[0]
    with pytest.raises(ValueError):
        FineHard(annotations, *roots, max_boxes=0)


@pytest.mark.parametrize("bad", range(len(BAD)))
def test_bad_records_name_file_and_record(annotations, roots, bad):
    source = FineHard(annotations, *roots)
    index = len(GOOD) + bad
    guarded = RecordErrors("raise").guard(source.__getitem__, source.describe)
    with pytest.raises(RecordError, match=BAD[bad][1]) as err:
        guarded(index)
    assert f"{annotations} record {index}" in str(err.value)


def test_json_lines_and_malformed_line(tmp_path, roots):
    path = tmp_path / "part.jsonl"
    path.write_text(json.dumps(GOOD[3]) + "\n" + '{"f_path": "a.jpg", "caption": \n' + json.dumps(GOOD[0]) + "\n")
    source = FineHard(path, *roots)
    assert len(source) == 3 and source[2]["box_mask"].sum() == 3
    with pytest.raises(RecordError, match="malformed JSON") as err:
        source[1]
    assert f"{path} record 1 (line 2)" in str(err.value)


def test_stage1_caption_pairs(tmp_path, roots):
    path = tmp_path / "stage1.json"
    rows = [{"f_path": f"grit-20m/data-12m/{PLAIN_PATH}", "caption": "a long one", "short_caption": "short"},
            {"f_path": CN_PATH, "caption": "长描述", "short_caption": "短描述", "is_cn": 1},
            {"f_path": PLAIN_PATH, "caption": "a long one", "short_caption": ""}]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    source = FgclipCaptionPairs(path, *roots, path_prefix_to_strip="grit-20m/data-12m/")
    english, chinese = source[0], source[1]
    assert set(english) == {"image", "caption", "long_caption", "is_chinese", "index"}
    assert english["caption"] == "a photo of short" and english["long_caption"] == "a long one"
    assert english["image"].size == (30, 20) and english["is_chinese"] is False
    assert chinese["caption"] == "短描述" and chinese["long_caption"] == "长描述" and chinese["is_chinese"] is True
    with pytest.raises(RecordError, match="empty 'short_caption'") as err:
        source[2]
    assert f"{path} record 2" in str(err.value)
    with pytest.raises(RecordError, match="cannot read image"):
        FgclipCaptionPairs(path, *roots)[0]  # without stripping, the v1-era prefix points nowhere
