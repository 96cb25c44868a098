"""DeGLA JSON source: the released JSON-array layout, JSON lines, COCO file naming and bad records."""

import json

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError, RecordErrors
from vlalign_jax.data.sources.degla_json import DeglaJson
from vlalign_jax.data.sources.json_records import JsonRecordFiles


def negatives(tag, count=4):
    return [f"{tag} negative {k}" for k in range(count)]


GOOD = [
    {"image_id": 9, "original": "a cat on a mat", "enhanced": negatives("cat")},
    {"image_id": 123456, "original": "two dogs", "enhanced": negatives("dogs", 5)},  # 5th is not used
    {"image_id": "25", "original": "a kite", "enhanced": negatives("kite")},  # id as a string of digits
]
BAD = [  # (record, what the error says)
    ({"image_id": 9, "original": "too few", "enhanced": negatives("few", 3)}, "3 negatives"),
    ({"image_id": 9, "original": "blank negative", "enhanced": ["a", " ", "c", "d"]}, "empty negative 'enhanced'\\[1\\]"),
    ({"image_id": 9, "original": "not a string", "enhanced": ["a", "b", 7, "d"]}, "'enhanced'\\[2\\] is int"),
    ({"image_id": 9, "original": "", "enhanced": negatives("x")}, "empty 'original'"),
    ({"image_id": 9, "enhanced": negatives("x")}, "no 'original' field"),
    ({"image_id": 9, "original": "no list", "enhanced": "a b c d"}, "'enhanced' must be a list"),
    ({"original": "no id", "enhanced": negatives("x")}, "'image_id' must be a non-negative integer"),
    ({"image_id": -3, "original": "negative id", "enhanced": negatives("x")}, "'image_id' must be"),
    ({"image_id": 404, "original": "missing image", "enhanced": negatives("x")}, "cannot read image"),
    ({"image_id": 77, "original": "corrupt image", "enhanced": negatives("x")}, "cannot read image"),
    (["not", "an", "object"], "expected a JSON object"),
]
SIZES = {9: (40, 30), 123456: (24, 36), 25: (16, 16)}  # (width, height)


@pytest.fixture
def coco_root(tmp_path):
    """COCO root with train2014/COCO_train2014_%012d.jpg images, each a distinct flat colour."""
    folder = tmp_path / "coco" / "train2014"
    folder.mkdir(parents=True)
    for image_id, (width, height) in SIZES.items():
        colour = np.full((height, width, 3), (image_id * 37 % 256, 90, 200), np.uint8)
        Image.fromarray(colour).save(folder / f"COCO_train2014_{image_id:012d}.jpg", quality=95)
    good = (folder / "COCO_train2014_000000000009.jpg").read_bytes()
    (folder / "COCO_train2014_000000000077.jpg").write_bytes(good[: len(good) // 3])
    return tmp_path / "coco"


@pytest.fixture
def array_file(tmp_path):
    path = tmp_path / "DeGLA.json"
    path.write_text(json.dumps(GOOD + [record for record, _ in BAD], indent=1))
    return path


def test_reads_released_array_layout(array_file, coco_root):
    source = DeglaJson(array_file, coco_root)
    assert len(source) == len(GOOD) + len(BAD)
    for index, record in enumerate(GOOD):
        example = source[index]
        assert set(example) == {"image", "caption", "negative_captions", "index"}
        assert example["index"] == index and example["caption"] == record["original"]
        assert example["negative_captions"] == record["enhanced"][:4]
        image_id = int(record["image_id"])
        assert example["image"].mode == "RGB" and example["image"].size == SIZES[image_id]
        red = np.asarray(example["image"])[..., 0].astype(int)
        assert np.abs(red - image_id * 37 % 256).max() <= 2  # the right file: colours tell them apart
    assert source.image_path(9) == coco_root / "train2014" / "COCO_train2014_000000000009.jpg"


def test_num_negatives_and_template(array_file, coco_root, tmp_path):
    two = DeglaJson(array_file, coco_root, num_negatives=2)
    assert two[1]["negative_captions"] == ["dogs negative 0", "dogs negative 1"]
    assert two[len(GOOD)]["negative_captions"] == ["few negative 0", "few negative 1"]  # 3 >= 2: fine now
    flat = DeglaJson(array_file, coco_root / "train2014", image_path_template="COCO_train2014_{image_id:012d}.jpg")
    assert flat[0]["image"].size == SIZES[9]
    with pytest.raises(ValueError):
        DeglaJson(array_file, coco_root, num_negatives=0)


@pytest.mark.parametrize("bad", range(len(BAD)))
def test_bad_records_name_file_and_record(array_file, coco_root, bad):
    source = DeglaJson(array_file, coco_root)
    index = len(GOOD) + bad
    guarded = RecordErrors("raise").guard(source.__getitem__, source.describe)
    with pytest.raises(RecordError, match=BAD[bad][1]) as err:
        guarded(index)
    assert f"{array_file} record {index}" in str(err.value)


def test_json_lines_layout_and_malformed_line(tmp_path, coco_root):
    path = tmp_path / "DeGLA.jsonl"
    lines = [json.dumps(GOOD[0]), "", json.dumps(GOOD[1]), '{"image_id": 9, "original": "cut', json.dumps(GOOD[2])]
    path.write_text("\n".join(lines) + "\n")
    source = DeglaJson(path, coco_root)
    assert len(source) == 4  # the blank line is not a record
    assert [source[i]["caption"] for i in (0, 1, 3)] == ["a cat on a mat", "two dogs", "a kite"]
    assert source.describe(3) == f"{path} record 3 (line 5)"
    with pytest.raises(RecordError, match="malformed JSON") as err:
        source[2]
    assert f"{path} record 2 (line 4)" in str(err.value)


def test_unicode_line_separator_inside_a_string_stays_one_record(tmp_path, coco_root):
    path = tmp_path / "sep.jsonl"
    record = dict(GOOD[0], original="a cat\u2028on a mat")
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert DeglaJson(path, coco_root)[0]["caption"] == "a cat\u2028on a mat"


def test_malformed_array_fails_naming_file_and_line(tmp_path, coco_root):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"image_id": 9, "original": "a", "enhanced": []},\n {"image_id": 9,,}\n]')
    with pytest.raises(RecordError, match="malformed JSON array at line 3") as err:
        DeglaJson(path, coco_root)
    assert str(path) in str(err.value)


def test_skip_policy_keeps_the_good_records(array_file, coco_root):
    source = DeglaJson(array_file, coco_root)
    errors = RecordErrors("skip", max_skip_fraction=1.0)
    guarded = errors.guard(source.__getitem__, source.describe)
    kept = [example for example in map(guarded, range(len(source))) if example is not None]
    assert [example["index"] for example in kept] == list(range(len(GOOD)))
    assert errors.metrics()["data/records_skipped"] == len(BAD)


def test_several_files_keep_their_own_record_numbers(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps([{"k": 2}, {"k": 3}]))
    (tmp_path / "a.json").write_text(json.dumps([{"k": 0}, {"k": 1}]))
    (tmp_path / "c.jsonl").write_text('{"k": 4}\n')
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'c.jsonl'}\n{tmp_path / 'a.json'}\n")
    records = JsonRecordFiles(tmp_path)  # a folder: *.json sorted, then *.jsonl
    assert [records.record(i)["k"] for i in range(len(records))] == [0, 1, 2, 3, 4]
    assert records.describe(3) == f"{tmp_path / 'b.json'} record 1"
    assert records.describe(4) == f"{tmp_path / 'c.jsonl'} record 0 (line 1)"
    listed = JsonRecordFiles(tmp_path / "list.txt")
    assert [listed.record(i)["k"] for i in range(len(listed))] == [4, 0, 1]
    with pytest.raises(FileNotFoundError):
        JsonRecordFiles(tmp_path / "nothing.json")
