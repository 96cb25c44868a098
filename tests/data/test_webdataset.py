"""webdataset tar shards: brace expansion, grouping members into samples, decoding, bad samples."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.webdataset import decode_image_text, expand_shards, iterate_samples, shard_paths


def _image_bytes(fmt, seed):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    _write_shard(tmp_path / "s-000.tar", [
        ("a/000.jpg", _image_bytes("JPEG", 0)), ("a/000.txt", b"a red circle"),
        ("a/001.png", _image_bytes("PNG", 1)), ("a/001.json", json.dumps({"caption": "a blue square"}).encode()),
    ])
    broken = _image_bytes("JPEG", 2)
    _write_shard(tmp_path / "s-001.tar", [
        ("b/002.jpg", broken[: len(broken) // 3]), ("b/002.txt", b"cut short"),
        ("b/003.png", _image_bytes("PNG", 3)),
        ("b/004.webp", _image_bytes("WEBP", 4)), ("b/004.txt", b"a green cross"),
    ])
    return tmp_path


def test_brace_expansion():
    assert expand_shards("d/{008..011}.tar") == ["d/008.tar", "d/009.tar", "d/010.tar", "d/011.tar"]
    assert expand_shards("{train,val}-{0..1}.tar") == ["train-0.tar", "train-1.tar", "val-0.tar", "val-1.tar"]
    assert expand_shards("plain.tar") == ["plain.tar"]


def test_members_group_into_samples_in_order(shards):
    samples = list(iterate_samples(str(shards / "s-{000..001}.tar")))
    assert [s["__key__"] for s in samples] == ["a/000", "a/001", "b/002", "b/003", "b/004"]
    assert set(samples[1]) == {"__key__", "__url__", "png", "json"}
    assert samples[3]["__url__"].endswith("s-001.tar")


def test_decode_and_bad_samples(shards):
    samples = list(iterate_samples(str(shards / "s-{000..001}.tar")))
    good = decode_image_text(samples[0])
    assert good["caption"] == "a red circle" and good["image"].size == (16, 12) and good["image"].mode == "RGB"
    assert decode_image_text(samples[1])["caption"] == "a blue square"
    assert decode_image_text(samples[4])["caption"] == "a green cross"
    with pytest.raises(RecordError, match=r"s-001.tar sample b/002: cannot decode jpg"):
        decode_image_text(samples[2])
    with pytest.raises(RecordError, match=r"sample b/003: no caption"):
        decode_image_text(samples[3])


def test_missing_and_corrupt_shards(shards):
    with pytest.raises(FileNotFoundError, match="1 of 3 shards"):
        shard_paths(str(shards / "s-{000..002}.tar"))
    (shards / "bad.tar").write_bytes(b"this is not a tar file at all" * 20)
    with pytest.raises(RecordError, match="bad.tar: cannot read tar shard"):
        list(iterate_samples(str(shards / "bad.tar")))
