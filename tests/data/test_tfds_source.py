"""TfdsSource: a tiny TFDS dataset is built in array_record format here (no TensorFlow needed: images
are handed to TFDS as PIL images, which it encodes with PIL) and read back exactly by name."""

import pickle
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from vlalign_jax.data.sources.tfds_source import TfdsSource  # noqa: E402

CLASS_NAMES = ["cat", "dog", "traffic light"]
NUM_TRAIN, NUM_TEST = 7, 4


def _examples(split: str, count: int) -> dict[str, dict]:
    """Examples keyed by a unique caption: array_record shards are shuffled, so order is not kept."""
    rng = np.random.default_rng(len(split))
    return {f"{split} photo {i}: 一只猫 café": {
        "image": rng.integers(0, 256, (5 + i, 9 - i % 3, 3), dtype=np.uint8),
        "gray": rng.integers(0, 256, (4, 6 + i, 1), dtype=np.uint8),
        "label": i % len(CLASS_NAMES),
    } for i in range(count)}


class TinyZeroShot(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "gray": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "caption": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train", NUM_TRAIN),
                "test": self._generate_examples("test", NUM_TEST)}

    def _generate_examples(self, split, count):
        for caption, ex in _examples(split, count).items():
            # PIL images, not arrays: TFDS encodes numpy arrays with TensorFlow.
            yield caption, {"image": Image.fromarray(ex["image"]), "gray": Image.fromarray(ex["gray"][..., 0]),
                            "label": ex["label"], "caption": caption}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    TinyZeroShot(data_dir=str(path), file_format="array_record").download_and_prepare()
    return path


@pytest.mark.parametrize("split,count", [("train", NUM_TRAIN), ("test", NUM_TEST)])
def test_reads_images_labels_and_captions(data_dir, split, count):
    source = TfdsSource("tiny_zero_shot", split, data_dir, caption_key="caption")
    assert len(source) == count and source.class_names == CLASS_NAMES
    expected = _examples(split, count)
    seen = set()
    for index in range(len(source)):
        record = source[index]
        want = expected[record["caption"]]
        assert record["index"] == index and record["label"] == want["label"]
        assert record["image"].mode == "RGB"
        np.testing.assert_array_equal(np.asarray(record["image"]), want["image"])
        seen.add(record["caption"])
    assert seen == set(expected)


def test_grayscale_caption_only_and_slices(data_dir):
    source = TfdsSource("tiny_zero_shot", "test[1:3]", data_dir, image_key="gray", label_key=None,
                        caption_key="caption")
    assert len(source) == 2 and source.class_names is None
    record = source[1]
    assert set(record) == {"image", "caption", "index"} and record["image"].mode == "RGB"
    gray = _examples("test", NUM_TEST)[record["caption"]]["gray"]
    np.testing.assert_array_equal(np.asarray(record["image"]), np.repeat(gray, 3, axis=-1))


def test_errors_and_pickling(data_dir, monkeypatch):
    source = TfdsSource("tiny_zero_shot", "test", data_dir)
    assert source.describe(2) == f"TFDS tiny_zero_shot/1.0.0 split 'test' record 2 in {data_dir}"
    with pytest.raises(IndexError, match="record 4"):
        source[NUM_TEST]
    with pytest.raises(KeyError, match="'caption', 'gray', 'image', 'label'"):
        TfdsSource("tiny_zero_shot", "test", data_dir, label_key="class")
    with pytest.raises(ValueError, match="validation"):
        TfdsSource("tiny_zero_shot", "validation", data_dir)
    clone = pickle.loads(pickle.dumps(source))  # grain worker processes get a pickled copy
    assert clone[0]["label"] == source[0]["label"]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install .vlalign-jax\[tfds\]"):
        TfdsSource("tiny_zero_shot", "test", data_dir)
