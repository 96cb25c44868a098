"""The on-disk image-caption recipes (`data.name = csv | webdataset`): open_clip's transforms and
tokenizer per example, random access into tar shards, and bad records raised or skipped in a real run."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo_runs import SMALL_MODEL
from vlalign_jax.data.image_text import image_text_data
from vlalign_jax.data.pipeline import train_iterator
from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.webdataset import WebDatasetImageText, decode_image_text, iterate_samples
from vlalign_jax.data.tokenizers import ClipTokenizer
from vlalign_jax.data.transforms import clip_eval_transform, clip_train_transform
from vlalign_jax.train.config import build_config

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["red", "green", "blue", "circle", "square", "tiny", "large", "photo"]


def _picture(rng) -> Image.Image:
    height, width = rng.integers(24, 60, size=2)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _caption(rng) -> str:
    return "a " + " ".join(rng.choice(WORDS, size=3))


@pytest.fixture
def table(tmp_path):
    """A TSV of 20 rows: 18 good pictures, one truncated JPEG (row 5), one missing file (row 12)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(20):
        name = f"img/{i:03d}.jpg"
        if i != 10:
            _picture(rng).save(tmp_path / name)
        rows.append((name, _caption(rng)))
    cut = (tmp_path / "img/003.jpg").read_bytes()
    (tmp_path / "img/003.jpg").write_bytes(cut[: len(cut) // 3])
    path = tmp_path / "train.tsv"
    path.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    return path


def _config(recipe: str, **overrides):
    pairs = {"model.name": "tiny", "model.dtype": "float32", "model.overrides": SMALL_MODEL,
             "train.batch_size": "8", "train.steps": "4", "train.progress_bar": "False", "train.eval_every": "0",
             "train.log_every": "1", "train.checkpoint_every": "4", "data.num_threads": "1",
             "data.num_workers": "0", "optim.warmup_steps": "1"}
    pairs.update({k: str(v) for k, v in overrides.items()})
    return build_config(ROOT / "configs/clip" / recipe, list(pairs.items()))


def test_csv_recipe_preprocesses_like_open_clip(table):
    config = _config("vit_b32_csv.py", **{"data.train_path": table, "data.heldout_path": table})
    data = image_text_data(config.data, 32, 24)
    tokenizer = ClipTokenizer(context_length=24)
    example = data.train[0]
    np.testing.assert_array_equal(data.eval_preprocess(example)["pixels"], clip_eval_transform(example["image"], 32))
    train = data.train_preprocess(example, np.random.default_rng(7))
    np.testing.assert_array_equal(train["pixels"], clip_train_transform(example["image"], np.random.default_rng(7), 32))
    np.testing.assert_array_equal(train["tokens"], tokenizer([example["caption"]])[0])

    good = [i for i in range(20) if i not in (3, 10)]
    source = type("Good", (), {"__len__": lambda s: len(good), "__getitem__": lambda s, i: data.train[good[i]]})()
    batch = next(train_iterator(source, data.train_preprocess, 6, seed=0))
    assert batch["pixels"].shape == (6, 32, 32, 3) and batch["pixels"].dtype == np.float32
    assert batch["tokens"].shape == (6, 24) and batch["tokens"].dtype == np.int32


def _write_shards(tmp_path, rng, count_per_shard=(3, 4)):
    names = []
    for shard, count in enumerate(count_per_shard):
        path = tmp_path / f"shard-{shard:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(count):
                buffer = io.BytesIO()
                _picture(rng).save(buffer, format="PNG" if i % 2 else "JPEG")
                members = [(f"s{shard}/{i:04d}.{'png' if i % 2 else 'jpg'}", buffer.getvalue()),
                           (f"s{shard}/{i:04d}.txt", _caption(rng).encode())]
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        names.append(path)
    return str(tmp_path / "shard-{000..001}.tar")


def test_webdataset_random_access_reads_what_the_stream_reads(tmp_path):
    pattern = _write_shards(tmp_path, np.random.default_rng(1))
    indexed = WebDatasetImageText(pattern)
    streamed = [decode_image_text(s) for s in iterate_samples(pattern)]
    assert len(indexed) == len(streamed) == 7
    for i in np.random.default_rng(2).permutation(7):  # any order: reads go by offset
        got, want = indexed[int(i)], streamed[int(i)]
        assert (got["key"], got["caption"]) == (want["key"], want["caption"])
        np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
    assert indexed.describe(4) == f"{tmp_path / 'shard-001.tar'} sample s1/0001"


def test_webdataset_recipe_builds_train_and_heldout(tmp_path):
    pattern = _write_shards(tmp_path, np.random.default_rng(3))
    config = _config("vit_b32_webdataset.py", **{"data.train_shards": pattern, "data.heldout_shards": pattern})
    data = image_text_data(config.data, 32, 24)
    assert len(data.train) == len(data.heldout) == 7
    assert data.eval_preprocess(data.heldout[5])["pixels"].shape == (32, 32, 3)


def test_training_stops_on_a_bad_record_naming_table_and_row(table, tmp_path):
    from vlalign_jax.train.loop import train

    config = _config("vit_b32_csv.py", **{"data.train_path": table, "data.on_error": "raise"})
    with pytest.raises(RecordError, match=r"train.tsv row (5|12) \(img/0(03|10).jpg\): cannot read image"):
        train(config, tmp_path / "run")
