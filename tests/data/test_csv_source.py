"""CSV/TSV image-caption source and the raise/skip policy for bad records."""

import logging

import grain
import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError, RecordErrors
from vlalign_jax.data.sources.csv_captions import CsvImageText


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "img" / name)
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(tmp_path / "img" / "gray.png")
    good = (tmp_path / "img" / "b.jpg").read_bytes()
    (tmp_path / "img" / "cut.jpg").write_bytes(good[: len(good) // 3])
    rows = [("img/a.png", "a red circle"), ("img/b.jpg", "a blue square"), ("img/cut.jpg", "truncated"),
            ("img/missing.png", "no file"), ("img/c.png", "   "), ("img/gray.png", "a grey picture")]
    path = tmp_path / "train.tsv"
    path.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    return path


def test_reads_images_and_captions(table):
    source = CsvImageText(table)
    assert len(source) == 6
    first = source[0]
    assert first["caption"] == "a red circle" and first["image"].mode == "RGB" and first["image"].size == (30, 20)
    assert source[5]["image"].mode == "RGB"  # greyscale files are converted


@pytest.mark.parametrize("index,message", [(2, "cannot read image"), (3, "cannot read image"),
                                           (4, "empty caption")])
def test_bad_records_name_file_and_row(table, index, message):
    source = CsvImageText(table)
    guarded = RecordErrors("raise").guard(source.__getitem__, source.describe)
    with pytest.raises(RecordError, match=message) as err:
        guarded(index)
    assert str(table) in str(err.value) and f"row {index + 2}" in str(err.value)


def test_skip_counts_every_bad_record(table, caplog):
    source = CsvImageText(table)
    errors = RecordErrors("skip", max_skip_fraction=0.9)
    guarded = errors.guard(source.__getitem__, source.describe)
    dataset = grain.MapDataset.range(len(source)).map(guarded).to_iter_dataset().filter(lambda x: x is not None)
    with caplog.at_level(logging.WARNING):
        captions = [example["caption"] for example in dataset]
    assert captions == ["a red circle", "a blue square", "a grey picture"]
    assert errors.metrics() == {"data/records_seen": 6.0, "data/records_skipped": 3.0}
    assert caplog.text.count("skipping bad record") == 3


def test_too_many_bad_records_stop_the_run():
    errors = RecordErrors("skip", max_skip_fraction=0.05)
    guarded = errors.guard(lambda i: (_ for _ in ()).throw(OSError("broken")) if i % 10 == 0 else i, str)
    for i in range(200):
        guarded(i)
    with pytest.raises(RecordError, match="20 of 200 records were bad"):
        errors.check()
    RecordErrors("skip", max_skip_fraction=0.2).check()  # nothing read yet: no verdict


def test_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image,text\nx.png,hello\n")
    with pytest.raises(ValueError, match=r"the file has columns \['image', 'text'\]"):
        CsvImageText(path, separator=",")
    assert len(CsvImageText(path, image_column="image", caption_column="text", separator=",")) == 1


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="data.on_error"):
        RecordErrors("ignore")
