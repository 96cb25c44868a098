"""CLIP-VG/TransVG split files: each dataset's tuple layout and box format, image paths, the JSON-lines
round trip, and bad records named by file and record (reference: `datasets/data_loader.py`)."""

import argparse
import json
import sys

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError, RecordErrors
from vlalign_jax.data.sources.grounding_splits import (
    GroundingSplit,
    add_convert_splits_arguments,
    convert_splits,
    image_dir,
    layout,
    run_convert_splits,
    split_path,
)

ATTRIBUTES = [("r1", ["guy"]), ("r2", ["none"]), ("r8", ["right", "flopping", "around"])]
PLACEHOLDER = "useless placeholder"
# Per dataset: entries exactly as the reference's split files store them, and the expected
# (image file, x1y1x2y2 box, lowercased expression, released-code truncated box) per entry.
CASES = {
    "unc": ([("COCO_train2014_000000000839.jpg", "482127.pth", [3.58, 6.03, 20.29, 15.79],
              "Guy flopping around on the right", ATTRIBUTES)],
            [("COCO_train2014_000000000839.jpg", [3.58, 6.03, 23.87, 21.82], "guy flopping around on the right",
              [3, 6, 23, 21])]),
    "unc+": ([("COCO_train2014_000000000839.jpg", "1.pth", [0.0, 0.0, 40.0, 30.0], "whole picture", [])],
             [("COCO_train2014_000000000839.jpg", [0, 0, 40, 30], "whole picture", [0, 0, 40, 30])]),
    "gref": ([("COCO_train2014_000000000839.jpg", "2.pth", [10.9, 2.5, 5.9, 3.9], "a small thing", [])],
             [("COCO_train2014_000000000839.jpg", [10.9, 2.5, 16.8, 6.4], "a small thing", [10, 2, 15, 5])]),
    "gref_umd": ([("COCO_train2014_000000000839.jpg", "3.pth", [1, 2, 3, 4], "tiny", [])],
                 [("COCO_train2014_000000000839.jpg", [1, 2, 4, 6], "tiny", [1, 2, 4, 6])]),
    "referit": ([("8756.jpg", "8756_1.pth", [2, 3, 30, 20], "sky above the hill", []),
                 ("8756.jpg", "8756_2.pth", [0.5, 1.7, 12.2, 9.9], "rock", [])],
                [("8756.jpg", [2, 3, 30, 20], "sky above the hill", [2, 3, 30, 20]),
                 ("8756.jpg", [0.5, 1.7, 12.2, 9.9], "rock", [0, 1, 12, 9])]),
    "flickr": ([("1000092795.jpg", [1, 2, 30, 25], "Two young guys")],
               [("1000092795.jpg", [1, 2, 30, 25], "two young guys", [1, 2, 30, 25])]),
}
# Unsupervised pseudo labels (`{ds}_train_pseudo.pth` after `post_process.py`): lists, not tuples.
PSEUDO = {
    "unc": [["COCO_train2014_000000000839.jpg", PLACEHOLDER, [4.0, 5.0, 10.5, 8.25], "boy left gray pants",
             PLACEHOLDER]],
    "referit": [["8756.jpg", PLACEHOLDER, [4.0, 5.0, 14.5, 13.25], "red car", PLACEHOLDER]],
    "flickr": [["1000092795.jpg", [4.0, 5.0, 14.5, 13.25], "man riding horse"]],
}
IMAGE_SIZES = {"unc": (40, 30), "referit": (32, 24), "flickr": (36, 28)}  # (width, height)

def _data_root(tmp_path):
    """Tiny images at the reference's per-dataset folders, plus a corrupt one."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for dataset, name in [("unc", "COCO_train2014_000000000839.jpg"), ("referit", "8756.jpg"),
                          ("flickr", "1000092795.jpg")]:
        folder = image_dir(root, dataset)
        folder.mkdir(parents=True, exist_ok=True)
        w, h = IMAGE_SIZES[dataset]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
        good = (folder / name).read_bytes()
        (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).save(image_dir(root, "unc") / "gray.png")
    return root


@pytest.fixture
def data_root(tmp_path):
    return _data_root(tmp_path)


def _write_split(tmp_path, dataset, split, entries):
    torch = pytest.importorskip("torch")
    path = split_path(tmp_path / "splits", dataset, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(entries, path)
    return path


def test_reference_layout_paths(tmp_path):
    assert split_path("s", "refcoco+", "testA") == split_path("s", "unc+", "testA")
    assert str(split_path("s", "gref_umd", "test")).endswith("gref_umd/gref_umd_test.pth")
    assert str(image_dir("d", "refcocog_umd")).endswith("other/images/mscoco/images/train2014")
    assert str(image_dir("d", "referit")).endswith("referit/images")
    assert str(image_dir("d", "flickr30k")).endswith("Flickr30k/flickr30k-images")
    assert (layout("unc").box_format, layout("referit").box_format) == ("xywh", "xyxy")
    assert (layout("unc+").tuple_length, layout("flickr").tuple_length) == (5, 3)
    with pytest.raises(ValueError, match="has no split 'testA'"):
        split_path("s", "gref", "testA")
    with pytest.raises(ValueError, match="unknown grounding dataset 'refcocog'"):
        layout("refcocog")


@pytest.mark.parametrize("dataset", sorted(CASES))
@pytest.mark.parametrize("released_code", [False, True])
def test_each_dataset_layout(tmp_path, data_root, dataset, released_code):
    entries, expected = CASES[dataset]
    path = _write_split(tmp_path, dataset, "val", entries)
    source = GroundingSplit(path, image_dir(data_root, dataset), dataset, released_code=released_code)
    assert len(source) == len(expected)
    size = IMAGE_SIZES["unc" if dataset.startswith(("unc", "gref")) else dataset]
    for index, (image_file, box, expression, truncated) in enumerate(expected):
        item = source[index]
        assert item["image"].mode == "RGB" and item["image"].size == size
        assert source.image_path(index) == image_dir(data_root, dataset) / image_file
        assert (item["image_file"], item["expression"], item["dataset"], item["index"]) == (
            image_file, expression, dataset, index)
        if released_code:  # int() of each stored number, then x2 = x + w: exact small integers
            np.testing.assert_array_equal(item["box"], truncated)
        else:  # float32 of the float64 x + w; the literal above may differ from it in the last bit
            np.testing.assert_allclose(item["box"], box, rtol=1e-6)
        assert item["box"].dtype == np.float32


@pytest.mark.parametrize("dataset", sorted(PSEUDO))
def test_pseudo_label_files(tmp_path, data_root, dataset):
    path = _write_split(tmp_path, dataset, "train_pseudo", PSEUDO[dataset])
    item = GroundingSplit(path, image_dir(data_root, dataset), dataset)[0]
    # COCO-family pseudo boxes are xywh (post_process.py converts them); ReferIt/Flickr keep x1y1x2y2.
    np.testing.assert_allclose(item["box"], [4.0, 5.0, 14.5, 13.25])


def test_prompt_and_case(tmp_path, data_root):
    path = _write_split(tmp_path, "flickr", "test", CASES["flickr"][0])
    source = GroundingSplit(path, image_dir(data_root, "flickr"), "flickr", prompt_template="A photo of {pseudo_query}")
    assert source[0]["expression"] == "a photo of two young guys"
    source = GroundingSplit(path, image_dir(data_root, "flickr"), "flickr", lowercase=False)
    assert source[0]["expression"] == "Two young guys"


def test_convert_round_trip_gives_identical_records(tmp_path, data_root):
    for dataset in sorted(CASES):
        src = _write_split(tmp_path, dataset, "val", CASES[dataset][0])
        pseudo = _write_split(tmp_path, dataset, "train_pseudo", CASES[dataset][0])
        written = convert_splits([src, pseudo], tmp_path / "jsonl" / dataset, dataset)
        assert [p.name for p in written] == [f"{dataset}_val.jsonl", f"{dataset}_train_pseudo.jsonl"]
        first = json.loads(written[0].read_text().splitlines()[0])
        assert set(first) >= {"image_file", "box", "expression", "dataset"} and first["dataset"] == dataset
        for released_code in (False, True):
            a = GroundingSplit(src, image_dir(data_root, dataset), dataset, released_code=released_code)
            b = GroundingSplit(written[0], image_dir(data_root, dataset), released_code=released_code)
            assert len(a) == len(b)
            for i in range(len(a)):
                assert a.record(i) == b.record(i)
                x, y = a[i], b[i]
                assert x.keys() == y.keys() and np.array_equal(np.asarray(x.pop("image")), np.asarray(y.pop("image")))
                np.testing.assert_array_equal(x.pop("box"), y.pop("box"))
                assert x == y
    # Hand-written JSON lines need only the four core fields and may have blank lines.
    hand = tmp_path / "hand.jsonl"
    hand.write_text('\n{"image_file": "8756.jpg", "box": [1, 2, 3.5, 4], "expression": "X", "dataset": "referit"}\n')
    item = GroundingSplit(hand, image_dir(data_root, "referit"), "referitgame")[0]
    assert item["expression"] == "x" and item["box"].tolist() == [1, 2, 3.5, 4]


def test_convert_refuses_overwrite_and_writes_nothing_on_error(tmp_path):
    good = _write_split(tmp_path, "unc", "val", CASES["unc"][0])
    bad = _write_split(tmp_path, "unc", "testA", CASES["unc"][0] + [("x.jpg", [1, 2, 3, 4], "three fields")])
    out = tmp_path / "out"
    with pytest.raises(RecordError, match=r"unc_testA\.pth record 1: .*5-tuples.*found a 3-tuple"):
        convert_splits([good, bad], out, "refcoco")
    assert not out.exists() or not any(out.iterdir())
    convert_splits([good], out, "refcoco")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_splits([good], out, "refcoco")
    assert convert_splits([good], out, "refcoco", overwrite=True) == [out / "unc_val.jsonl"]
    assert [p.name for p in out.iterdir()] == ["unc_val.jsonl"]  # no temporary files left


def test_cli_arguments(tmp_path, capsys):
    src = _write_split(tmp_path, "flickr", "test", CASES["flickr"][0])
    parser = argparse.ArgumentParser()
    add_convert_splits_arguments(parser)
    args = parser.parse_args([str(src), "--dataset", "flickr30k", "--out", str(tmp_path / "o")])
    assert run_convert_splits(args) == 0
    assert (tmp_path / "o" / "flickr_test.jsonl").exists() and "(1 records)" in capsys.readouterr().out


def test_vlalign_data_convert_splits_command(tmp_path, capsys):
    from vlalign_jax.cli import main

    src = _write_split(tmp_path, "flickr", "test", CASES["flickr"][0])
    assert main(["data", "convert-splits", str(src), "--dataset", "flickr30k", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "flickr_test.jsonl").exists()
    assert main(["data", "convert-splits", str(src), "--dataset", "flickr30k", "--out", str(tmp_path / "o")]) == 2
    assert "overwrite" in capsys.readouterr().err  # an existing output is refused, not replaced


def _bad_records(tmp_path, data_root):
    """(source, index, expected message) for each kind of bad record, in both formats."""
    coco = "COCO_train2014_000000000839.jpg"
    entries = [
        (coco, "a", [1, 1, 5, 5], "fine", []),  # 0: good
        ("missing.jpg", "a", [1, 1, 5, 5], "no such file", []),  # 1
        ("cut.jpg", "a", [1, 1, 5, 5], "truncated file", []),  # 2
        (coco, "a", [1, 1, 5, 5], "   ", []),  # 3
        (coco, "a", [30, 20, 15, 5], "past the right edge", []),  # 4: x2 = 45 > 40 + 1
        (coco, "a", [-3, 1, 5, 5], "starts left of the image", []),  # 5
        (coco, "a", [3, 4, 0, 5], "zero width", []),  # 6
        (coco, "a", [1, 1, "5", 5], "box of strings", []),  # 7
        (coco, [1, 1, 5, 5], "three fields"),  # 8
        ("gray.png", "a", [1, 1, 5, 5], "greyscale is fine", []),  # 9
    ]
    messages = {1: "cannot read image", 2: "cannot read image", 3: "empty expression", 4: "lies outside",
                5: "lies outside", 6: "has no area", 7: "must be 4 numbers", 8: "found a 3-tuple"}
    pth = _write_split(tmp_path, "unc", "val", entries)
    jsonl = tmp_path / "bad.jsonl"
    good = {"image_file": coco, "box": [1, 1, 6, 6], "expression": "fine", "dataset": "unc"}
    lines = [json.dumps(good), '{"image_file": "x.jpg", "box": [1, 2,', json.dumps({**good, "box": [1, 1, 1, 6]}),
             json.dumps({**good, "expression": ""}), json.dumps({**good, "image_file": "cut.jpg"}),
             json.dumps({**good, "dataset": "flickr"}), json.dumps({k: v for k, v in good.items() if k != "box"})]
    jsonl.write_text("\n".join(lines) + "\n")
    root = image_dir(data_root, "unc")
    cases = [(GroundingSplit(pth, root, "unc"), i, f"record {i}", m) for i, m in messages.items()]
    jsonl_messages = {1: "malformed JSON", 2: "has no area", 3: "empty expression", 4: "cannot read image",
                      5: "opened as 'unc'", 6: r"missing field\(s\) \['box'\]"}
    source = GroundingSplit(jsonl, root, "unc")
    cases += [(source, i, f"line {i + 1}", m) for i, m in jsonl_messages.items()]
    return cases, pth, jsonl


def test_every_bad_record_names_file_and_record(tmp_path, data_root):
    cases, pth, jsonl = _bad_records(tmp_path, data_root)
    for source, index, where, message in cases:
        guarded = RecordErrors("raise").guard(source.__getitem__, source.describe)
        with pytest.raises(RecordError, match=message) as err:
            guarded(index)
        assert str(source.path) in str(err.value) and where in str(err.value), str(err.value)
    source = GroundingSplit(pth, image_dir(data_root, "unc"), "unc")
    assert source[0]["box"].tolist() == [1, 1, 6, 6] and source[9]["image"].mode == "RGB"
    errors = RecordErrors("skip", max_skip_fraction=1.0)
    guarded = errors.guard(source.__getitem__, source.describe)
    assert [r["index"] for r in map(guarded, range(len(source))) if r is not None] == [0, 9]


def test_bad_files(tmp_path):
    torch = pytest.importorskip("torch")
    not_a_list = tmp_path / "dict.pth"
    torch.save({"a": 1}, not_a_list)
    with pytest.raises(ValueError, match=r"dict\.pth: expected a list"):
        GroundingSplit(not_a_list, tmp_path, "unc")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pth: not a readable split file"):
        GroundingSplit(garbage, tmp_path, "unc")
    with pytest.raises(ValueError, match="needs its dataset"):
        GroundingSplit(not_a_list, tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        GroundingSplit(tmp_path / "nothing.pth", tmp_path, "unc")


def test_numpy_boxes_need_allow_pickle(tmp_path, data_root):
    entries = [("1000092795.jpg", np.array([1.5, 2.0, 30.0, 25.0]), "a dog")]
    path = _write_split(tmp_path, "flickr", "val", entries)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        GroundingSplit(path, image_dir(data_root, "flickr"), "flickr")
    item = GroundingSplit(path, image_dir(data_root, "flickr"), "flickr", allow_pickle=True)[0]
    assert item["box"].tolist() == [1.5, 2.0, 30.0, 25.0]


def test_without_torch_the_error_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "unc_val.pth"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'vlalign-jax\[torch\]'") as err:
        GroundingSplit(path, tmp_path, "unc")
    assert "vlalign data convert-splits" in str(err.value)
    with pytest.raises(ImportError, match=r"vlalign-jax\[torch\]"):
        convert_splits([path], tmp_path / "out", "unc")
    # JSON lines need no torch.
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(json.dumps({"image_file": "a.jpg", "box": [0, 0, 1, 1], "expression": "e", "dataset": "unc"}))
    assert GroundingSplit(jsonl, tmp_path).record(0)["image_file"] == "a.jpg"
