"""SyntheticShapes: deterministic by (seed, split, index), drawn exactly as boxed, and every text true
(or, for negatives, false) of the image. Texts are checked against objects read back from pixels or
parsed from the texts themselves, never against hard-coded strings."""

import re

import numpy as np
import pytest
from scipy import ndimage

from vlalign_jax.data.sources.synthetic import (
    COLORS, FIELDS, SyntheticShapes, SyntheticShapesConfig, position_name)

PHRASE = re.compile(r"a (small|large) (\w+) (\w+) at the ([a-z]+(?: [a-z]+)?)")
REFERRING = re.compile(r"the (?:(small|large) )?(\w+) (\w+)(?: at the ([a-z]+(?: [a-z]+)?))?")
SHORT = re.compile(r"an? (\w+) (\w+)")
SENTENCE = re.compile(r"(the [a-z ]+?) is (left of|right of|above|below) (the [a-z ]+)")
REGION_LONG = re.compile(r"(a .+) , (left of|right of|above|below) (an? \w+ \w+)")
POSITION_CELL = {position_name(cell): cell for cell in range(9)}

# Each shape word as the test reads it, in coordinates u, v in [-1, 1] across the shape's box
# (v downwards): independent of the drawing code, so a shape drawn under the wrong name is caught.
TEMPLATES = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: np.ones_like(u, bool),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1,
    "triangle": lambda u, v: np.abs(u) <= (v + 1) / 2,  # apex up
    "cross": lambda u, v: (np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3),
}


def parse_caption(text: str) -> set[tuple[str, str, str, int]]:
    """{(size, colour, shape, cell)} of a caption; fails on any phrase outside the grammar."""
    objects = set()
    for phrase in text.replace(" and ", " , ").split(" , "):
        match = PHRASE.fullmatch(phrase)
        assert match, f"unparsable phrase {phrase!r} in {text!r}"
        size, color, shape, position = match.groups()
        objects.add((size, color, shape, POSITION_CELL[position]))
    return objects


def in_reading_order(text: str) -> bool:
    """Whether a caption lists its objects top to bottom, then left to right (the canonical order)."""
    cells = [POSITION_CELL[PHRASE.fullmatch(p).group(4)] for p in text.replace(" and ", " , ").split(" , ")]
    return cells == sorted(cells)


def truth(scene) -> set[tuple[str, str, str, int]]:
    return {(o.size, o.color, o.shape, o.cell) for o in scene.objects}


def holds(relation: str, a: tuple, b: tuple) -> bool:
    """Whether object a (a tuple ending in its cell) is `relation` object b."""
    (ra, ca), (rb, cb) = divmod(a[-1], 3), divmod(b[-1], 3)
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def referents(expression: str, objects: set[tuple[str, str, str, int]]) -> list[tuple]:
    """The objects a referring expression ('the [size] colour shape [at the position]') fits."""
    match = REFERRING.fullmatch(expression)
    assert match, expression
    size, color, shape, position = match.groups()
    return [o for o in objects if (o[1], o[2]) == (color, shape) and size in (None, o[0])
            and (position is None or POSITION_CELL[position] == o[3])]


def read_objects(image: np.ndarray) -> set[tuple[str, str, str, int]]:
    """Objects read back from pixels alone: palette colour, connected component, its box's size,
    centre cell and best-fitting shape template."""
    size = image.shape[0]
    cell = size / 3
    # Small shapes span about half a cell at most (5 of 10.7 pixels at 32x32, 11 of 21.3 at 64x64),
    # large ones about two thirds or more (7 and 17).
    large_above = 0.6 * cell
    objects = set()
    for color, rgb in COLORS.items():
        components, count = ndimage.label(np.all(image == rgb, axis=-1))
        for y_slice, x_slice in ndimage.find_objects(components):
            crop = components[y_slice, x_slice] > 0
            h, w = crop.shape
            v, u = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None] * 2 - 1
            shape = max(TEMPLATES, key=lambda name: (TEMPLATES[name](u, v) == crop).mean())
            cy, cx = (y_slice.start + y_slice.stop) / 2, (x_slice.start + x_slice.stop) / 2
            objects.add(("large" if max(h, w) > large_above else "small", color, shape,
                         int(cy // cell) * 3 + int(cx // cell)))
    return objects


def test_example_depends_only_on_seed_split_and_index():
    a, b = SyntheticShapes("train", 1000, seed=3), SyntheticShapes("train", 1000, seed=3)
    only_some = SyntheticShapes("train", 1000, seed=3, fields=("image", "region_negatives", "referring_box"))
    for index in (0, 1, 17, 999, 5):
        first, second, partial = a[index], b[index], only_some[index]
        assert first.keys() == set(FIELDS) and partial.keys() == {"index", "image", "region_negatives",
                                                                    "referring_box"}
        for key, value in first.items():
            np.testing.assert_equal(second[key], value)
            if key in partial:
                np.testing.assert_equal(partial[key], value)


def test_seeds_and_splits_draw_different_examples():
    train, other_seed = SyntheticShapes("train", 200, seed=0), SyntheticShapes("train", 200, seed=1)
    heldout, test = SyntheticShapes("heldout", 200, seed=0), SyntheticShapes("test", 200, seed=0)
    for index in range(0, 200, 7):
        image = train[index]["image"]
        assert not np.array_equal(image, other_seed[index]["image"])
        assert not np.array_equal(image, heldout[index]["image"])
        np.testing.assert_equal(heldout[index], test[index])  # "test" is an alias of "heldout"
    train_captions = {train[i]["caption"] for i in range(200)}
    assert len(train_captions) > 180  # captions tell examples apart
    assert len(train_captions & {heldout[i]["caption"] for i in range(200)}) < 10


def test_fields_have_the_documented_shapes_and_types():
    config = SyntheticShapesConfig(image_size=48, max_objects=4, num_negatives=5, num_region_negatives=2)
    data = SyntheticShapes("train", 50, seed=0, config=config)
    for index in range(50):
        ex = data[index]
        n = int(ex["box_mask"].sum())
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (48, 48, 3)
        assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape == (4, 4)
        assert ex["box_mask"].dtype == bool and ex["box_mask"].shape == (4,)
        assert ex["referring_box"].dtype == np.float32 and ex["referring_box"].shape == (4,)
        assert 1 <= n <= 4 and ex["box_mask"][:n].all() and not ex["boxes"][n:].any()
        assert isinstance(ex["caption"], str) and isinstance(ex["long_caption"], str)
        assert len(ex["negative_captions"]) == 5 and all(isinstance(t, str) for t in ex["negative_captions"])
        assert len(ex["region_short"]) == len(ex["region_long"]) == len(ex["region_negatives"]) == n
        assert all(len(negs) == 2 for negs in ex["region_negatives"])
        assert ex["index"] == index and isinstance(ex["index"], int)
    with pytest.raises(IndexError):
        data[50]
    with pytest.raises(ValueError):
        SyntheticShapes("validation")


@pytest.mark.parametrize("image_size", [64, 32, 27])
def test_boxes_enclose_exactly_each_objects_pixels(image_size):
    data = SyntheticShapes("train", 1000, seed=1, config=SyntheticShapesConfig(image_size=image_size))
    for index in range(100):
        scene, ex = data.scene(index), data[index]
        np.testing.assert_array_equal(scene.image, ex["image"])
        np.testing.assert_array_equal(ex["boxes"][: len(scene.objects)], scene.boxes)
        assert scene.masks.sum(axis=0).max() <= 1  # shapes do not overlap
        for obj, mask, box in zip(scene.objects, scene.masks, scene.boxes):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert 0 <= box[0] < box[2] <= image_size and 0 <= box[1] < box[3] <= image_size
            assert (ex["image"][mask] == COLORS[obj.color]).all()
        background = ex["image"][~scene.masks.any(axis=0)]
        assert (background == background[:, :1]).all() and background.max() < 64  # dark grey
        for i in range(len(scene.boxes)):  # boxes, not only shapes, are disjoint
            for j in range(i):
                a, b = scene.boxes[i], scene.boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


@pytest.mark.parametrize("image_size", [64, 48, 32])
def test_caption_is_read_off_the_pixels(image_size):
    data = SyntheticShapes("heldout", 1000, seed=2, config=SyntheticShapesConfig(image_size=image_size))
    for index in range(150):
        ex, scene = data[index], data.scene(index)
        assert read_objects(ex["image"]) == parse_caption(ex["caption"]) == truth(scene), index
        assert in_reading_order(ex["caption"])


def test_long_caption_and_region_texts_are_true():
    data = SyntheticShapes("train", 1000, seed=4)
    for index in range(200):
        ex, scene = data[index], data.scene(index)
        objects = truth(scene)
        assert ex["long_caption"].endswith(" .")
        summary, *relations = ex["long_caption"].removesuffix(" .").split(" . ")
        assert summary == ex["caption"]
        assert len(relations) == len(objects) - 1
        for sentence in relations:
            match = SENTENCE.fullmatch(sentence)
            assert match, sentence
            (a,), (b,) = referents(match.group(1), objects), referents(match.group(3), objects)
            assert holds(match.group(2), a, b), sentence
        for obj, short, long, negatives in zip(scene.objects, ex["region_short"], ex["region_long"],
                                               ex["region_negatives"]):
            assert SHORT.fullmatch(short).groups() == (obj.color, obj.shape)
            me = (obj.size, obj.color, obj.shape, obj.cell)
            match = REGION_LONG.fullmatch(long)
            assert parse_caption(match.group(1) if match else long) == {me}
            if match:  # "..., left of a blue square": true of some other object of that description
                neighbour = SHORT.fullmatch(match.group(3)).groups()
                assert any(o[1:3] == neighbour and holds(match.group(2), me, o) for o in objects - {me})
            else:
                assert len(objects) == 1
            assert len(set(negatives)) == len(negatives) == 3
            for negative in negatives:  # false, and wrong in exactly one of colour and shape
                color, shape = SHORT.fullmatch(negative).groups()
                assert color in COLORS and (color != obj.color) + (shape != obj.shape) == 1


def negative_kind(true: set, false: set) -> str:
    """Which change turns the true objects into the false ones (reading the texts only)."""
    t, f = ({o[3]: o[:3] for o in objects} for objects in (true, false))  # cell -> (size, colour, shape)
    if t.keys() == f.keys():
        changed = {field for cell in t for field, x, y in zip(("size", "color", "shape"), t[cell], f[cell])
                   if x != y}
        if changed == {"shape"}:
            return "object_replacement"
        if changed == {"color"}:  # colours exchanged (when the two look alike otherwise, this is also
            return "attribute_swap"  # a position swap) or, when all share one colour, one recoloured
    if sorted(t.values()) == sorted(f.values()):
        return "position_swap"  # the same objects, somewhere else
    return "other"


def test_hard_negatives_are_false_distinct_and_of_every_kind():
    data = SyntheticShapes("train", 1000, seed=5)
    kinds = []
    for index in range(300):
        ex = data[index]
        objects = parse_caption(ex["caption"])
        negatives = ex["negative_captions"]
        assert len(negatives) == 3 and len(set(negatives)) == 3 and ex["caption"] not in negatives
        for k, negative in enumerate(negatives):
            claimed = parse_caption(negative)  # also checks the negative is a well-formed caption
            assert in_reading_order(negative)  # word order does not give a negative away
            assert claimed != objects  # false for the image
            assert len(claimed) == len(objects)
            kinds.append(negative_kind(objects, claimed))
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    assert "other" not in counts and all(counts[k] > 150 for k in
                                         ("attribute_swap", "position_swap", "object_replacement")), counts


@pytest.mark.parametrize("min_objects,max_objects", [(1, 3), (6, 9)])
def test_referring_expression_names_exactly_its_object(min_objects, max_objects):
    config = SyntheticShapesConfig(min_objects=min_objects, max_objects=max_objects)
    data = SyntheticShapes("train", 1000, seed=6, config=config)
    for index in range(200):
        ex, scene = data[index], data.scene(index)
        (target,) = referents(ex["referring_expression"], truth(scene))
        (i,) = [i for i, o in enumerate(scene.objects) if o.cell == target[3]]
        np.testing.assert_array_equal(ex["referring_box"], scene.boxes[i])


def test_vocabulary_covers_every_text():
    vocabulary = SyntheticShapes.vocabulary()
    assert vocabulary == sorted(set(vocabulary)) and all(w == w.lower() and " " not in w for w in vocabulary)
    used = set()
    data = SyntheticShapes("train", 100_000, seed=7, config=SyntheticShapesConfig(max_objects=4))
    for index in np.random.default_rng(0).choice(100_000, 500, replace=False):
        ex = data[int(index)]
        texts = [ex["caption"], ex["long_caption"], ex["referring_expression"], *ex["negative_captions"],
                 *ex["region_short"], *ex["region_long"], *(t for ts in ex["region_negatives"] for t in ts)]
        for text in texts:
            assert text == text.strip() and "  " not in text
            used.update(text.split(" "))
    assert used <= set(vocabulary), used - set(vocabulary)
    assert {".", ","} <= used  # punctuation is tokens of their own


def test_works_as_a_grain_source():
    grain = pytest.importorskip("grain")
    source = SyntheticShapes("train", 10, seed=0)
    dataset = grain.MapDataset.source(source)
    assert len(dataset) == 10
    np.testing.assert_equal(dataset[3], source[3])
