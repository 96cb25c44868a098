"""Zero-shot classification: metrics against brute-force numpy, the template-ensemble classifier
against a brute-force average of a fake deterministic encoder, the three dataset layouts on tiny
files written here in their public formats, end-to-end accuracy where the answer is known, and the
OpenAI ImageNet metadata files."""

import csv
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval.zeroshot import (
    _class_keys,
    classification_metrics,
    evaluate_zeroshot,
    label_ranks,
    markdown_table,
    zero_shot_classifier,
)
from vlalign_jax.eval.zeroshot_data import (
    csv_dataset,
    image_folder,
    imagenet_classnames,
    load_templates,
)

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


# ---------------------------------------------------------------- metrics

def _brute_metrics(scores, labels, ks):
    """Top-k by a Python sort of (-score, class index); per-class top-1 by np.argmax (first max)."""
    n, c = scores.shape
    out = {}
    for k in ks:
        hits = [labels[i] in sorted(range(c), key=lambda j: (-scores[i, j], j))[:k] for i in range(n)]
        out[f"top{k}"] = float(np.mean(hits))
    pred = np.argmax(scores, axis=1)
    per_class = [float(np.mean(pred[labels == j] == j)) if np.any(labels == j) else None for j in range(c)]
    out["per_class"] = per_class
    out["mean_per_class"] = float(np.mean([a for a in per_class if a is not None]))
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_metrics_match_brute_force(tied):
    rng = np.random.default_rng(int(tied))
    n, c = 240, 7
    # Small integer scores make ties common, so the tie rule is checked too.
    scores = rng.integers(0, 4, (n, c)).astype(np.float32) if tied else rng.normal(size=(n, c))
    labels = rng.integers(0, c - 1, n)  # the last class has no example
    ks = (1, 2, 5, 7, 10)  # 10 > 7 classes: clamped
    got = classification_metrics(scores, labels, ks)
    want = _brute_metrics(scores, labels, ks)
    for k in ks:
        assert got[f"top{k}"] == pytest.approx(want[f"top{k}"], abs=1e-12), k
    assert got["top7"] == got["top10"] == 1.0
    assert got["per_class"][c - 1] is None and got["per_class_examples"][c - 1] == 0
    assert got["per_class"] == pytest.approx(want["per_class"], abs=1e-12)
    assert got["mean_per_class"] == pytest.approx(want["mean_per_class"], abs=1e-12)
    assert got["per_class_examples"] == np.bincount(labels, minlength=c).tolist()
    assert got["num_examples"] == n and got["num_classes"] == c
    # The rank is the label's position in a stable descending sort.
    stable = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(label_ranks(scores, labels), np.argmax(stable == labels[:, None], axis=1))


def test_ties_go_to_the_lower_class_index_and_bad_inputs_raise():
    scores = np.zeros((3, 4))
    got = classification_metrics(scores, np.array([0, 1, 3]), ks=(1, 2))
    assert got["top1"] == pytest.approx(1 / 3) and got["top2"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(ValueError, match="k must be >= 1"):
        classification_metrics(np.zeros((1, 2)), np.array([0]), ks=(0,))


# ---------------------------------------------------------------- classifier

def hashed_texts(texts, dim=16):
    """A deterministic fake text encoder; rows are scaled by the text length, so not normalised."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).normal(size=dim) * (1 + len(text)))
    return np.stack(rows).astype(np.float32)


def test_classifier_is_the_renormalised_mean_of_normalised_prompt_embeddings():
    classnames = ["cat", "traffic light", "{odd} name", "dog"]
    templates = ["a photo of a {}.", "itap of the {}.", "{} in art", "a bad {} sketch"]
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return hashed_texts(texts)

    got = zero_shot_classifier(encode, classnames, templates, batch_size=5)
    want = []
    for name in classnames:
        embeds = np.stack([hashed_texts([t.format(name)])[0].astype(np.float64) for t in templates])
        mean = (embeds / np.linalg.norm(embeds, axis=1, keepdims=True)).mean(axis=0)
        want.append(mean / np.linalg.norm(mean))
    # float32 output of float64 sums: 1e-6 covers the rounding.
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6)
    assert got.shape == (4, 16) and got.dtype == np.float32
    assert [len(c) for c in calls] == [5, 5, 5, 1]
    assert calls[0][:2] == ["a photo of a cat.", "itap of the cat."] and "{odd} name in art" in calls[2]


def test_templates_must_hold_one_slot():
    with pytest.raises(ValueError, match="exactly once"):
        zero_shot_classifier(hashed_texts, ["cat"], ["a {} and a {}"])
    with pytest.raises(ValueError, match="exactly once"):
        load_templates(["no slot"])
    with pytest.raises(ValueError, match="non-finite or all-zero"):
        zero_shot_classifier(lambda texts: np.zeros((len(texts), 3)), ["cat"], ["a {}"])


# ---------------------------------------------------------------- metadata

def test_openai_imagenet_metadata():
    names = imagenet_classnames()
    full, simple = load_templates("imagenet"), load_templates("imagenet_simple")
    assert len(names) == 1000 and len(full) == 80 and len(simple) == 7
    assert load_templates(None) == full
    assert all(t.count("{}") == 1 and t == t.strip() for t in full)
    assert all(n == n.strip() and n for n in names)
    assert (names[0], names[21], names[269], names[517], names[999]) == (
        "tench", "kite (bird of prey)", "grey wolf", "construction crane", "toilet paper")
    assert (full[0], full[39], full[79]) == ("a bad photo of a {}.", "a photo of a {}.", "a tattoo of the {}.")
    assert simple == ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                      "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
    assert set(simple) <= set(full) and len(set(full)) == 80
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert repeated == ["missile", "sunglasses"]  # as published; per-class keys tell them apart
    keys = _class_keys(names)
    assert len(set(keys)) == 1000 and keys[657] == "missile [657]" and keys[0] == "tench"


# ---------------------------------------------------------------- datasets

def _save(path, color, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), color).save(path, fmt)


def _truncated_jpeg(path):
    _save(path, (9, 99, 199), "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_image_folder_follows_imagefolder_order(tmp_path):
    root = tmp_path / "tiny"
    for rel in ["dog/b.png", "dog/a.JPG", "cat/x.png", "cat/sub/y.jpeg", "ant/z.webp", "cat/a.bmp"]:
        _save(root / rel, (1, 2, 3), "WEBP" if rel.endswith("webp") else "BMP" if rel.endswith("bmp") else
              "JPEG" if rel.lower().endswith(("jpg", "jpeg")) else "PNG")
    (root / "cat" / "notes.txt").write_text("not an image")
    data = image_folder(root)
    assert data.name == "tiny" and data.class_names == ("ant", "cat", "dog") and len(data) == 6
    assert [(os.path.relpath(p, root), y) for p, y in data.source.samples] == [
        ("ant/z.webp", 0), ("cat/a.bmp", 1), ("cat/x.png", 1), ("cat/sub/y.jpeg", 1), ("dog/a.JPG", 2),
        ("dog/b.png", 2)]
    record = data.source[3]
    assert record["label"] == 1 and record["index"] == 3 and record["image"].mode == "RGB"
    assert image_folder(root, class_names=["an ant", "a cat", "a dog"]).class_names == ("an ant", "a cat", "a dog")
    with pytest.raises(ValueError, match="3 classes, but 2 class names"):
        image_folder(root, class_names=["a", "b"])
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\['empty'\]"):
        image_folder(root)


def test_image_folder_matches_torchvision(tmp_path):
    folder = pytest.importorskip("torchvision.datasets.folder")
    for rel in ["b/2.png", "b/10.png", "a/x/1.jpg", "a/0.PNG", "C/3.png"]:
        _save(tmp_path / rel, (5, 5, 5), "JPEG" if rel.endswith("jpg") else "PNG")
    theirs = folder.ImageFolder(str(tmp_path))
    ours = image_folder(tmp_path)
    assert list(ours.class_names) == theirs.classes
    assert ours.source.samples == theirs.samples


def _write_table(path, rows, header=("filepath", "label"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def test_csv_with_index_and_name_labels(tmp_path):
    for name, color in COLORS.items():
        _save(tmp_path / "img" / f"{name}.png", color)
    _write_table(tmp_path / "index.csv", [["img/red.png", 2], ["img/blue.png", "0"], ["img/green.png", 1]])
    data = csv_dataset(tmp_path / "index.csv", class_names=["blue", "green", "red"])
    assert data.name == "index" and len(data) == 3
    assert [data.source[i]["label"] for i in range(3)] == [2, 0, 1]
    assert data.source[0]["image"].getpixel((0, 0)) == COLORS["red"]

    # Names, a TSV with other column names, paths relative to an image root.
    _write_table(tmp_path / "names.tsv", [["red.png", "red"], ["blue.png", "blue"]],
                 header=("path", "class"), delimiter="\t")
    data = csv_dataset(tmp_path / "names.tsv", image_root=tmp_path / "img", image_column="path",
                       label_column="class", separator="\t")
    assert data.class_names == ("blue", "red") and [data.source[i]["label"] for i in range(2)] == [1, 0]
    data = csv_dataset(tmp_path / "names.tsv", tmp_path / "img", "path", "class", "\t",
                       class_names=["green", "red", "blue"], label_type="name")
    assert [data.source[i]["label"] for i in range(2)] == [1, 2]


def test_csv_errors_name_the_row(tmp_path):
    _save(tmp_path / "ok.png", (0, 0, 0))
    _truncated_jpeg(tmp_path / "cut.jpg")
    _write_table(tmp_path / "t.csv", [["ok.png", 0], ["cut.jpg", 1], ["ok.png", 5]])
    with pytest.raises(RecordError, match=r"t.csv row 4 \(ok.png\): label '5' is not a class index"):
        csv_dataset(tmp_path / "t.csv", class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names must be given"):
        csv_dataset(tmp_path / "t.csv")
    data = csv_dataset(tmp_path / "t.csv", class_names=["a", "b", "c", "d", "e", "f"])
    with pytest.raises(RecordError, match=r"row 3 \(cut.jpg\): cannot read image"):
        data.source[1]
    with pytest.raises(ValueError, match=r"no column \['image'\].*\['filepath', 'label'\]"):
        csv_dataset(tmp_path / "t.csv", image_column="image", class_names=["a"])
    with pytest.raises(RecordError, match="row 2 .*'zebra' is not one of the 2 class names"):
        _write_table(tmp_path / "n.csv", [["ok.png", "zebra"]])
        csv_dataset(tmp_path / "n.csv", class_names=["cat", "dog"])
    _write_table(tmp_path / "amb.csv", [["ok.png", "1"]])
    with pytest.raises(ValueError, match="label_type='index' or 'name'"):
        csv_dataset(tmp_path / "amb.csv", class_names=["0", "1"])
    assert csv_dataset(tmp_path / "amb.csv", class_names=["1", "0"], label_type="name").source.labels == [0]


# ---------------------------------------------------------------- end to end

def color_images(images):
    """A fake image encoder: the mean colour (not normalised)."""
    return np.stack([np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0) for image in images])


def color_texts(texts):
    """A fake text encoder: the colour named in the prompt, plus a small template-dependent part."""
    rows = []
    for text in texts:
        color = next(name for name in COLORS if name in text)
        noise = hashed_texts([text.replace(color, "")], dim=3)[0]
        rows.append(np.array(COLORS[color], np.float64) / 255 + 0.02 * noise / np.linalg.norm(noise))
    return np.stack(rows)


def _color_tree(root):
    """blue/ 2 blue; green/ 2 green and 1 blue (which the model gets wrong); red/ 3 red."""
    files = {"blue": ["blue", "blue"], "green": ["green", "green", "blue"], "red": ["red", "red", "red"]}
    for folder, colors in files.items():
        for n, color in enumerate(colors):
            _save(root / folder / f"{n}.png", COLORS[color])


def test_evaluate_end_to_end_known_answer(tmp_path):
    _color_tree(tmp_path / "colors")
    image_calls, text_calls = [], []

    def encode_images(images):
        image_calls.append(len(images))
        return color_images(images)

    def encode_texts(texts):
        text_calls.append(len(texts))
        return color_texts(texts)

    (tmp_path / "t.txt").write_text("a photo of a {}.\nthe {} thing\n")
    results = evaluate_zeroshot(image_folder(tmp_path / "colors"), encode_images, encode_texts,
                                templates=tmp_path / "t.txt", batch_size=3, text_batch_size=4, num_workers=2)
    assert image_calls == [3, 3, 2] and text_calls == [4, 2]  # streamed in batches
    assert results["top1"] == pytest.approx(7 / 8) and results["top5"] == 1.0  # top-5 clamped to 3 classes
    assert results["per_class"] == pytest.approx({"blue": 1.0, "green": 2 / 3, "red": 1.0})
    assert results["mean_per_class"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert (results["num_examples"], results["num_classes"], results["templates"], results["skipped"]) == (8, 3, 2, 0)
    assert results["dataset"] == "colors"
    json.dumps(results)
    simple = evaluate_zeroshot(image_folder(tmp_path / "colors"), color_images, color_texts,
                               templates="imagenet_simple", ks=(1,))
    assert simple["templates"] == 7 and simple["top1"] == pytest.approx(7 / 8) and "top5" not in simple

    table = markdown_table([results, {**simple, "dataset": "colors (7)", "top5": None}])
    lines = table.splitlines()
    assert lines[0] == ("| zero-shot | top-1 (%) | top-5 (%) | mean per class (%) | examples | classes | "
                        "templates | skipped |")
    assert lines[2] == "| colors | 87.5 | 100.0 | 88.9 | 8 | 3 | 2 | 0 |"
    assert lines[3] == "| colors (7) | 87.5 | n/a | 88.9 | 8 | 3 | 7 | 0 |"


def test_bad_image_raises_naming_the_file_or_is_skipped(tmp_path):
    _color_tree(tmp_path / "colors")
    (tmp_path / "colors" / "green" / "zz_bad.png").write_bytes(b"not a png at all")
    data = image_folder(tmp_path / "colors")
    with pytest.raises(RecordError, match=r"green/zz_bad.png \(record 5\): cannot read image"):
        evaluate_zeroshot(data, color_images, color_texts, templates=["a {}"], batch_size=4)
    results = evaluate_zeroshot(data, color_images, color_texts, templates=["a {}"], batch_size=4, on_error="skip")
    assert results["skipped"] == 1 and "zz_bad.png" in results["skipped_records"][0]
    assert results["num_examples"] == 8 and results["top1"] == pytest.approx(7 / 8)
    for path in (tmp_path / "colors").rglob("*.png"):
        path.write_bytes(b"")
    with pytest.raises(RecordError, match="no example could be scored"):
        evaluate_zeroshot(data, color_images, color_texts, templates=["a {}"], on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        evaluate_zeroshot(data, color_images, color_texts, on_error="ignore")


# ---------------------------------------------------------------- TFDS

def test_tfds_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    from vlalign_jax.eval.zeroshot_data import tfds_dataset

    names = ["blue", "green", "red"]
    labels = [0, 1, 2, 2, 1, 0, 2]

    class TinyColors(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["n0001", "n0002", "n0003"]),
                "plain": tfds.features.Scalar(np.int64),
            }))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i, label in enumerate(labels):  # PIL images: TFDS encodes numpy arrays with TensorFlow
                yield i, {"image": Image.new("RGB", (4, 3), COLORS[names[label]]), "label": label, "plain": label}

    TinyColors(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    data = tfds_dataset("tiny_colors", "test", tmp_path)
    assert data.class_names == ("n0001", "n0002", "n0003") and len(data) == 7 and data.name == "tiny_colors:test"
    data = tfds_dataset("tiny_colors", "test", tmp_path, class_names=names)
    results = evaluate_zeroshot(data, color_images, color_texts, templates=["a {} photo"], batch_size=3)
    assert results["top1"] == 1.0 and results["per_class"] == {"blue": 1.0, "green": 1.0, "red": 1.0}
    assert results["num_examples"] == 7
    with pytest.raises(ValueError, match="not a ClassLabel"):
        tfds_dataset("tiny_colors", "test", tmp_path, label_key="plain")
    plain = tfds_dataset("tiny_colors", "test", tmp_path, label_key="plain", class_names=names)
    assert sorted(plain.source[i]["label"] for i in range(7)) == sorted(labels)
