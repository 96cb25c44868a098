"""Fine-grained evaluations: readers of the public FG-OVD / ShareGPT4V / DCI / COCO-instances files,
scoring, and FG-CLIP region encoders end to end.

Tiny files in each public format are written with solid-colour images (PNG bytes, whatever the name
says). The toy model embeds a region or image as its mean colour and a text as the sum of the colours
it names, so every result follows from the captions: naming the region's colour wins, naming another
loses, two captions naming the same colours tie (wrong). Every number is also recomputed by a
brute-force loop over single items. The end-to-end test saves a tiny random FG-CLIP 1 as a Hugging
Face folder and checks `region_encoders` against the model applied by hand with a numpy RoIAlign.
"""

import argparse
import json
import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

from vlalign_jax import converters
from vlalign_jax.data.records import RecordError
from vlalign_jax.data.tokenizers import ClipTokenizer
from vlalign_jax.data.transforms import to_normalized_array
from vlalign_jax.eval import fine_grained
from vlalign_jax.eval import fine_grained_formats as formats
from vlalign_jax.eval.fine_grained import (
    box_classification,
    fgovd_accuracy,
    long_retrieval,
    markdown_table,
    score_fgovd,
)
from vlalign_jax.eval.region_encoders import load_region_model, region_encoders
from vlalign_jax.models.clip import CLIP, ClipConfig, TextConfig, VisionConfig
from vlalign_jax.models.clip import abstract_params as clip_abstract_params
from vlalign_jax.models.fgclip import FGCLIP, abstract_params, fgclip_config_from_clip

COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}


# ----------------------------------------------------------------------------- toy model

class Toy:
    """Mean colour for regions/images, sum of named colours for texts; records the walks asked for."""

    def __init__(self):
        self.walks = []

    @staticmethod
    def encode_regions(image, boxes):
        pixels = np.asarray(image, np.float64) / 255
        out = np.zeros((len(boxes), 3))
        for n, (x1, y1, x2, y2) in enumerate(np.rint(boxes).astype(int)):
            if x2 > x1 and y2 > y1:
                out[n] = pixels[y1:y2, x1:x2].reshape(-1, 3).mean(0)
        return out

    def encode_texts(self, texts, walk):
        self.walks.append(walk)
        words = [t.lower().replace(".", " ").split() for t in texts]
        return np.array([np.sum([COLOURS[w] for w in ws if w in COLOURS] or [(0, 0, 0)], axis=0)
                         for ws in words], np.float64)

    @staticmethod
    def encode_images(images):
        return np.stack([np.asarray(i, np.float64).reshape(-1, 3).mean(0) / 255 for i in images])


def cosines(matrix, vector):
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector)
    return np.where(norms == 0, 0.0, matrix @ vector / np.where(norms == 0, 1, norms))


# ----------------------------------------------------------------------------- files

def save_image(path, colours, size=16):
    """Vertical bands, one per colour, each size x size pixels."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGB", (size * len(colours), size))
    for k, colour in enumerate(colours):
        image.paste(tuple(255 * c for c in COLOURS[colour]), (k * size, 0, (k + 1) * size, size))
    image.save(path, format="PNG")


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


# (image, bbox xywh, positive, negatives, correct by construction); image 1 is red|blue, 2 green
FGOVD_HARD = [("1", [0, 0, 16, 16], "A red ball", ["a blue ball", "a green ball"], True),
              ("1", [16, 0, 16, 16], "a blue cup", ["a red cup", "the blue mug"], False),  # tie
              ("2", [2, 2, 10, 12], "a red car", ["a green car", "a blue car"], False)]
FGOVD_TRIVIAL = [("2", [0, 0, 16, 16], "a green car", ["a yellow car"], True),  # cos 0.71 < 1
                 ("1", [8, 0, 16, 16], "a red bowl", ["a blue bowl", "a yellow bowl"], False),  # red/blue tie
                 ("1", [4, 4, 0, 8], "a red box", ["a green box"], False)]  # no area: zero vector, all tie


def make_coco_images(root):
    save_image(os.path.join(root, "val2017", "000000000001.jpg"), ["red", "blue"])
    save_image(os.path.join(root, "val2017", "000000000002.jpg"), ["green"])


def fgovd_record(image, box, positive, negatives):
    return {"img_path": f"val2017/00000000000{image}.jpg", "bbox": box, "pos_expression": [positive],
            "neg_expression": negatives}


def make_fgovd(root):
    make_coco_images(os.path.join(root, "coco"))
    write_jsonl(os.path.join(root, "fgovd", "1_attributes_llava.jsonl"),
                [fgovd_record(*case[:4]) for case in FGOVD_HARD])
    write_jsonl(os.path.join(root, "fgovd", "shuffle_negatives_llava.jsonl"),
                [fgovd_record(*case[:4]) for case in FGOVD_TRIVIAL])
    return os.path.join(root, "fgovd"), os.path.join(root, "coco")


def brute_force_fgovd(items):
    out = []
    for item in items:
        image = Image.open(item.image).convert("RGB")
        region = Toy.encode_regions(image, fine_grained.xywh_to_xyxy([item.box_xywh]))[0]
        scores = cosines(Toy().encode_texts([item.positive, *item.negatives], "box"), region)
        out.append(bool(scores[0] > scores[1:].max()))
    return np.array(out)


# ----------------------------------------------------------------------------- FG-OVD

def test_fgovd_accuracy_per_file(tmp_path):
    data, images = make_fgovd(str(tmp_path))
    toy = Toy()
    results = fgovd_accuracy(data, images, toy.encode_regions, toy.encode_texts, num_workers=2)
    assert list(results["subsets"]) == ["hard", "trivial"]
    assert set(toy.walks) == {"box"}
    for subset, cases in (("hard", FGOVD_HARD), ("trivial", FGOVD_TRIVIAL)):
        entry = results["subsets"][subset]
        expected = np.array([case[-1] for case in cases])
        items = formats.read_fgovd(entry["file"], images)
        np.testing.assert_array_equal(brute_force_fgovd(items), expected)
        assert entry["accuracy"] == expected.mean() and entry["correct"] == expected.sum()
        assert entry["items"] == len(cases)
    assert results["average"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert results["subsets"]["hard"]["negatives_min"] == 2 and results["subsets"]["trivial"]["negatives_min"] == 1
    json.dumps(results)
    table = markdown_table(results)
    assert "| FG-OVD | hard | trivial | average |" in table and "33.3" in table

    only = fgovd_accuracy(data, images, toy.encode_regions, toy.encode_texts, subsets=["trivial"])
    assert list(only["subsets"]) == ["trivial"]
    single = fgovd_accuracy(os.path.join(data, "1_attributes_llava.jsonl"), images, toy.encode_regions,
                            toy.encode_texts)
    assert single["subsets"]["hard"] == results["subsets"]["hard"]


def test_fgovd_file_names_and_field_forms(tmp_path):
    assert [formats.fgovd_subset_name(n) for n in ("1_attributes_llava.jsonl", "h_attributes_llava.jsonl",
                                                   "2_attributes_llava.jsonl", "m_attributes_llava.jsonl",
                                                   "3_attributes_llava.jsonl", "e_attributes_llava.jsonl",
                                                   "shuffle_negatives_llava.jsonl", "color_llava.jsonl")] == \
        ["hard", "hard", "medium", "medium", "easy", "easy", "trivial", "color"]
    make_coco_images(str(tmp_path / "coco"))
    record = fgovd_record("1", [1.5, 2, 3, 4.25], "a red ball", ["a blue ball"])
    record["pos_expression"] = "a red ball"  # a bare string is read too
    record["img_path"] = "/val2017/000000000001.jpg"  # the reference concatenates root + path
    for name in ("e_attributes_llava.jsonl", "3_attributes_llava.jsonl"):
        write_jsonl(str(tmp_path / "fgovd" / name), [record, ""])  # blank lines are skipped
    with pytest.raises(ValueError, match="two FG-OVD files for subset 'easy'"):
        formats.find_fgovd_files(str(tmp_path / "fgovd"))
    items = formats.read_fgovd(str(tmp_path / "fgovd" / "e_attributes_llava.jsonl"), str(tmp_path / "coco"))
    assert items == [formats.FgovdItem(str(tmp_path / "coco" / "val2017" / "000000000001.jpg"),
                                       (1.5, 2.0, 3.0, 4.25), "a red ball", ["a blue ball"], "easy")]
    with pytest.raises(FileNotFoundError, match=r"subsets \['hard'\]"):
        formats.find_fgovd_files([str(tmp_path / "fgovd" / "e_attributes_llava.jsonl")], ["hard"])


@pytest.mark.parametrize("field, value, message", [
    ("neg_expression", None, "field 'neg_expression' must be a non-empty list"),
    ("neg_expression", ["fine", ""], "field 'neg_expression' must be a non-empty list"),
    ("pos_expression", ["one", "two"], "exactly one caption, got 2"),
    ("bbox", [1, 2, 3], r"four finite numbers \[x, y, w, h\]"),
    ("bbox", [1, 2, -3, 4], "negative width or height"),
    ("img_path", "val2017/missing.jpg", "image 'val2017/missing.jpg' not found"),
    ("img_path", 7, "field 'img_path' must be a non-empty string"),
])
def test_fgovd_malformed_records_name_file_and_line(tmp_path, field, value, message):
    make_coco_images(str(tmp_path / "coco"))
    bad = fgovd_record("2", [0, 0, 4, 4], "a green car", ["a red car"])
    bad[field] = value
    path = str(tmp_path / "fgovd" / "2_attributes_llava.jsonl")
    write_jsonl(path, [fgovd_record("2", [0, 0, 4, 4], "a green car", ["a red car"]), bad])
    with pytest.raises(RecordError, match=message) as error:
        formats.read_fgovd(path, str(tmp_path / "coco"))
    assert f"{path} line 2" in str(error.value)


def test_fgovd_invalid_json_line(tmp_path):
    path = str(tmp_path / "h_attributes_llava.jsonl")
    write_jsonl(path, ['{"img_path": "x.jpg",'])
    with pytest.raises(RecordError, match=f"{path} line 1: not valid JSON"):
        formats.read_fgovd(path, str(tmp_path))


# ----------------------------------------------------------------------------- long retrieval

# (image colour, caption): item 2's caption names red, so image 0 ties two "red" captions (i2t miss) and
# image 2 matches no caption better than 0 (miss); caption 2 finds the red image (t2i miss).
LONG_CASES = [("red", "A long description of a red scene."), ("green", "green everywhere you look"),
              ("blue", "this one is red again"), ("yellow", "a yellow field")]
LONG_EXPECTED = {"i2t_R@1": 0.5, "t2i_R@1": 0.75}


def sharegpt4v_record(index, image, caption):
    return {"id": f"sa_{index}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nDescribe this image in detail."},
                              {"from": "gpt", "value": caption}]}


def brute_force_retrieval(items):
    images = Toy.encode_images([Image.open(i.image).convert("RGB") for i in items])
    texts = Toy().encode_texts([i.caption for i in items], "long")
    sims = np.array([[cosines(texts[j:j + 1], images[i])[0] for j in range(len(items))] for i in range(len(items))])
    hits = lambda m: np.mean([all(m[i, i] > m[i, j] for j in range(len(items)) if j != i) for i in range(len(items))])
    return {"i2t_R@1": hits(sims), "t2i_R@1": hits(sims.T)}


def test_sharegpt4v_retrieval(tmp_path):
    root = tmp_path / "images"
    records = []
    for n, (colour, caption) in enumerate(LONG_CASES):
        relative = f"sam/images/sa_{n}.jpg"
        # Half the images at their relative path, half only by base name (the reference's lookup).
        save_image(str(root / relative) if n % 2 else str(root / f"sa_{n}.jpg"), [colour])
        records.append(sharegpt4v_record(n, relative, caption))
    records.append({"id": "beyond the limit", "conversations": []})  # never read with limit=4
    write_json(str(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json"), records)
    items = formats.read_sharegpt4v(str(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json"), str(root),
                                    limit=4)
    assert [i.caption for i in items] == [c for _, c in LONG_CASES]
    assert items[0].image == str(root / "sa_0.jpg") and items[1].image == str(root / "sam/images/sa_1.jpg")
    toy = Toy()
    results = long_retrieval(items, toy.encode_images, toy.encode_texts, batch_size=3, name="sharegpt4v")
    assert set(toy.walks) == {"long"}
    assert {k: results[k] for k in LONG_EXPECTED} == LONG_EXPECTED == brute_force_retrieval(items)
    assert results["items"] == 4 and results["task"] == "sharegpt4v"
    assert "| sharegpt4v retrieval | i2t_R@1 | t2i_R@1 | items |" in markdown_table(results)
    with pytest.raises(RecordError, match=r"record 4: field 'conversations' must be a list of at least two"):
        formats.read_sharegpt4v(str(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json"), str(root),
                                limit=None)


def test_dci_retrieval_and_errors(tmp_path):
    annotations, photos = tmp_path / "densely_captioned_images" / "annotations", tmp_path / "photos"
    for n, (colour, caption) in enumerate(LONG_CASES):
        save_image(str(photos / f"sa_{n}.jpg"), [colour])
        write_json(str(annotations / f"{chr(ord('d') - n)}.json"),  # names sort in reverse item order
                   {"image": f"sa_{n}.jpg", "short_caption": "short", "mask_data": {}, "mask_keys": [],
                    "extra_caption": caption})
    items = formats.read_dci(str(annotations), str(photos))
    assert [i.caption for i in items] == [c for _, c in reversed(LONG_CASES)]
    toy = Toy()
    results = long_retrieval(items, toy.encode_images, toy.encode_texts, name="dci")
    assert {k: results[k] for k in LONG_EXPECTED} == LONG_EXPECTED == brute_force_retrieval(items)
    write_json(str(annotations / "e.json"), {"image": "sa_0.jpg", "short_caption": "no extra"})
    with pytest.raises(RecordError, match=f"{annotations / 'e.json'}: field 'extra_caption'"):
        formats.read_dci(str(annotations), str(photos))
    write_json(str(annotations / "e.json"), {"image": "sa_9.jpg", "extra_caption": "x"})
    with pytest.raises(RecordError, match=f"{annotations / 'e.json'}: image 'sa_9.jpg' not found"):
        formats.read_dci(str(annotations), str(photos))


# ----------------------------------------------------------------------------- box classification

def coco_instances():
    """Classes in file order blue, red, green, yellow (ids not sorted); 5 boxes, right by construction:
    red box, blue box; not: a green box labelled yellow (rank 1), a red|blue box labelled red (tie with
    blue, rank 1), a zero box (crowd) labelled green (all tie, rank 3)."""
    return {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 32, "height": 16},
                   {"id": 2, "file_name": "000000000002.jpg", "width": 16, "height": 16},
                   {"id": 3, "file_name": "not_annotated.jpg", "width": 16, "height": 16}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 11, "bbox": [0, 0, 16, 16], "iscrowd": 0, "area": 256},
            {"id": 11, "image_id": 1, "category_id": 13, "bbox": [18, 2, 12, 12], "iscrowd": 0, "area": 144},
            {"id": 12, "image_id": 2, "category_id": 14, "bbox": [0, 0, 16, 16], "iscrowd": 0, "area": 256},
            {"id": 13, "image_id": 1, "category_id": 11, "bbox": [8, 0, 16, 16], "iscrowd": 0, "area": 256},
            {"id": 14, "image_id": 1, "category_id": 12, "bbox": [4, 4, 0, 0], "iscrowd": 1, "area": 0}],
        "categories": [{"id": 13, "name": "blue", "supercategory": "colour"},
                       {"id": 11, "name": "red", "supercategory": "colour"},
                       {"id": 12, "name": "green", "supercategory": "colour"},
                       {"id": 14, "name": "yellow", "supercategory": "colour"}],
    }


def test_box_classification(tmp_path):
    make_coco_images(str(tmp_path / "coco"))
    path = str(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    write_json(path, coco_instances())
    data = formats.read_coco_instances(path, str(tmp_path / "coco" / "val2017"))
    assert data.class_names == ["blue", "red", "green", "yellow"] and data.category_ids == [13, 11, 12, 14]
    assert data.num_boxes == 5 and len(data.images) == 2
    toy = Toy()
    results = box_classification(data, toy.encode_regions, toy.encode_texts, num_workers=2)
    assert set(toy.walks) == {"box"}
    assert (results["top1_accuracy"], results["top5_accuracy"], results["boxes"]) == (2 / 5, 1.0, 5)
    assert results["per_class"]["red"] == {"top1_accuracy": 0.5, "boxes": 2}
    assert results["templates"] == ["a photo of a {}."]

    # Brute force: each box alone against the template prompts.
    classes = Toy().encode_texts([f"a photo of a {n}." for n in data.class_names], "box")
    ranks = []
    for image in data.images:
        pil = Image.open(image.image).convert("RGB")
        for box, label in zip(fine_grained.xywh_to_xyxy(image.boxes_xywh), image.labels):
            scores = cosines(classes, Toy.encode_regions(pil, box[None])[0])
            ranks.append(sum(scores[c] >= scores[label] for c in range(len(classes)) if c != label))
    assert results["top1_accuracy"] == np.mean(np.array(ranks) < 1)
    assert results["top5_accuracy"] == np.mean(np.array(ranks) < 5)
    assert "| box classification | top1 | top5 | boxes | classes |" in markdown_table(results)

    no_crowd = formats.read_coco_instances(path, str(tmp_path / "coco" / "val2017"), include_crowd=False)
    results = box_classification(no_crowd, toy.encode_regions, toy.encode_texts, ks=(1,),
                                 templates=("a photo of a {}.", "a {} thing"))
    assert results["top1_accuracy"] == 2 / 4 and results["boxes"] == 4
    with pytest.raises(ValueError, match="templates must each hold"):
        box_classification(no_crowd, toy.encode_regions, toy.encode_texts, templates=("no slot",))


@pytest.mark.parametrize("edit, where, message", [
    (lambda d: d["annotations"][2].update(category_id=99), "annotations[2]", "category_id 99 is not in"),
    (lambda d: d["annotations"][1].update(image_id=7), "annotations[1]", "image_id 7 is not in"),
    (lambda d: d["annotations"][3].update(bbox=[0, 0, "16", 16]), "annotations[3]", "four finite numbers"),
    (lambda d: d["categories"][2].pop("name"), "categories[2]", "field 'name' must be a non-empty string"),
    (lambda d: d["images"][1].update(id=1), "images[1]", "duplicate image id 1"),
    (lambda d: d["images"][0].update(file_name="gone.jpg"), "images[0]", "image 'gone.jpg' not found"),
])
def test_coco_instances_errors_name_file_and_record(tmp_path, edit, where, message):
    make_coco_images(str(tmp_path / "coco"))
    data = coco_instances()
    edit(data)
    path = str(tmp_path / "instances.json")
    write_json(path, data)
    with pytest.raises(RecordError, match=message) as error:
        formats.read_coco_instances(path, str(tmp_path / "coco" / "val2017"))
    assert f"{path} {where}" in str(error.value)


def test_encoder_outputs_are_checked(tmp_path):
    data, images = make_fgovd(str(tmp_path))
    items = formats.read_fgovd(os.path.join(data, "1_attributes_llava.jsonl"), images)
    with pytest.raises(ValueError, match=r"encode_texts returned shape \(1, 3\) for"):
        score_fgovd(items, Toy.encode_regions, lambda texts, walk: np.ones((1, 3)))
    with pytest.raises(ValueError, match="encode_regions returned a non-finite"):
        score_fgovd(items, lambda image, boxes: np.full((len(boxes), 3), np.nan), Toy().encode_texts)


# ----------------------------------------------------------------------------- FG-CLIP end to end

def tiny_fgclip_config():
    return fgclip_config_from_clip(ClipConfig(32, VisionConfig(32, 8, 64, 2, 2, 128),
                                              TextConfig(width=64, layers=2, heads=2, mlp_dim=128)))


def make_tiny_fgclip(path):
    """A random FG-CLIP 1 (32 px, 8 px patches: a 4x4 dense map) saved as a Hugging Face folder."""
    config = tiny_fgclip_config()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), abstract_params(config))
    converters.save(FGCLIP(config), params, path, "fgclip")
    return path


@pytest.fixture(scope="module")
def tiny_fgclip(tmp_path_factory):
    return make_tiny_fgclip(tmp_path_factory.mktemp("fgclip") / "fg-clip-tiny")


def roi_align_1x1(fmap, box):
    """torchvision roi_align(output 1x1, spatial_scale 1, sampling_ratio -1, aligned=True) of one
    box (x1, y1, x2, y2) in feature cells of fmap [H, W, D], written out loop by loop."""
    height, width = fmap.shape[:2]
    x1, y1, x2, y2 = (float(v) - 0.5 for v in box)
    grid_h, grid_w = math.ceil(y2 - y1), math.ceil(x2 - x1)

    def bilinear(y, x):
        if y < -1 or y > height or x < -1 or x > width:
            return np.zeros(fmap.shape[-1])
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= height - 1:
            y0 = y1_ = height - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= width - 1:
            x0 = x1_ = width - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1_]
                + ly * (1 - lx) * fmap[y1_, x0] + ly * lx * fmap[y1_, x1_])

    total = np.zeros(fmap.shape[-1])
    for iy in range(grid_h):
        for ix in range(grid_w):
            total += bilinear(y1 + (iy + 0.5) * (y2 - y1) / grid_h, x1 + (ix + 0.5) * (x2 - x1) / grid_w)
    return total / max(grid_h * grid_w, 1)


def test_fgclip_region_encoders_end_to_end(tmp_path, tiny_fgclip):
    data, images = make_fgovd(str(tmp_path))
    model, params = load_region_model(tiny_fgclip)
    assert isinstance(model, FGCLIP)
    encoders = region_encoders(model, params, batch_size=8)
    results = fgovd_accuracy(data, images, encoders.encode_regions, encoders.encode_texts)

    # By hand, item by item: square bicubic resize, CLIP normalisation, the dense map, a numpy
    # RoIAlign of the box in feature cells, 77-token short-walk text.
    tokenizer = ClipTokenizer()
    jitted = {m: jax.jit(lambda p, *a, m=m: model.apply({"params": p}, *a, method=m), static_argnums=(2,))
              for m in ("encode_text",)}
    jitted.update({m: jax.jit(lambda p, x, m=m: model.apply({"params": p}, x, method=m))
                   for m in ("encode_image_dense", "encode_image")})
    apply = lambda method, *a: np.asarray(jitted[method](params, *a), np.float64)
    side = model.config.vision.image_size // model.config.vision.patch_size
    for subset, entry in results["subsets"].items():
        correct = []
        for item in formats.read_fgovd(entry["file"], images):
            image = Image.open(item.image).convert("RGB")
            pixels = to_normalized_array(image.resize((32, 32), Image.Resampling.BICUBIC))[None]
            fmap = apply("encode_image_dense", pixels)[0]
            x, y, w, h = item.box_xywh
            cells = np.array([x / image.width, y / image.height, (x + w) / image.width, (y + h) / image.height]) * side
            region = roi_align_1x1(fmap, cells)
            ours = encoders.encode_regions(image, np.array([[x, y, x + w, y + h]]))[0]
            # fp32 model vs float64 pooling of the same fp32 map: rounding only
            if np.linalg.norm(region) == 0:
                np.testing.assert_array_equal(ours, 0)
            else:
                np.testing.assert_allclose(ours, region / np.linalg.norm(region), atol=2e-5)
            texts = np.concatenate([apply("encode_text", tokenizer([t], 77), "short")  # one at a time
                                    for t in (item.positive, *item.negatives)])
            np.testing.assert_allclose(encoders.encode_texts([item.positive, *item.negatives], "box"),
                                       texts / np.linalg.norm(texts, axis=1, keepdims=True), atol=2e-5)
            scores = cosines(texts, region)
            correct.append(bool(scores[0] > scores[1:].max()))
        assert entry["accuracy"] == np.mean(correct), subset

    # Long captions: 248 tokens on the long walk; images through the pooled tower.
    captions = ["a long caption " * 40, "another one"]
    long = apply("encode_text", tokenizer(captions, 248), "long")
    np.testing.assert_allclose(encoders.encode_texts(captions, "long"),
                               long / np.linalg.norm(long, axis=1, keepdims=True), atol=2e-5)
    image = Image.open(os.path.join(images, "val2017", "000000000001.jpg")).convert("RGB")
    pooled = apply("encode_image", to_normalized_array(image.resize((32, 32), Image.Resampling.BICUBIC))[None])
    np.testing.assert_allclose(encoders.encode_images([image]), pooled / np.linalg.norm(pooled), atol=2e-5)
    with pytest.raises(ValueError, match="unknown text walk 'medium'"):
        encoders.encode_texts(["x"], "medium")

    # The command: same numbers, written as JSON and a table.
    parser = argparse.ArgumentParser()
    fine_grained.add_arguments(parser)
    out = tmp_path / "out" / "fgovd.json"
    args = parser.parse_args(["--task", "fgovd", "--data", data, "--images", images, "--checkpoint",
                              str(tiny_fgclip), "--out", str(out), "--batch-size", "8"])
    assert fine_grained.run(args) == 0
    written = json.loads(out.read_text())
    assert {s: e["accuracy"] for s, e in written["subsets"].items()} == \
        {s: e["accuracy"] for s, e in results["subsets"].items()}
    assert out.with_suffix(".md").read_text().startswith("| FG-OVD |")


def test_models_without_dense_features_are_refused(tmp_path):
    config = ClipConfig(32, VisionConfig(32, 8, 64, 2, 2, 128), TextConfig(width=64, layers=2, heads=2, mlp_dim=128))
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), clip_abstract_params(config))
    converters.save(CLIP(config), params, tmp_path / "clip_hf", "hf")
    with pytest.raises(ValueError, match="no dense features"):
        load_region_model(tmp_path / "clip_hf")


def test_fine_grained_command_other_tasks(tmp_path, tiny_fgclip):
    """`vlalign fine-grained --task sharegpt4v|dci|boxcls` equals the functions called on the encoders."""
    make_coco_images(str(tmp_path / "coco"))
    write_json(str(tmp_path / "instances.json"), coco_instances())
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n\na {} thing\n")
    for n, (colour, caption) in enumerate(LONG_CASES):
        save_image(str(tmp_path / "sam" / f"sa_{n}.jpg"), [colour])
        write_json(str(tmp_path / "dci" / f"{n}.json"), {"image": f"sa_{n}.jpg", "extra_caption": caption})
    write_json(str(tmp_path / "share.json"), [sharegpt4v_record(n, f"sam/images/sa_{n}.jpg", caption)
                                               for n, (_, caption) in enumerate(LONG_CASES)])
    encoders = region_encoders(*load_region_model(tiny_fgclip), batch_size=8)
    expected = {
        "sharegpt4v": long_retrieval(formats.read_sharegpt4v(str(tmp_path / "share.json"), str(tmp_path / "sam")),
                                     encoders.encode_images, encoders.encode_texts, name="sharegpt4v"),
        "dci": long_retrieval(formats.read_dci(str(tmp_path / "dci"), str(tmp_path / "sam")),
                              encoders.encode_images, encoders.encode_texts, name="dci"),
        "boxcls": box_classification(
            formats.read_coco_instances(str(tmp_path / "instances.json"), str(tmp_path / "coco" / "val2017"),
                                        include_crowd=False),
            encoders.encode_regions, encoders.encode_texts, templates=("a photo of a {}.", "a {} thing")),
    }
    parser = argparse.ArgumentParser()
    fine_grained.add_arguments(parser)
    for task, data, images, extra in (
            ("sharegpt4v", "share.json", "sam", ["--limit", "0"]), ("dci", "dci", "sam", []),
            ("boxcls", "instances.json", "coco/val2017",
             ["--no-crowd", "--templates", str(tmp_path / "templates.txt")])):
        out = tmp_path / f"{task}.json"
        args = parser.parse_args(["--task", task, "--data", str(tmp_path / data), "--images", str(tmp_path / images),
                                  "--checkpoint", str(tiny_fgclip), "--batch-size", "8", "--out", str(out), *extra])
        assert fine_grained.run(args) == 0
        written = json.loads(out.read_text())
        assert written.pop("checkpoint") == str(tiny_fgclip)
        assert written == json.loads(json.dumps(expected[task])), task
    assert written["boxes"] == 4 and written["templates"] == ["a photo of a {}.", "a {} thing"]
