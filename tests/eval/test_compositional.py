"""Compositional benchmarks: readers of the public SugarCrepe / ARO / VALSE files, and scoring.

Tiny files in each public format are written to a temporary data root with solid-colour images.
The toy model embeds an image as its mean colour and a caption as its counts of colour words, so
whether an item is right follows from its captions: naming the image's colour wins, naming another
loses, two captions with the same colour words tie (wrong). Every accuracy is also recomputed by a
brute-force loop that encodes each item on its own.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval import compositional
from vlalign_jax.eval import compositional_formats as formats
from vlalign_jax.eval.compositional import (
    evaluate_suite,
    load_suite,
    markdown_table,
    score_items,
    summarize,
)

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
NOUNS = {"cat", "mat", "dog", "rug", "ball", "box", "cup", "table"}
ADJECTIVES = {"red", "green", "blue", "small", "big"}


def encode_images(images):
    return np.stack([np.asarray(image, np.float64).reshape(-1, 3).mean(0) / 255 for image in images])


def encode_texts(texts):
    words = [text.lower().replace(".", " ").split() for text in texts]
    return np.array([[w.count(c) for c in COLOURS] for w in words], np.float64)


def toy_tagger(text):
    return [(t, "NN" if t.lower() in NOUNS else "JJ" if t.lower() in ADJECTIVES else "DT")
            for t in formats.word_tokens(text)]


def brute_force(items):
    """Correctness of each item, encoding it alone with the toy model."""
    out = []
    for item in items:
        path, box = (item.image, None) if isinstance(item.image, str) else item.image
        image = Image.open(path).convert("RGB")
        image = image.crop(box) if box else image
        i = encode_images([image])[0]
        t = encode_texts([item.positive, *item.negatives])
        cos = t @ i / np.linalg.norm(t, axis=1) / np.linalg.norm(i)
        out.append(all(cos[0] > c for c in cos[1:]))
    return np.array(out)


def save_image(path, colours, size=8):
    """An image of vertical bands, one per colour name, each size x size pixels."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGB", (size * len(colours), size))
    for k, colour in enumerate(colours):
        image.paste(COLOURS[colour], (k * size, 0, (k + 1) * size, size))
    image.save(path, format="PNG")  # lossless, whatever the .jpg name says


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


# (image colour, caption, negative caption, correct by construction)
SUGARCREPE_CASES = [("red", "a red ball", "a blue ball", True),
                    ("green", "a blue car", "a green car", False),
                    ("blue", "a blue cup", "the blue cup", False)]  # tie


def make_sugarcrepe(root):
    for colour in COLOURS:
        save_image(os.path.join(root, "coco", "val2017", f"{colour}.jpg"), [colour])
    expected = {}
    for k, subset in enumerate(formats.SUGARCREPE_SUBSETS):
        cases = SUGARCREPE_CASES[:1 + k % 3]
        write_json(os.path.join(root, "sugarcrepe", f"{subset}.json"),
                   {str(n): {"filename": f"{c}.jpg", "caption": p, "negative_caption": q}
                    for n, (c, p, q, _) in enumerate(cases)})
        expected[subset] = np.mean([ok for *_, ok in cases])
    return expected


# VG-Relation: (relation, crop of a red|blue image, true caption, false caption, correct)
LEFT, RIGHT, WHOLE = (0, 0, 8, 8), (8, 0, 8, 8), (0, 0, 16, 8)
VGR_CASES = [("on", RIGHT, "the blue cup on the table", "the red cup on the table", True),
             ("on", LEFT, "a red box", "a blue box", True),
             ("on", RIGHT, "a red box", "a blue box", False),
             ("near", LEFT, "a blue box", "a red box", False),  # symmetric: not in the macro
             ("holding", RIGHT, "a blue cup", "a red cup", True),
             ("holding", WHOLE, "a red cup", "a blue cup", False)]  # uncropped: a tie


def make_aro(root):
    save_image(os.path.join(root, "aro", "images", "1.jpg"), ["red", "blue"])
    box = lambda b: dict(zip(("bbox_x", "bbox_y", "bbox_w", "bbox_h"), b))
    write_json(os.path.join(root, "aro", "visual_genome_relation.json"),
               [{"image_id": "1", "relation_name": r, "image_path": "1.jpg", **box(b),
                 "true_caption": t, "false_caption": f} for r, b, t, f, _ in VGR_CASES])
    # 26 cases of the pair red_blue (every third wrong), 3 of green_red (too few: not in the macro)
    vga = [(["red", "blue"], LEFT, "a red box", "a blue box") if n % 3 else
           (["red", "blue"], LEFT, "a blue box", "a red box") for n in range(26)]
    vga += [(["green", "red"], RIGHT, "a blue ball", "a red ball")] * 3
    write_json(os.path.join(root, "aro", "visual_genome_attribution.json"),
               [{"image_id": "1", "image_path": "1.jpg", **box(b), "attributes": a,
                 "obj1_name": "box", "obj2_name": "ball", "true_caption": t, "false_caption": f}
                for a, b, t, f in vga])
    for folder, name, image in (("coco", "coco_karpathy_test.json", "val2014/COCO_val2014_1.jpg"),
                                ("flickr30k", "flickr30k_test.json", "flickr30k-images/1.jpg")):
        save_image(os.path.join(root, folder, image), ["green"])
        write_json(os.path.join(root, folder, name), [{"image": image, "caption": [
            "A green dog on a red rug near a blue cat.", "Green.", "A big green dog sleeps."]}])


# piece (up to its first '-') -> the `dataset` its records name, and where its images are
VALSE_SOURCES = {"existence": ("visual7w", "visual7w/images"), "counting": ("visual7w", "visual7w/images"),
                 "plurals": ("coco2017", "coco/val2017"), "relations": ("coco_2017", "coco/val2017"),
                 "action": ("SWiG", "swig/images_512"), "actant": ("SWiG", "swig/images_512"),
                 "coreference": ("VisDial_v1.0", "coco/train2014"),
                 "foil": ("FOIL dataset", "coco/val2014")}


def make_valse(root):
    expected = {}
    for k, piece in enumerate(formats.VALSE_PIECES):
        dataset, folder = VALSE_SOURCES[piece.split("-")[0]]
        if piece == "coreference-hard":
            folder = "visdial/VisualDialog_val2018"
        colour = list(COLOURS)[k % 3]
        other = list(COLOURS)[(k + 1) % 3]
        save_image(os.path.join(root, folder, f"{piece}.jpg"), [colour])
        base = {"dataset": dataset, "image_file": f"{piece}.jpg", "linguistic_phenomena": piece}
        records = {
            f"{piece}_0": {**base, "caption": f"a {colour} thing", "foil": f"a {other} thing",
                           "mturk": {"foil": 0, "caption": 3, "other": 0}},
            f"{piece}_1": {**base, "caption": f"a {other} thing", "foil": f"a {colour} thing",
                           "mturk": {"foil": 0, "caption": 2, "other": 1}},
            # not validated by annotators: left out
            f"{piece}_2": {**base, "caption": f"a {colour} thing", "foil": f"a {other} thing",
                           "mturk": {"foil": 2, "caption": 1, "other": 0}}}
        n_correct = 1
        if k % 2:  # a record with several foils, as older files write them: all beaten
            records[f"{piece}_3"] = {**base, "caption": f"{colour} {colour}", "foils": [
                f"a {other} one", f"the {other} {colour}"], "mturk": {"caption": 3}}
            n_correct = 2
        write_json(os.path.join(root, "valse", f"{piece}.json"), records)
        expected[piece] = n_correct / (2 + k % 2)
    return expected


def test_sugarcrepe(tmp_path):
    expected = make_sugarcrepe(str(tmp_path))
    items = load_suite("sugarcrepe", str(tmp_path))
    assert items[0] == compositional.CompositionalItem(
        str(tmp_path / "coco" / "val2017" / "red.jpg"), "a red ball", ["a blue ball"], "replace_obj")
    correct = score_items(items, encode_images, encode_texts, batch_size=2)
    np.testing.assert_array_equal(correct, brute_force(items))
    results = evaluate_suite("sugarcrepe", str(tmp_path), encode_images, encode_texts)
    for subset, accuracy in expected.items():
        assert results["subsets"][subset]["accuracy"] == pytest.approx(accuracy)
    assert results["groups"]["swap"] == pytest.approx((expected["swap_obj"] + expected["swap_att"]) / 2)
    assert results["average"] == pytest.approx(np.mean(list(expected.values())))
    json.dumps(results, allow_nan=False)
    table = markdown_table(results)
    assert "| sugarcrepe | Rep-obj |" in table and "Avg |" in table and "| 33.3 |" in table


def test_aro_vg_macro_accuracy_and_crops(tmp_path):
    make_aro(str(tmp_path))
    items = load_suite("aro", str(tmp_path), subsets=["VG-Relation", "VG-Attribution"])
    assert items[0].image == (str(tmp_path / "aro" / "images" / "1.jpg"), (8.0, 0.0, 16.0, 8.0))
    assert [i.group for i in items[:6]] == [r for r, *_ in VGR_CASES]
    assert items[6].group == "red_blue" and items[-1].group == "green_red"
    correct = score_items(items, encode_images, encode_texts)
    np.testing.assert_array_equal(correct, brute_force(items))
    np.testing.assert_array_equal(correct[:6], [ok for *_, ok in VGR_CASES])
    results = summarize("aro", items, correct)
    vgr, vga = results["subsets"]["VG-Relation"], results["subsets"]["VG-Attribution"]
    assert vgr["accuracy"] == pytest.approx(np.mean([2 / 3, 1 / 2]))  # on, holding; near dropped
    assert vgr["micro_accuracy"] == pytest.approx(3 / 6) and vgr["groups"] == 2
    assert vga["accuracy"] == pytest.approx(17 / 26) and vga["groups"] == 1  # red_blue only
    assert vga["micro_accuracy"] == pytest.approx(20 / 29)
    assert results["average"] == pytest.approx((vgr["accuracy"] + vga["accuracy"]) / 2)


def test_an_unreadable_image_is_a_record_error_naming_it(tmp_path):
    """Items' images (cropped or whole) go through the project's one reader and its message."""
    make_aro(str(tmp_path))
    items = load_suite("aro", str(tmp_path), subsets=["VG-Relation"])
    path, box = items[0].image
    assert box is not None
    with open(path, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(RecordError, match=rf"benchmark: cannot read image \S*{os.path.basename(path)}: "):
        score_items(items, encode_images, encode_texts)


def test_aro_order(tmp_path):
    make_aro(str(tmp_path))
    items = formats.load_aro(str(tmp_path), ["COCO-Order", "Flickr30k-Order"], tagger=toy_tagger,
                             seed=0)
    assert len(items) == 6 and {i.subset for i in items} == {"COCO-Order", "Flickr30k-Order"}
    assert items[0].positive == "a green dog on a red rug near a blue cat"
    assert items[0].image == str(tmp_path / "coco" / "val2014" / "COCO_val2014_1.jpg")
    assert items[1].positive == "green" and items[1].negatives == []  # one word: nothing to shuffle
    for item in items:
        assert len(item.negatives) <= 4
        for negative in item.negatives:  # same words, another order
            assert sorted(negative.split()) == sorted(item.positive.split())
            assert negative.split() != item.positive.split()
    correct = score_items(items, encode_images, encode_texts)
    np.testing.assert_array_equal(correct, brute_force(items))
    # a bag of words ties every reordering (wrong) and wins only where nothing was reordered
    np.testing.assert_array_equal(correct, [not i.negatives for i in items])
    results = summarize("aro", items, correct)
    assert results["subsets"]["COCO-Order"]["accuracy"] == pytest.approx(np.mean(correct[:3]))
    assert items == formats.load_aro(str(tmp_path), ["COCO-Order", "Flickr30k-Order"],
                                     tagger=toy_tagger, seed=0)  # seeded


def test_order_perturbations():
    caption = "A small red cat sat on the big blue mat near a dog."
    rng = np.random.default_rng(3)
    nouns_adjs, others, within, across = formats.order_negatives(caption, toy_tagger, rng)
    tokens = formats.word_tokens(caption)
    tags = [tag for _, tag in toy_tagger(caption)]
    for negative in (nouns_adjs, others, within, across):
        assert sorted(negative.split()) == sorted(tokens)
    for k, tag in enumerate(tags):  # nouns, adjectives, the rest: each shuffled among its own
        assert toy_tagger(nouns_adjs.split()[k])[0][1] == tag
        assert toy_tagger(others.split()[k])[0][1] == tag
        if tag == "DT":
            assert nouns_adjs.split()[k] == tokens[k]
        else:
            assert others.split()[k] == tokens[k]
    for start in range(0, len(tokens), 3):
        assert sorted(within.split()[start:start + 3]) == sorted(tokens[start:start + 3])
    assert formats.pre_caption("A man, riding (a) bike!") == "a man, riding a bike"
    assert formats.pre_caption("one two three four", max_words=2) == "one two"


def test_order_needs_a_tagger_without_spacy(tmp_path):
    if importlib.util.find_spec("spacy") is not None:
        pytest.skip("spaCy is installed")
    make_aro(str(tmp_path))
    with pytest.raises(RuntimeError, match="part-of-speech tagger"):
        formats.load_aro(str(tmp_path), ["COCO-Order"])


def test_valse(tmp_path):
    expected = make_valse(str(tmp_path))
    items = load_suite("valse", str(tmp_path))
    assert len(items) == sum(2 + k % 2 for k in range(len(formats.VALSE_PIECES)))
    assert {i.subset for i in items} == set(formats.VALSE_PIECES)
    assert items[0].image == str(tmp_path / "visual7w" / "images" / "existence.jpg")
    assert items[4].negatives == ["a blue one", "the blue green"]  # plurals_3, from "foils"
    correct = score_items(items, encode_images, encode_texts, batch_size=3)
    np.testing.assert_array_equal(correct, brute_force(items))
    results = evaluate_suite("valse", str(tmp_path), encode_images, encode_texts, batch_size=5)
    for piece, accuracy in expected.items():
        assert results["subsets"][piece]["accuracy"] == pytest.approx(accuracy)
    counting = [expected[p] for p in ("counting-hard", "counting-small-quant", "counting-adversarial")]
    assert results["groups"]["counting"] == pytest.approx(np.mean(counting))
    assert results["average"] == pytest.approx(np.mean(list(expected.values())))
    assert "Coref.clean" in markdown_table(results)
    everything = load_suite("valse", str(tmp_path), ["existence"], valid_only=False)
    assert len(everything) == 3


def test_scoring_is_independent_of_batches_and_chunks(tmp_path, monkeypatch):
    make_sugarcrepe(str(tmp_path))
    items = load_suite("sugarcrepe", str(tmp_path))
    expected = score_items(items, encode_images, encode_texts, batch_size=64)
    monkeypatch.setattr(compositional, "CHUNK_ITEMS", 2)
    np.testing.assert_array_equal(score_items(items, encode_images, encode_texts, 1, 1), expected)
    with pytest.raises(ValueError, match="expected \\[n, dim\\]"):
        score_items(items, encode_images, lambda texts: np.zeros(3))


@pytest.mark.parametrize("suite,file,edit,message", [
    ("sugarcrepe", "sugarcrepe/swap_obj.json",
     lambda d: d["0"].pop("negative_caption"), "record '0'.*'negative_caption'"),
    ("sugarcrepe", "sugarcrepe/replace_rel.json",
     lambda d: d["1"].update(filename="missing.jpg"), "record '1'.*missing.jpg not found"),
    ("aro", "aro/visual_genome_relation.json",
     lambda d: d[2].update(bbox_w=0), "record 2: empty crop box"),
    ("aro", "aro/visual_genome_attribution.json",
     lambda d: d[5].update(attributes="red"), "record 5: field 'attributes'"),
    ("aro", "coco/coco_karpathy_test.json",
     lambda d: d[0].update(caption="one caption"), "record 0: field 'caption'"),
    ("valse", "valse/relations.json",
     lambda d: d["relations_0"].pop("mturk"), "record 'relations_0': field 'mturk'"),
    ("valse", "valse/foil-it.json",
     lambda d: d["foil-it_1"].update(dataset="imagenet"), "record 'foil-it_1'.*'imagenet'"),
])
def test_malformed_records_name_file_and_record(tmp_path, suite, file, edit, message):
    {"sugarcrepe": make_sugarcrepe, "aro": make_aro, "valse": make_valse}[suite](str(tmp_path))
    path = tmp_path / file
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=message) as error:
        load_suite(suite, str(tmp_path), tagger=toy_tagger) if suite == "aro" else \
            load_suite(suite, str(tmp_path))
    assert str(path) in str(error.value)


def test_bad_files_and_names(tmp_path):
    make_sugarcrepe(str(tmp_path))
    (tmp_path / "sugarcrepe" / "swap_att.json").write_text("{not json")
    with pytest.raises(RecordError, match="swap_att.json: not valid JSON"):
        load_suite("sugarcrepe", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="visual_genome_relation.json"):
        load_suite("aro", str(tmp_path), ["VG-Relation"])
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite("winoground", str(tmp_path))
    with pytest.raises(ValueError, match="unknown valse subsets"):
        load_suite("valse", str(tmp_path), ["counting"])
