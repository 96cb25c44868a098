"""Visual-grounding data for CLIP-VG: one (image, referring expression, box) per example, transformed
as the reference does and tokenized to the text tower's length (CLIP's 77) (research/clipvg.md section 3).

`config.data.name` is `synthetic_shapes` (the built-in shapes with their referring expressions, e.g.
"the red circle", "the small red circle", "the red circle at the top left") or `splits` (CLIP-VG /
TransVG split files, `.pth` or the `.jsonl` form of `vlalign data convert-splits`):

    data.split_root/<dataset>/<dataset>_<split>.pth|.jsonl, images under data.image_root

with `data.dataset` one of unc, unc+, gref, gref_umd, referit, flickr, `data.train_split` `train`
(fully supervised) or `train_pseudo` (unsupervised pseudo-labels) and `data.eval_splits` the splits
evaluated (empty: the ones the paper reports for the dataset, `EVAL_SPLITS`). Per example the pipeline yields `pixels` [S, S, 3] (ImageNet
mean/std, pasted into a zero canvas), `pad_mask` [S, S] (True on padding), `tokens` [L],
`box` [4] normalised (cx, cy, w, h) and `box_xyxy` [4] in canvas pixels. `data.train_scales` replaces
the reference's long-side scales `imsize - 32 i`, i = 0..6 (they need imsize > 192).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from vlalign_jax.data.grounding_transforms import GroundingTransform
from vlalign_jax.data.records import RecordError

GROUNDING_SOURCES = ("synthetic_shapes", "splits")


@dataclasses.dataclass(frozen=True)
class SyntheticReferring:
    """The synthetic shapes as grounding records: {"image", "box" xyxy pixels, "expression"}."""

    shapes: Any

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.shapes[index]
        return {"image": example["image"], "box": np.asarray(example["referring_box"], np.float32),
                "expression": example["referring_expression"], "index": index}


@dataclasses.dataclass(frozen=True)
class GroundingData:
    """Training source, evaluation sources by split name, and the preprocessing of both."""

    train: Any
    evaluation: dict[str, Any]
    tokenizer: Callable[[Sequence[str]], np.ndarray]
    vocab_size: int
    train_transform: GroundingTransform
    eval_transform: GroundingTransform

    def _arrays(self, out: dict[str, Any]) -> dict[str, np.ndarray]:
        expression = out["expression"]
        if not expression.strip():
            raise RecordError("empty expression")
        return {"pixels": out["pixels"], "pad_mask": out["pad_mask"], "tokens": self.tokenizer([expression])[0],
                "box": out["box"], "box_xyxy": out["box_xyxy"]}

    def train_preprocess(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self._arrays(self.train_transform(example, rng))

    def eval_preprocess(self, example: dict) -> dict[str, np.ndarray]:
        return self._arrays(self.eval_transform(example))


# The splits the reference reports per dataset (research/clipvg.md 5.2).
EVAL_SPLITS = {"unc": ("val", "testA", "testB"), "unc+": ("val", "testA", "testB"), "gref": ("val",),
               "gref_umd": ("val", "test"), "referit": ("val", "test"), "flickr": ("val", "test")}


def _split_source(data: ml_collections.ConfigDict, split: str) -> Any:
    """`<split_root>/<dataset>/<dataset>_<split>.jsonl` when converted, else the `.pth`; images from
    `data.image_root`, or the reference's folder for the dataset under `data.data_root`."""
    from vlalign_jax.data.sources.grounding_splits import GroundingSplit, image_dir, split_path

    path = split_path(data.split_root, data.dataset, split)
    if path.with_suffix(".jsonl").exists():
        path = path.with_suffix(".jsonl")
    images = data.get("image_root") or image_dir(data.data_root, data.dataset)
    return GroundingSplit(path, images, data.dataset, released_code=data.get("released_code", False),
                          prompt_template=data.get("prompt_template") or None,
                          allow_pickle=data.get("allow_pickle", False))


def closed_vocabulary(data: ml_collections.ConfigDict) -> list[str] | None:
    """The word list of `data.tokenizer = "words"`: the synthetic shapes' for their own runs and for
    split files of shapes (`data.vocabulary = "synthetic_shapes"`, the curriculum demo); None for open
    text (CLIP's BPE)."""
    named = data.get("vocabulary", "")
    if named not in ("", "synthetic_shapes"):
        raise ValueError(f"unknown data.vocabulary {named!r}; expected '' or 'synthetic_shapes'")
    if data.name == "synthetic_shapes" or named:
        from vlalign_jax.data.sources.synthetic import SyntheticShapes

        return SyntheticShapes.vocabulary()
    return None


def grounding_data(data: ml_collections.ConfigDict, image_size: int, context_length: int) -> GroundingData:
    """The sources and preprocessing `config.data` names, for a model of `image_size` pixels and
    `context_length` text positions (77 for CLIP-VG)."""
    from vlalign_jax.data.image_text import make_tokenizer

    released = data.get("released_code", False)
    if data.name == "synthetic_shapes":
        from vlalign_jax.data.sources.synthetic import SyntheticShapes, SyntheticShapesConfig

        shapes = SyntheticShapesConfig(image_size=data.get("synthetic_image_size", image_size),
                                       max_objects=data.get("max_objects", 3))
        fields = ("image", "referring_expression", "referring_box")
        train = SyntheticReferring(SyntheticShapes("train", data.num_train, data.seed, shapes, fields))
        evaluation = {"val": SyntheticReferring(SyntheticShapes("heldout", data.num_heldout, data.seed, shapes,
                                                                fields))}
    elif data.name == "splits":
        train = _split_source(data, data.train_split)
        from vlalign_jax.data.sources.grounding_splits import layout

        splits = tuple(data.get("eval_splits", ())) or EVAL_SPLITS[layout(data.dataset).name]
        evaluation = {split: _split_source(data, split) for split in splits}
    else:
        raise ValueError(f"unknown data.name {data.name!r} for grounding; available: {GROUNDING_SOURCES}")
    tokenizer, vocab_size = make_tokenizer(data, context_length, closed_vocabulary(data))
    train_transform = GroundingTransform(
        train=True, imsize=image_size, scales=tuple(data.get("train_scales", ())) or None,
        crop_prob=data.get("crop_prob", 0.5),
        color_jitter=data.get("color_jitter", True), horizontal_flip_prob=data.get("horizontal_flip_prob", 0.0),
        released_code=released)
    eval_transform = GroundingTransform(train=False, imsize=image_size, released_code=released)
    return GroundingData(train, evaluation, tokenizer, vocab_size, train_transform, eval_transform)
