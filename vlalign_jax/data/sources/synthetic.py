"""SyntheticShapes: procedurally drawn coloured shapes with every kind of text the methods train on.

The built-in dataset of the demo configs: it needs no download and makes each method's skill
measurable. CLIP: captions bind colour, shape and size to positions. DeGLA: hard negatives that
differ from the caption by one colour swap, position swap or shape replacement (research/degla.md
section 2.2). FG-CLIP: region boxes with short and long descriptions and false short descriptions
(research/fgclip.md section 4.1). CLIP-VG: a referring expression that names exactly one object, with
its pixel xyxy box (research/clipvg.md section 3.1).

Each image shows `min_objects` to `max_objects` (default 1-3) shapes (colour, shape, size) on a dark,
lightly noisy grey background, each in its own cell of a 3x3 grid and at least one pixel from the
cell's edge, so shapes never overlap or touch and every position name ("top left", "left", "center",
...) is unique within an image. Shapes are centred on a pixel, so each (shape, size) has one
rasterisation and all five shapes stay distinct even at 5 pixels across (small shapes on 32x32
images). Objects are listed in reading order of their cells (top to bottom, then left to right), so
every text is a function of the image, and a caption with swapped colours, swapped positions or a
replaced shape is exactly false.

Texts are lowercase words separated by single spaces; "." and "," are separate tokens and are part
of `vocabulary()`. Boxes are pixel-edge xyxy: pixel (x, y) covers [x, x + 1) x [y, y + 1), and a box
is the tightest one around the pixels drawn in the object's colour.

Examples depend only on (seed, split, index). Measured on the 2-core CPU machine, one process, while
other jobs shared it: 0.32-0.39 ms per 64x64 example with every field, 0.21 ms with only image and
caption; 0.15-0.20 ms per example of the CLIP demo (32x32, 1-2 objects, image and caption).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

COLORS = {"red": (230, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
          "purple": (160, 60, 220), "orange": (250, 140, 20), "white": (235, 235, 235),
          "cyan": (40, 215, 225)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Half-span in pixels as a fraction of the largest that fits every cell: large shapes fill a cell (less
# its margin), small ones span about half as much and wander. Large spans 7 pixels at 32x32, 19 at 64x64.
SIZES = {"small": 0.55, "large": 1.0}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
SPLITS = {"train": 0, "heldout": 1, "test": 1}
NEGATIVE_KINDS = ("attribute_swap", "position_swap", "object_replacement")
FIELDS = ("index", "image", "caption", "long_caption", "negative_captions", "boxes", "box_mask",
          "region_short", "region_long", "region_negatives", "referring_expression", "referring_box")
BACKGROUND = 24
CELL_MARGIN = 1  # pixels between a shape and its cell's edge: neighbouring shapes never touch
MIN_IMAGE_SIZE = 27  # the smallest where small shapes span 5 pixels and large ones 7: all shapes distinct
NUM_REGION_NEGATIVE_CHOICES = len(COLORS) - 1 + len(SHAPES) - 1


def position_name(cell: int) -> str:
    """'top left', 'top', 'left', 'center', ...: a 3x3 grid cell (row * 3 + col) as a person says it."""
    row, col = divmod(cell, 3)
    if row == 1:
        return COLS[col]
    return ROWS[row] if col == 1 else f"{ROWS[row]} {COLS[col]}"


POSITIONS = tuple(position_name(cell) for cell in range(9))


def article(word: str) -> str:
    """'an' before a vowel sound ('an orange circle'), 'a' otherwise."""
    return "an" if word[0] in "aeiou" else "a"


@dataclasses.dataclass(frozen=True)
class SyntheticShapesConfig:
    image_size: int = 64
    max_objects: int = 3
    min_objects: int = 1
    num_negatives: int = 3
    num_region_negatives: int = 3
    background_noise: float = 4.0  # about the std of the grey noise around the background level 24

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 9 (grid cells), got {self}")
        if self.image_size < MIN_IMAGE_SIZE:  # below it small and large shapes would not differ
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {self.image_size}")
        if not 0 <= self.num_region_negatives <= NUM_REGION_NEGATIVE_CHOICES:
            raise ValueError(f"num_region_negatives must be in [0, {NUM_REGION_NEGATIVE_CHOICES}]")
        if self.num_negatives < 0 or self.background_noise < 0:
            raise ValueError(f"num_negatives and background_noise must be >= 0, got {self}")


@dataclasses.dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    size: str
    cell: int  # row * 3 + col of the 3x3 grid

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def short(self) -> str:
        return f"{article(self.color)} {self.color} {self.shape}"

    def phrase(self) -> str:
        # Sizes start with a consonant, so always "a".
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """One example's ground truth, for tests and visualisation: objects in reading order."""
    objects: list[Shape]
    image: np.ndarray  # uint8 [H, W, 3]
    boxes: np.ndarray  # float32 [num_objects, 4] pixel-edge xyxy
    masks: np.ndarray  # bool [num_objects, H, W]: the pixels drawn for each object


def cell_bounds(image_size: int) -> np.ndarray:
    """int [4]: the pixel rows (or columns) where the 3 grid cells start and end."""
    return np.round(np.arange(4) * image_size / 3).astype(int)


def half_spans(image_size: int) -> dict[str, int]:
    """Pixels from a shape's centre pixel to its edge, per size: the largest fits every cell's inside."""
    largest = (int(np.diff(cell_bounds(image_size)).min()) - 2 * CELL_MARGIN - 1) // 2
    return {size: max(int(round(fraction * largest)), 2) for size, fraction in SIZES.items()}


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Which pixels (offsets dx, dy of their centres from the shape's centre) the shape covers."""
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":  # a little smaller, so its area is close to the circle's
        return (np.abs(dx) <= 0.9 * radius) & (np.abs(dy) <= 0.9 * radius)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius
    if shape == "triangle":  # apex up, base at the bottom
        return (np.abs(dy) <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    if shape == "cross":
        thick = radius / 3
        return (((np.abs(dx) <= thick) & (np.abs(dy) <= radius))
                | ((np.abs(dy) <= thick) & (np.abs(dx) <= radius)))
    raise ValueError(f"unknown shape {shape!r}")


# -- texts -------------------------------------------------------------------------------------


def describe(objects: Sequence[Shape]) -> str:
    """The caption: every object's phrase, in reading order of their cells."""
    phrases = [o.phrase() for o in sorted(objects, key=lambda o: o.cell)]
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def relation(a: Shape, b: Shape) -> str:
    """Where a is relative to b, along the axis on which their cells differ most (ties: horizontal)."""
    (ra, ca), (rb, cb) = divmod(a.cell, 3), divmod(b.cell, 3)
    if abs(ca - cb) >= abs(ra - rb):
        return "left of" if ca < cb else "right of"
    return "above" if ra < rb else "below"


def referring_expression(target: Shape, objects: Sequence[Shape]) -> str:
    """The shortest of 'the red circle', 'the large red circle', 'the red circle at the top left'
    that matches only the target among the objects (positions are unique, so the last always does)."""
    same = [o for o in objects if (o.color, o.shape) == (target.color, target.shape)]
    if len(same) == 1:
        return f"the {target.color} {target.shape}"
    if sum(o.size == target.size for o in same) == 1:
        return f"the {target.size} {target.color} {target.shape}"
    return f"the {target.color} {target.shape} at the {target.position}"


def long_caption(objects: Sequence[Shape]) -> str:
    """The caption, then one sentence per neighbouring pair (reading order) saying how they relate."""
    sentences = [f"{describe(objects)} ."]
    for a, b in zip(objects, objects[1:]):
        sentences.append(f"{referring_expression(a, objects)} is {relation(a, b)} "
                         f"{referring_expression(b, objects)} .")
    return " ".join(sentences)


def region_long(obj: Shape, objects: Sequence[Shape]) -> str:
    """The object's phrase plus where it is relative to its nearest neighbour, if any."""
    others = [o for o in objects if o is not obj]
    if not others:
        return obj.phrase()
    r, c = divmod(obj.cell, 3)
    near = min(others, key=lambda o: abs(o.cell // 3 - r) + abs(o.cell % 3 - c))
    return f"{obj.phrase()} , {relation(obj, near)} {near.short()}"


def region_negatives(obj: Shape, sort_keys: np.ndarray, count: int) -> list[str]:
    """`count` false short descriptions of the object: another colour or another shape.
    sort_keys: [NUM_REGION_NEGATIVE_CHOICES] random numbers that pick which."""
    candidates = ([f"{article(c)} {c} {obj.shape}" for c in COLORS if c != obj.color]
                  + [f"{article(obj.color)} {obj.color} {s}" for s in SHAPES if s != obj.shape])
    return [candidates[i] for i in np.argsort(sort_keys)[:count]]


# -- hard negatives: each maker lists changes {object index: {field: new value}} whose result
# differs from the scene as a set of (colour, shape, size, cell), so its caption is false -------------


Change = dict[int, dict[str, Any]]


def apply_change(objects: Sequence[Shape], change: Change) -> list[Shape]:
    """The objects with the change made (the originals are left alone)."""
    out = list(objects)
    for i, fields in change.items():
        out[i] = dataclasses.replace(objects[i], **fields)
    return out


def _pairs(objects: Sequence[Shape], differ: Callable[[Shape, Shape], bool]) -> list[tuple[int, int]]:
    n = len(objects)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if differ(objects[i], objects[j])]


def attribute_swaps(objects: Sequence[Shape]) -> list[Change]:
    """Swap the colours of two differently coloured objects; recolour one when no two differ."""
    pairs = _pairs(objects, lambda a, b: a.color != b.color)
    if pairs:
        return [{i: {"color": objects[j].color}, j: {"color": objects[i].color}} for i, j in pairs]
    return [{i: {"color": c}} for i, o in enumerate(objects) for c in COLORS if c != o.color]


def position_swaps(objects: Sequence[Shape]) -> list[Change]:
    """Swap the positions of two objects that look different; move one to a free cell otherwise."""
    pairs = _pairs(objects, lambda a, b: (a.color, a.shape, a.size) != (b.color, b.shape, b.size))
    if pairs:
        return [{i: {"cell": objects[j].cell}, j: {"cell": objects[i].cell}} for i, j in pairs]
    free = sorted(set(range(9)) - {o.cell for o in objects})
    return [{i: {"cell": c}} for i in range(len(objects)) for c in free]


def object_replacements(objects: Sequence[Shape]) -> list[Change]:
    """Replace one object's shape by another shape."""
    return [{i: {"shape": s}} for i, o in enumerate(objects) for s in SHAPES if s != o.shape]


NEGATIVE_MAKERS = dict(zip(NEGATIVE_KINDS, (attribute_swaps, position_swaps, object_replacements)))


def _unused_caption(objects: Sequence[Shape], kind: str, draw: float, used: Sequence[str]) -> str | None:
    """A caption of this kind not in `used`, walking the candidates from a random start (usually the
    first one is new, so this costs one describe()); None when the kind has no unused caption."""
    changes = NEGATIVE_MAKERS[kind](objects)
    start = int(draw * len(changes))
    for offset in range(len(changes)):
        text = describe(apply_change(objects, changes[(start + offset) % len(changes)]))
        if text not in used:
            return text
    return None


def negative_of_kind(objects: Sequence[Shape], kind: str, draw: float) -> str:
    """One false caption of the given kind (NEGATIVE_KINDS): for evaluating each kind on its own."""
    text = _unused_caption(objects, kind, draw, ())
    if text is None:
        raise ValueError(f"no {kind} negative for {describe(objects)!r}")
    return text


def hard_negatives(objects: Sequence[Shape], draws: Sequence[float]) -> list[str]:
    """One false caption per number in `draws` (uniform [0, 1)). Negative k is of kind
    NEGATIVE_KINDS[k % 3] when that kind yields a caption not used yet, else of the next kind that
    does; captions repeat only when every kind is used up."""
    out: list[str] = []
    for k, draw in enumerate(draws):
        kinds = [NEGATIVE_KINDS[(k + shift) % 3] for shift in range(3)]
        text = next((t for kind in kinds if (t := _unused_caption(objects, kind, draw, out)) is not None),
                    None)
        # Object replacement always has candidates, so with nothing excluded it always answers.
        out.append(text if text is not None else _unused_caption(objects, "object_replacement", draw, ()))
    return out


# -- the source --------------------------------------------------------------------------------


class SyntheticShapes:
    """Random-access source (`len`, `[i]`), usable as `grain.MapDataset.source(...)`.

    split: "train" or "heldout" (alias "test"); the two draw from different random streams.
    fields: which example keys to build (None: all of FIELDS); an example's values do not depend on it.
    """

    def __init__(self, split: str = "train", num_examples: int = 100_000, seed: int = 0,
                 config: SyntheticShapesConfig = SyntheticShapesConfig(),
                 fields: Sequence[str] | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        unknown = set(fields or ()) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; available: {FIELDS}")
        self.split, self.num_examples, self.seed, self.config = split, num_examples, seed, config
        self.fields = FIELDS if fields is None else tuple(f for f in FIELDS if f in set(fields) | {"index"})
        bounds = cell_bounds(config.image_size)
        self._cell_starts = (bounds[:3] + CELL_MARGIN).tolist()  # a cell's inside, per row or column
        self._cell_insides = (np.diff(bounds) - 2 * CELL_MARGIN).tolist()
        self._half_spans = half_spans(config.image_size)
        # Shapes are centred on a pixel, so each (shape, size) has one rasterisation, drawn once here:
        # radius n + 0.4 keeps the pixel span 2n + 1 and makes even 5-pixel shapes tell apart.
        self._stamps = {}
        for size, n in self._half_spans.items():
            dy, dx = np.mgrid[-n:n + 1, -n:n + 1].astype(np.float32)
            for shape in SHAPES:
                stamp = shape_mask(shape, dx, dy, n + 0.4)
                rows, cols = np.flatnonzero(stamp.any(axis=1)), np.flatnonzero(stamp.any(axis=0))
                self._stamps[shape, size] = stamp, np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])

    def __len__(self) -> int:
        return self.num_examples

    @staticmethod
    def vocabulary() -> list[str]:
        """Every token any text can contain, "." and "," included, sorted."""
        words = {"a", "an", "and", "at", "the", "is", "of", "above", "below", ".", ","}
        words |= {w for cell in range(9) for w in position_name(cell).split()}
        return sorted(words | set(COLORS) | set(SHAPES) | set(SIZES))

    def scene(self, index: int) -> Scene:
        """The objects, image, boxes and per-object pixel masks of example `index`."""
        draws = self._sample(index)
        image, boxes, windows = self._draw(draws["objects"], draws["jitter"], draws["noise"])
        size = self.config.image_size
        masks = np.zeros((len(windows), size, size), bool)
        for mask, (y0, x0, window) in zip(masks, windows):
            mask[y0:y0 + window.shape[0], x0:x0 + window.shape[1]] = window
        return Scene(draws["objects"], image, boxes, masks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        draws = self._sample(index)
        objects, target, cfg = draws["objects"], draws["target"], self.config
        image, boxes, _ = self._draw(objects, draws["jitter"], draws["noise"])
        padded_boxes = np.zeros((cfg.max_objects, 4), np.float32)
        padded_boxes[: len(objects)] = boxes
        builders: dict[str, Callable[[], Any]] = {
            "index": lambda: int(index),
            "image": lambda: image,
            "caption": lambda: describe(objects),
            "long_caption": lambda: long_caption(objects),
            "negative_captions": lambda: hard_negatives(objects, draws["negative_draws"]),
            "boxes": lambda: padded_boxes,
            "box_mask": lambda: np.arange(cfg.max_objects) < len(objects),
            "region_short": lambda: [o.short() for o in objects],
            "region_long": lambda: [region_long(o, objects) for o in objects],
            "region_negatives": lambda: [region_negatives(o, keys, cfg.num_region_negatives)
                                         for o, keys in zip(objects, draws["region_keys"])],
            "referring_expression": lambda: referring_expression(objects[target], objects),
            "referring_box": lambda: boxes[target].copy(),
        }
        return {name: builders[name]() for name in self.fields}

    def _sample(self, index: int) -> dict[str, Any]:
        """Every random choice of the example, from one fixed-size block of uniforms (one generator
        call, and the same draws whatever the fields), then the background noise."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        cfg, m = self.config, self.config.max_objects
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        u = rng.random(11 + 5 * m + cfg.num_negatives + m * NUM_REGION_NEGATIVE_CHOICES)
        count = cfg.min_objects + int(u[0] * (m - cfg.min_objects + 1))
        cells = np.sort(np.argsort(u[1:10])[:count])  # a random subset, in reading order
        choices = (len(COLORS), len(SHAPES), len(SIZES))
        attributes = (u[10:10 + 3 * m].reshape(m, 3)[:count] * choices).astype(int).tolist()
        colors, sizes = list(COLORS), list(SIZES)
        objects = [Shape(colors[c], SHAPES[s], sizes[z], int(cell))
                   for (c, s, z), cell in zip(attributes, cells)]
        rest = u[10 + 3 * m:]
        # Integer uniform noise of about that std: 5x cheaper than rounding normal noise.
        half_width = min(int(round(np.sqrt(3.0) * cfg.background_noise)), BACKGROUND)
        noise = rng.integers(BACKGROUND - half_width, BACKGROUND + half_width + 1,
                             (cfg.image_size, cfg.image_size, 1), dtype=np.uint8)
        return {
            "objects": objects,
            "jitter": rest[: 2 * m].reshape(m, 2)[:count].tolist(),  # (x, y) place in the cell, in [0, 1)
            "target": int(rest[2 * m] * count),
            "negative_draws": rest[2 * m + 1: 2 * m + 1 + cfg.num_negatives],
            "region_keys": rest[2 * m + 1 + cfg.num_negatives:].reshape(m, -1)[:count],
            "noise": noise,
        }

    def _draw(self, objects: list[Shape], jitter: list[list[float]], noise: np.ndarray):
        """-> image uint8 [H, W, 3], boxes float32 [n, 4], and per object (y0, x0, stamp mask)."""
        image = np.repeat(noise, 3, axis=2)  # grey background
        boxes = np.zeros((len(objects), 4), np.float32)
        windows = []
        for i, (obj, (jx, jy)) in enumerate(zip(objects, jitter)):
            row, col = divmod(obj.cell, 3)
            stamp, stamp_box = self._stamps[obj.shape, obj.size]
            span = len(stamp)
            # The stamp's top-left pixel, anywhere that keeps it inside the cell's margin.
            x0 = self._cell_starts[col] + int(jx * (self._cell_insides[col] - span + 1))
            y0 = self._cell_starts[row] + int(jy * (self._cell_insides[row] - span + 1))
            image[y0:y0 + span, x0:x0 + span][stamp] = COLORS[obj.color]
            boxes[i] = stamp_box + (x0, y0, x0, y0)
            windows.append((y0, x0, stamp))
        return image, boxes, windows
