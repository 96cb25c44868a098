"""Multi-caption retrieval: recall against brute-force loops, readers of the public files, and
`evaluate_retrieval` end to end.

The brute force sorts every candidate list with ties broken explicitly (wrong items first for
"miss", correct first for "hit") and scans the top K, so it shares no code path with the vectorised
ranks. Tie tests use small-integer embeddings, whose dot products are exact in float64. The files
are written by the tests in the public layouts (Karpathy split JSON, COCO captions, ShareGPT4V, DCI,
Urban-1k); the end-to-end test uses solid-colour images and a toy encoder that embeds an image as
its colour and a caption as the colour it names, so every rank follows from the captions.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval import retrieval
from vlalign_jax.eval.retrieval import evaluate_retrieval, markdown_table, multi_caption_recall, retrieval_recall
from vlalign_jax.eval.retrieval_data import (
    RetrievalDataset,
    load_dataset,
    read_coco_captions,
    read_karpathy,
    read_urban1k,
)


# ----------------------------------------------------------------------------- brute force

def brute_force(sims, correct, k, ties):
    """Fraction of rows with a correct column among the first k after sorting by score, ties ordered
    against the model ("miss") or for it ("hit")."""
    hits = 0
    for row, right in zip(sims, correct):
        order = sorted(range(len(row)), key=lambda j: (-row[j], bool(right[j]) == (ties == "miss")))
        hits += any(right[j] for j in order[:k])
    return hits / len(sims)


def expected(image, text, owner, ks, ties):
    sims = image @ text.T
    own = owner[None, :] == np.arange(len(image))[:, None]  # [N_img, N_txt]
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = brute_force(sims, own, k, ties)
    for k in ks:
        out[f"t2i_R@{k}"] = brute_force(sims.T, own.T, k, ties)
    return out


def random_owners(rng, num_images, max_captions):
    counts = rng.integers(1, max_captions + 1, num_images)  # unequal caption counts, each >= 1
    return rng.permutation(np.repeat(np.arange(num_images), counts))  # texts in shuffled order


@pytest.mark.parametrize("ties", ["miss", "hit"])
@pytest.mark.parametrize("chunk", [256, 7])  # 7: queries scored over several chunks
def test_recall_matches_brute_force_on_random_embeddings(ties, chunk, monkeypatch):
    monkeypatch.setattr(retrieval, "RANK_CHUNK", chunk)
    rng = np.random.default_rng(0)
    owner = random_owners(rng, 30, 4)
    image = rng.standard_normal((30, 16))
    text = image[owner] + 2.5 * rng.standard_normal((len(owner), 16))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    ks = (1, 3, 5, 10, 500)
    got = multi_caption_recall(image, text, owner, ks, ties=ties)
    assert got == expected(image, text, owner, ks, ties)
    assert 0 < got["i2t_R@1"] < got["i2t_R@10"] < got["i2t_R@500"] == 1.0  # not a trivial case
    assert 0 < got["t2i_R@1"] < got["t2i_R@10"] < got["t2i_R@500"] == 1.0


@pytest.mark.parametrize("ties", ["miss", "hit"])
def test_recall_matches_brute_force_with_ties(ties):
    rng = np.random.default_rng(1)
    owner = random_owners(rng, 12, 3)
    image = rng.integers(-1, 2, (12, 3)).astype(np.float64)  # few distinct rows: images tie
    image[0] = 0  # an all-zero image ties every text
    text = rng.integers(-1, 2, (len(owner), 3)).astype(np.float64)
    text[1] = text[0]  # identical captions
    ks = (1, 2, 5, 10)
    assert multi_caption_recall(image, text, owner, ks, ties=ties) == expected(image, text, owner, ks, ties)


def test_ties_change_the_result():
    rng = np.random.default_rng(1)
    owner = random_owners(rng, 12, 3)
    image = rng.integers(-1, 2, (12, 3)).astype(np.float64)
    text = rng.integers(-1, 2, (len(owner), 3)).astype(np.float64)
    miss = multi_caption_recall(image, text, owner, (1,), ties="miss")
    hit = multi_caption_recall(image, text, owner, (1,), ties="hit")
    assert miss["i2t_R@1"] < hit["i2t_R@1"] and miss["t2i_R@1"] < hit["t2i_R@1"]
    collapsed = np.ones((3, 2))  # everything ties: nothing retrieved under "miss", all under "hit"
    assert multi_caption_recall(collapsed, collapsed, np.arange(3), (1,)) == {"i2t_R@1": 0.0, "t2i_R@1": 0.0}
    assert multi_caption_recall(collapsed, collapsed, np.arange(3), (1,), "hit") == {"i2t_R@1": 1.0,
                                                                                     "t2i_R@1": 1.0}


def test_other_captions_of_the_same_image_never_count_against_it():
    image = np.eye(2)
    text = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # three captions of image 0 tie/lead
    got = multi_caption_recall(image, text, np.array([0, 0, 0, 1]), (1,), ties="miss")
    assert got == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}


@pytest.mark.parametrize("ties", ["miss", "hit"])
def test_one_caption_per_image_equals_paired_recall(ties):
    rng = np.random.default_rng(2)
    image = rng.integers(-2, 3, (20, 4)).astype(np.float32)
    text = rng.integers(-2, 3, (20, 4)).astype(np.float32)
    got = multi_caption_recall(image, text, np.arange(20), (1, 5), ties=ties)
    assert got == retrieval_recall(image, text, (1, 5), ties=ties)


def test_recall_rejects_bad_inputs():
    image, text = np.eye(3), np.eye(3)[[0, 0, 1]]
    with pytest.raises(ValueError, match=r"images without one: \[2\]"):
        multi_caption_recall(image, text, np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="outside"):
        multi_caption_recall(image, text, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="integers"):
        multi_caption_recall(image, text, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\[N_img, D\]"):
        multi_caption_recall(image, np.eye(3, 4), np.arange(3))
    with pytest.raises(ValueError, match="non-finite"):
        multi_caption_recall(np.full((3, 3), np.nan), text, np.arange(3))
    with pytest.raises(ValueError, match="ties"):
        multi_caption_recall(image, text, np.arange(3), ties="random")
    with pytest.raises(ValueError, match="ks"):
        multi_caption_recall(image, text, np.arange(3), ks=(0,))


# ----------------------------------------------------------------------------- public formats

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def write_image(path, colour="red"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), COLOURS[colour]).save(path, format="PNG")  # PNG bytes whatever the name


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return str(path)


def sentence(raw, imgid, sentid):
    return {"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": imgid, "sentid": sentid}


def karpathy_coco(root):
    """dataset_coco.json with a test image of 3 captions and one of 2, and train/restval/val images."""
    entries = [("val2014", "COCO_val2014_000000391895.jpg", "test", ["A man rides a bike.", "A cyclist.",
                                                                    "Someone on a bicycle."]),
               ("train2014", "COCO_train2014_000000000009.jpg", "train", ["A plate of food."]),
               ("val2014", "COCO_val2014_000000522418.jpg", "test", ["A woman cuts a cake.", "Cake."]),
               ("val2014", "COCO_val2014_000000184613.jpg", "restval", ["A dog."]),
               ("val2014", "COCO_val2014_000000318219.jpg", "val", ["A cat."])]
    images, sentid = [], 0
    for imgid, (filepath, filename, split, raws) in enumerate(entries):
        write_image(os.path.join(root, filepath, filename))
        sentences = [sentence(raw, imgid, sentid + n) for n, raw in enumerate(raws)]
        images.append({"filepath": filepath, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                       "imgid": imgid, "split": split, "sentences": sentences, "cocoid": 1000 + imgid})
        sentid += len(raws)
    return write_json(os.path.join(root, "dataset_coco.json"), {"images": images, "dataset": "coco"})


def karpathy_flickr(root, entries):
    """dataset_flickr30k.json (no 'filepath'): entries are (filename, split, raw captions, colour)."""
    images = []
    for imgid, (filename, split, raws, colour) in enumerate(entries):
        write_image(os.path.join(root, "flickr30k-images", filename), colour)
        images.append({"sentids": list(range(5 * imgid, 5 * imgid + len(raws))), "imgid": imgid,
                       "sentences": [sentence(raw, imgid, 5 * imgid + n) for n, raw in enumerate(raws)],
                       "split": split, "filename": filename})
    return write_json(os.path.join(root, "dataset_flickr30k.json"), {"images": images, "dataset": "flickr30k"})


def test_karpathy_coco_test_split(tmp_path):
    path = karpathy_coco(str(tmp_path))
    data = load_dataset("coco", path, str(tmp_path))
    assert data.name == "coco"
    assert data.images == (str(tmp_path / "val2014" / "COCO_val2014_000000391895.jpg"),
                           str(tmp_path / "val2014" / "COCO_val2014_000000522418.jpg"))
    assert data.texts == ("A man rides a bike.", "A cyclist.", "Someone on a bicycle.", "A woman cuts a cake.",
                          "Cake.")
    assert data.text_to_image.tolist() == [0, 0, 0, 1, 1]
    assert (data.num_images, data.num_texts) == (2, 5)


def test_karpathy_split_selection_and_caption_limit(tmp_path):
    path = karpathy_coco(str(tmp_path))
    train = read_karpathy(path, str(tmp_path), split=("train", "restval"))
    assert [os.path.basename(p) for p in train.images] == ["COCO_train2014_000000000009.jpg",
                                                          "COCO_val2014_000000184613.jpg"]
    assert train.images[0] == str(tmp_path / "train2014" / "COCO_train2014_000000000009.jpg")
    assert read_karpathy(path, str(tmp_path), "val").texts == ("A cat.",)
    first = read_karpathy(path, str(tmp_path), max_captions_per_image=1)
    assert first.texts == ("A man rides a bike.", "A woman cuts a cake.")
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        read_karpathy(path, str(tmp_path), "testing")


def test_karpathy_flickr_has_no_filepath(tmp_path):
    path = karpathy_flickr(str(tmp_path), [("1000092795.jpg", "test", ["Two young guys.", "Two men."], "red"),
                                           ("10002456.jpg", "train", ["Workers."], "red")])
    data = load_dataset("flickr30k", path, str(tmp_path / "flickr30k-images"))
    assert data.images == (str(tmp_path / "flickr30k-images" / "1000092795.jpg"),)
    assert data.texts == ("Two young guys.", "Two men.")
    with pytest.raises(RecordError, match="field 'dataset' is 'flickr30k', expected 'coco'"):
        load_dataset("coco", path, str(tmp_path / "flickr30k-images"))


def test_karpathy_errors_name_file_and_entry(tmp_path):
    path = karpathy_coco(str(tmp_path))
    os.remove(tmp_path / "val2014" / "COCO_val2014_000000522418.jpg")
    with pytest.raises(RecordError, match=r"dataset_coco.json images\[2\] \(COCO_val2014_000000522418.jpg\): "
                                          r"image file .*COCO_val2014_000000522418.jpg not found"):
        read_karpathy(path, str(tmp_path))
    read_karpathy(path, str(tmp_path), "train")  # the missing image is not in this split

    data = json.load(open(path))
    broken = json.loads(json.dumps(data))
    broken["images"][0]["sentences"] = []
    with pytest.raises(RecordError, match=r"images\[0\] \(COCO_val2014_000000391895.jpg\): no captions"):
        read_karpathy(write_json(tmp_path / "a.json", broken), str(tmp_path))
    broken = json.loads(json.dumps(data))
    del broken["images"][0]["sentences"][1]["raw"]
    with pytest.raises(RecordError, match=r"images\[0\] .* sentences\[1\]: missing field 'raw'"):
        read_karpathy(write_json(tmp_path / "b.json", broken), str(tmp_path))
    broken = json.loads(json.dumps(data))
    del broken["images"][2]["filepath"]
    with pytest.raises(RecordError, match=r"images\[2\] .*missing field 'filepath'"):
        read_karpathy(write_json(tmp_path / "c.json", broken), str(tmp_path))
    broken = json.loads(json.dumps(data))
    del broken["images"][1]["split"]
    with pytest.raises(RecordError, match=r"images\[1\]: missing field 'split'"):
        read_karpathy(write_json(tmp_path / "d.json", broken), str(tmp_path))
    (tmp_path / "e.json").write_text('{"images": [{"filename": ')
    with pytest.raises(RecordError, match=r"e.json: not valid JSON"):
        read_karpathy(str(tmp_path / "e.json"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_karpathy(str(tmp_path / "missing.json"), str(tmp_path))
    broken = {"images": [data["images"][1]], "dataset": "coco"}
    with pytest.raises(RecordError, match=r"no images in split test; the file has splits \['train'\]"):
        read_karpathy(write_json(tmp_path / "f.json", broken), str(tmp_path))


def test_coco_captions_first_five_by_image_id(tmp_path):
    for name in ("000000000139.jpg", "000000000285.jpg"):
        write_image(str(tmp_path / "val2017" / name))
    annotations = [{"image_id": 285, "id": 1, "caption": "A bear."}]
    annotations += [{"image_id": 139, "id": 10 + n, "caption": f"A room {n}."} for n in range(6)]
    path = write_json(tmp_path / "captions_val2017.json", {
        "info": {}, "licenses": [], "annotations": annotations,
        "images": [{"id": 285, "file_name": "000000000285.jpg", "height": 4, "width": 4},
                   {"id": 139, "file_name": "000000000139.jpg", "height": 4, "width": 4}]})
    data = load_dataset("coco_val2017", path, str(tmp_path / "val2017"))
    assert [os.path.basename(p) for p in data.images] == ["000000000139.jpg", "000000000285.jpg"]
    assert data.texts == tuple(f"A room {n}." for n in range(5)) + ("A bear.",)
    assert data.text_to_image.tolist() == [0] * 5 + [1]
    assert read_coco_captions(path, str(tmp_path / "val2017"), None).num_texts == 7
    json_data = json.load(open(path))
    json_data["annotations"] = annotations[1:]
    with pytest.raises(RecordError, match=r"images\[0\] \(000000000285.jpg\): no captions"):
        read_coco_captions(write_json(tmp_path / "x.json", json_data), str(tmp_path / "val2017"))


def test_long_caption_sets(tmp_path):
    # ShareGPT4V: a JSON list of {"id", "image", "conversations"}; caption conversations[1].value
    records = [{"id": str(n), "image": f"sam/images/sa_{n}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                  {"from": "gpt", "value": f"A long caption {n}."}]} for n in range(3)]
    for n in range(3):
        write_image(str(tmp_path / "share" / "sam" / "images" / f"sa_{n}.jpg"))
    share = write_json(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json", records)
    data = load_dataset("sharegpt4v", share, str(tmp_path / "share"), limit=2)
    assert data.texts == ("A long caption 0.", "A long caption 1.") and data.num_images == 2
    assert load_dataset("sharegpt4v", share, str(tmp_path / "share"), limit=0).num_images == 3
    # DCI: one JSON per image with "image" and "extra_caption"
    os.makedirs(tmp_path / "annotations")
    for n in (2, 1):
        write_json(tmp_path / "annotations" / f"sa_{n}.json",
                   {"image": f"sa_{n}.jpg", "short_caption": "short", "extra_caption": f"Extra {n}.",
                    "mask_data": {}})
        write_image(str(tmp_path / "photos" / f"sa_{n}.jpg"))
    data = load_dataset("dci", str(tmp_path / "annotations"), str(tmp_path / "photos"))
    assert data.texts == ("Extra 1.", "Extra 2.") and data.text_to_image.tolist() == [0, 1]
    # Urban-1k: caption/NAME.txt (caption on the first line), image/NAME.jpg
    os.makedirs(tmp_path / "Urban1k" / "caption")
    for n in (10, 2):
        (tmp_path / "Urban1k" / "caption" / f"{n}.txt").write_text(f"A street {n}.\nsecond line\n")
        write_image(str(tmp_path / "Urban1k" / "image" / f"{n}.jpg"))
    data = load_dataset("urban1k", str(tmp_path / "Urban1k" / "caption"), str(tmp_path / "Urban1k" / "image"))
    assert data.texts == ("A street 10.", "A street 2.")  # name order
    assert data.images[1] == str(tmp_path / "Urban1k" / "image" / "2.jpg")
    os.remove(tmp_path / "Urban1k" / "image" / "2.jpg")
    with pytest.raises(RecordError, match=r"2.txt: image file .*2.jpg not found"):
        read_urban1k(str(tmp_path / "Urban1k" / "caption"), str(tmp_path / "Urban1k" / "image"))
    with pytest.raises(ValueError, match="unknown retrieval dataset 'urban2k'"):
        load_dataset("urban2k", "x", "y")


def test_dataset_checks_its_indices():
    with pytest.raises(ValueError, match="image b.jpg has no caption"):
        RetrievalDataset("toy", ("a.jpg", "b.jpg"), ("x",), np.array([0]))
    with pytest.raises(ValueError, match="outside"):
        RetrievalDataset("toy", ("a.jpg",), ("x",), np.array([1]))


# ----------------------------------------------------------------------------- end to end

class ToyEncoders:
    """Image -> one-hot of its colour; caption -> one-hot of the colour it names. Records batches."""

    def __init__(self):
        self.image_batches, self.text_batches = [], []

    def encode_images(self, images):
        self.image_batches.append(len(images))
        index = {v: n for n, v in enumerate(COLOURS.values())}
        return np.eye(4)[[index[image.getpixel((0, 0))] for image in images]]

    def encode_texts(self, texts):
        self.text_batches.append(list(texts))
        names = list(COLOURS)
        return np.eye(4)[[next(n for n, c in enumerate(names) if c in t.split()) for t in texts]] * 3.0


def test_evaluate_retrieval_end_to_end(tmp_path):
    path = karpathy_flickr(str(tmp_path), [
        ("r.jpg", "test", ["a red square", "red shape"], "red"),
        ("g.jpg", "test", ["a green square", "a blue thing", "a green square"], "green"),  # one caption wrong
        ("t.jpg", "train", ["a green thing"], "green"),
        ("b.jpg", "test", ["a blue square"], "blue"),
        ("y.jpg", "test", ["a red blob"], "yellow"),  # its only caption names another colour
    ])
    data = load_dataset("flickr30k", path, str(tmp_path / "flickr30k-images"))
    toy = ToyEncoders()
    miss = evaluate_retrieval(data, toy.encode_images, toy.encode_texts, batch_size=2, ks=(1, 2, 5))
    # i2t ranks (wrong texts scored >= the best own caption): red 1 ("a red blob"), green 0, blue 1
    # ("a blue thing"), yellow 6 (every text scores 0 against it). t2i: "a blue thing" and "a red blob"
    # score 0 with their image and 0 or 1 with the three others: rank 3; the other five: rank 0.
    assert miss == {"dataset": "flickr30k", "i2t_R@1": 0.25, "i2t_R@2": 0.75, "i2t_R@5": 0.75,
                    "t2i_R@1": 5 / 7, "t2i_R@2": 5 / 7, "t2i_R@5": 1.0, "num_images": 4, "num_texts": 7,
                    "ties": "miss"}
    assert max(toy.image_batches) == 2 and sum(toy.image_batches) == 4
    assert sorted(t for batch in toy.text_batches for t in batch) == sorted(set(data.texts))  # each once
    hit = evaluate_retrieval(data, toy.encode_images, toy.encode_texts, batch_size=3, ks=(1, 2), ties="hit")
    assert {k: v for k, v in hit.items() if "@" in k} == {"i2t_R@1": 1.0, "i2t_R@2": 1.0, "t2i_R@1": 5 / 7,
                                                          "t2i_R@2": 1.0}
    json.dumps(miss)

    table = markdown_table([miss, {**miss, "dataset": "again"}])
    lines = table.splitlines()
    assert lines[0] == ("| retrieval (%) | i2t R@1 | i2t R@2 | i2t R@5 | t2i R@1 | t2i R@2 | t2i R@5 "
                        "| images | texts |")
    assert lines[2] == "| flickr30k | 25.0 | 75.0 | 75.0 | 71.4 | 71.4 | 100.0 | 4 | 7 |"
    assert len(lines) == 4 and markdown_table(miss) == "\n".join(lines[:3])
    with pytest.raises(ValueError, match="other recall columns"):
        markdown_table([miss, hit])


def test_evaluate_retrieval_reports_bad_encoders_and_images(tmp_path):
    path = karpathy_flickr(str(tmp_path), [("r.jpg", "test", ["red"], "red"),
                                           ("g.jpg", "test", ["green"], "green")])
    data = load_dataset("flickr30k", path, str(tmp_path / "flickr30k-images"))
    toy = ToyEncoders()
    with pytest.raises(ValueError, match="encode_texts returned a non-finite or all-zero embedding"):
        evaluate_retrieval(data, toy.encode_images, lambda texts: np.zeros((len(texts), 4)))
    with pytest.raises(ValueError, match=r"encode_images returned shape \(1, 4\) for 2 inputs"):
        evaluate_retrieval(data, lambda images: np.ones((1, 4)), toy.encode_texts)
    (tmp_path / "flickr30k-images" / "g.jpg").write_bytes(b"not an image")
    with pytest.raises(RecordError, match=r"benchmark: cannot read image \S*g\.jpg: "):
        evaluate_retrieval(data, toy.encode_images, toy.encode_texts)


def test_an_image_over_pils_pixel_limit_is_a_record_error_naming_it(tmp_path, monkeypatch):
    from PIL import Image

    from vlalign_jax.data.records import RecordError
    from vlalign_jax.eval.benchmark_files import open_rgb

    path = tmp_path / "wide.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4,096 pixels is then over twice the limit
    with pytest.raises(RecordError, match="wide.png.*DecompressionBombError"):
        open_rgb(str(path))
