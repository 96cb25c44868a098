"""Readers for the public files of the compositional benchmarks SugarCrepe, ARO and VALSE.

Each reader turns one suite's public annotation files into `CompositionalItem`s: an image (a path, or
a path and a crop box), the caption that describes it, the captions that do not, and the subset the
item is scored in. Scoring lives in `vlalign_jax.eval.compositional`.

- SugarCrepe (Hsieh et al., NeurIPS 2023 D&B; RAIVNLab/sugar-crepe `data/*.json`): one dict per
  subset, id -> {filename, caption, negative_caption}; images are COCO val2017.
- ARO (Yuksekgonul et al., ICLR 2023; mertyg/vision-language-models-are-bows
  `dataset_zoo/aro_datasets.py`): VG-Relation and VG-Attribution are lists of {image_path, bbox_x,
  bbox_y, bbox_w, bbox_h, true_caption, false_caption, relation_name | attributes}, the image cropped
  to the box. COCO-Order and Flickr30k-Order are built at load time from the Karpathy test splits
  (`coco_karpathy_test.json`, `flickr30k_test.json`: lists of {image, caption: [...]}): every caption
  against 4 word-order perturbations (`order_negatives`).
- VALSE (Parcalabescu et al., ACL 2022; Heidelberg-NLP/VALSE `data/*.json`): one dict per piece,
  id -> {dataset, image_file, caption, foil, mturk, ...}; only records that at least 2 of 3
  annotators validated (`mturk.caption >= 2`) are kept, as the VALSE README prescribes.

Expected layout under the data root (`vlalign eval --data DIR`):

    DIR/sugarcrepe/{replace_obj,replace_att,replace_rel,swap_obj,swap_att,add_obj,add_att}.json
    DIR/coco/val2017/000000xxxxxx.jpg            SugarCrepe; VALSE plurals, relations
    DIR/aro/visual_genome_{relation,attribution}.json
    DIR/aro/images/<image_path>                  the reference's vgr_vga_images.zip, unpacked
    DIR/coco/coco_karpathy_test.json             "image" is relative to DIR/coco (val2014/...)
    DIR/flickr30k/flickr30k_test.json            "image" is relative to DIR/flickr30k
                                                 (flickr30k-images/...)
    DIR/valse/<piece>.json                       VALSE data/*.json
    DIR/visual7w/images/v7w_*.jpg                VALSE existence, counting-*
    DIR/swig/images_512/*.jpg                    VALSE action-replacement, actant-swap
    DIR/coco/train2014, DIR/coco/val2014         VALSE coreference-standard (VisDial v1.0), foil-it
    DIR/visdial/VisualDialog_val2018/*.jpg       VALSE coreference-hard

A malformed record or a missing image raises `RecordError` naming the file and the record.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from vlalign_jax.data.records import RecordError
from vlalign_jax.eval.benchmark_files import read_json

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, as PIL crops


class CompositionalItem(NamedTuple):
    """One test case: `positive` must score above every caption in `negatives`."""

    image: str | tuple[str, Box]  # a path, or (path, crop box)
    positive: str
    negatives: list[str]
    subset: str
    group: str = ""  # VG-Relation: the relation; VG-Attribution: the attribute pair; else ""


SUGARCREPE_SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att",
                      "add_obj", "add_att")
ARO_SUBSETS = ("VG-Relation", "VG-Attribution", "COCO-Order", "Flickr30k-Order")
VALSE_PIECES = ("existence", "plurals", "counting-hard", "counting-small-quant",
                "counting-adversarial", "relations", "action-replacement", "actant-swap",
                "coreference-standard", "coreference-hard", "foil-it")
# Where each VALSE `dataset` value keeps its images, relative to the data root; the first folder
# that holds the file wins (VisDial v1.0 reuses COCO 2014 images and adds its own val2018 ones).
VALSE_IMAGE_DIRS: dict[str, tuple[str, ...]] = {
    "visual7w": ("visual7w/images",),
    "coco2017": ("coco/val2017",),
    "coco_2017": ("coco/val2017",),
    "SWiG": ("swig/images_512",),
    "VisDial_v1.0": ("coco/train2014", "coco/val2014", "visdial/VisualDialog_val2018"),
    "FOIL dataset": ("coco/val2014",),
}
# Relations left out of VG-Relation's macro accuracy: swapping their arguments gives a caption that
# may still be true. Typed from the reference notebook "Replicate ARO! VG-Relation,
# VG-Attribution.ipynb"; the maintainers confirm the paper's numbers drop them (bows issue #37).
VG_SYMMETRIC_RELATIONS = frozenset((
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing",
    "chewing", "cleaning", "climbing", "close to", "coming from", "coming out of", "contain",
    "crossing", "dragging", "draped over", "drinking", "drinking from", "driving", "driving down",
    "driving on", "eating from", "eating in", "enclosing", "exiting", "facing", "filled with",
    "floating in", "floating on", "flying", "flying above", "flying in", "flying over",
    "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off",
    "hanging over", "higher than", "holding onto", "hugging", "in between", "jumping off",
    "jumping on", "jumping over", "kept in", "larger than", "leading", "leaning over", "leaving",
    "licking", "longer than", "looking in", "looking into", "looking out", "looking over",
    "looking through", "lying next to", "lying on top of", "making", "mixed with", "mounted on",
    "moving", "on the back of", "on the edge of", "on the front of", "on the other side of",
    "opening", "painted on", "parked at", "parked beside", "parked by", "parked in",
    "parked in front of", "parked near", "parked next to", "perched on", "petting", "piled on",
    "playing", "playing in", "playing on", "playing with", "pouring", "reaching for", "reading",
    "reflected on", "riding on", "running in", "running on", "running through", "seen through",
    "sitting behind", "sitting beside", "sitting by", "sitting in front of", "sitting near",
    "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against",
    "standing around", "standing behind", "standing beside", "standing in front of",
    "standing near", "standing next to", "staring at", "stuck in", "surrounding", "swimming in",
    "swinging", "talking to", "topped with", "touching", "traveling down", "traveling on", "tying",
    "typing on", "underneath", "wading in", "waiting for", "walking across", "walking by",
    "walking down", "walking next to", "walking through", "working in", "working on", "worn on",
    "wrapped around", "wrapped in", "by", "of", "near", "next to", "with", "beside",
    "on the side of", "around"))
VGA_MIN_PAIR_COUNT = 25  # the reference drops attribute pairs with fewer test cases
ORDER_MAX_WORDS = 30  # the reference truncates Order captions to 30 words

Tagger = Callable[[str], list[tuple[str, str]]]  # caption -> [(token, Penn Treebank tag)]
LAYOUT_HINT = "see vlalign_jax.eval.compositional_formats for the expected layout under the data root"
NOUN_TAGS = frozenset(("NN", "NNS", "NNP", "NNPS"))
ADJ_TAGS = frozenset(("JJ", "JJR", "JJS"))


# ----------------------------------------------------------------------------- shared helpers

def _entries(data: Any, path: str, container: type) -> list[tuple[Any, Any]]:
    """(record id, record) pairs of a dict (ids are keys) or a list (ids are indices)."""
    if not isinstance(data, container):
        raise RecordError(f"{path}: expected a JSON {container.__name__} of records, "
                          f"got {type(data).__name__}")
    return list(data.items()) if isinstance(data, dict) else list(enumerate(data))


def _where(path: str, record_id: Any) -> str:
    return f"{path} record {record_id!r}"


def _text(record: Any, key: str, where: str) -> str:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected an object, got {type(record).__name__}")
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _number(record: dict, key: str, where: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise RecordError(f"{where}: field {key!r} must be a number, got {value!r}")
    return float(value)


def _image(path: str, where: str) -> str:
    if not os.path.isfile(path):
        raise RecordError(f"{where}: image {path} not found")
    return path


# ----------------------------------------------------------------------------- SugarCrepe

def load_sugarcrepe(data_dir: str, subsets: Sequence[str] | None = None) -> list[CompositionalItem]:
    """Items of DIR/sugarcrepe/<subset>.json, images from DIR/coco/val2017."""
    items = []
    image_dir = os.path.join(data_dir, "coco", "val2017")
    for subset in subsets or SUGARCREPE_SUBSETS:
        path = os.path.join(data_dir, "sugarcrepe", f"{subset}.json")
        for record_id, record in _entries(read_json(path, LAYOUT_HINT), path, dict):
            where = _where(path, record_id)
            image = _image(os.path.join(image_dir, _text(record, "filename", where)), where)
            items.append(CompositionalItem(image, _text(record, "caption", where),
                                           [_text(record, "negative_caption", where)], subset))
    return items


# ----------------------------------------------------------------------------- ARO

def pre_caption(caption: str, max_words: int = ORDER_MAX_WORDS) -> str:
    """The reference's caption cleaning (BLIP's `pre_caption`): lower-case, some punctuation to
    spaces, runs of whitespace to one space, at most `max_words` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def word_tokens(text: str) -> list[str]:
    """Words and punctuation marks; stands in for `nltk.word_tokenize`, which the reference uses
    for the trigram perturbations (nltk is not a dependency here)."""
    return re.findall(r"\w+(?:['’]\w+)*|[^\w\s]", text)


def spacy_tagger(model: str = "en_core_web_sm") -> Tagger:
    """The reference's tagger (spaCy `en_core_web_sm`, Penn tags from `token.tag_`)."""
    try:
        import spacy
        nlp = spacy.load(model)
    except (ImportError, OSError) as e:
        raise RuntimeError(
            "COCO-Order / Flickr30k-Order need a part-of-speech tagger: `pip install spacy && python "
            f"-m spacy download {model}`, pass tagger=..., or leave out the Order subsets") from e
    return lambda text: [(token.text, token.tag_) for token in nlp(text)]


def _permute_where(tokens: list[str], mask: list[bool], rng: np.random.Generator) -> list[str]:
    picked = [t for t, m in zip(tokens, mask) if m]
    shuffled = iter(rng.permutation(np.array(picked, dtype=object)).tolist() if picked else [])
    return [next(shuffled) if m else t for t, m in zip(tokens, mask)]


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


def order_negatives(caption: str, tagger: Tagger, rng: np.random.Generator) -> list[str]:
    """The reference's four perturbations of `caption`, in its order: shuffle nouns among nouns and
    adjectives among adjectives; shuffle every other token; shuffle within each trigram; shuffle
    the trigrams. Raw text, before `pre_caption`."""
    tagged = tagger(caption)
    tokens = [token for token, _ in tagged]
    nouns = _permute_where(tokens, [tag in NOUN_TAGS for _, tag in tagged], rng)
    nouns_and_adjs = _permute_where(nouns, [tag in ADJ_TAGS for _, tag in tagged], rng)
    others = _permute_where(tokens, [tag not in NOUN_TAGS | ADJ_TAGS for _, tag in tagged], rng)
    words = word_tokens(caption)
    within = [t for trigram in _trigrams(words)
              for t in rng.permutation(np.array(trigram, dtype=object)).tolist()]
    trigrams = _trigrams(words)
    across = [t for k in rng.permutation(len(trigrams)) for t in trigrams[k]]
    return [" ".join(tokens) for tokens in (nouns_and_adjs, others, within, across)]


def _vg_items(data_dir: str, subset: str) -> list[CompositionalItem]:
    name = "relation" if subset == "VG-Relation" else "attribution"
    path = os.path.join(data_dir, "aro", f"visual_genome_{name}.json")
    items = []
    for record_id, record in _entries(read_json(path, LAYOUT_HINT), path, list):
        where = _where(path, record_id)
        image = _image(os.path.join(data_dir, "aro", "images", _text(record, "image_path", where)),
                       where)
        x, y, w, h = (_number(record, f"bbox_{k}", where) for k in "xywh")
        if w <= 0 or h <= 0:
            raise RecordError(f"{where}: empty crop box (bbox_w={w}, bbox_h={h})")
        if subset == "VG-Relation":
            group = _text(record, "relation_name", where)
        else:
            attributes = record.get("attributes")
            if not (isinstance(attributes, list) and len(attributes) == 2
                    and all(isinstance(a, str) for a in attributes)):
                raise RecordError(f"{where}: field 'attributes' must be two strings, "
                                  f"got {attributes!r}")
            group = f"{attributes[0]}_{attributes[1]}"
        items.append(CompositionalItem((image, (x, y, x + w, y + h)),
                                       _text(record, "true_caption", where),
                                       [_text(record, "false_caption", where)], subset, group))
    return items


def _order_items(data_dir: str, subset: str, tagger: Tagger, rng: np.random.Generator,
                 max_words: int) -> list[CompositionalItem]:
    root, name = (("coco", "coco_karpathy_test.json") if subset == "COCO-Order"
                  else ("flickr30k", "flickr30k_test.json"))
    path = os.path.join(data_dir, root, name)
    items = []
    for record_id, record in _entries(read_json(path, LAYOUT_HINT), path, list):
        where = _where(path, record_id)
        image = _image(os.path.join(data_dir, root, _text(record, "image", where)), where)
        captions = record.get("caption")
        if not (isinstance(captions, list) and captions
                and all(isinstance(c, str) and c.strip() for c in captions)):
            raise RecordError(f"{where}: field 'caption' must be a list of non-empty strings, "
                              f"got {captions!r}")
        for caption in captions:
            positive = pre_caption(caption, max_words)
            negatives = [pre_caption(n, max_words) for n in order_negatives(caption, tagger, rng)]
            # A perturbation that left the word order as it was is no negative. The reference keeps
            # it, and its argmax gives the exact tie to the positive (listed first); dropping it
            # scores the same while ties elsewhere count as wrong.
            negatives = [n for n in negatives if word_tokens(n) != word_tokens(positive)]
            items.append(CompositionalItem(image, positive, negatives, subset))
    return items


def load_aro(data_dir: str, subsets: Sequence[str] | None = None, tagger: Tagger | None = None,
             seed: int = 1, max_words: int = ORDER_MAX_WORDS) -> list[CompositionalItem]:
    """Items of the ARO subsets (default all four). The Order subsets draw their perturbations
    from `seed` and tag parts of speech with `tagger` (default: spaCy, as the reference does); the
    reference draws from its global RNG, so perturbations match it in kind, not caption by
    caption."""
    rng = np.random.default_rng(seed)
    items = []
    for subset in subsets or ARO_SUBSETS:
        if subset in ("VG-Relation", "VG-Attribution"):
            items += _vg_items(data_dir, subset)
        elif subset in ("COCO-Order", "Flickr30k-Order"):
            tagger = tagger or spacy_tagger()
            items += _order_items(data_dir, subset, tagger, rng, max_words)
        else:
            raise ValueError(f"unknown ARO subset {subset!r}; known: {ARO_SUBSETS}")
    return items


# ----------------------------------------------------------------------------- VALSE

def _valse_image(data_dir: str, record: dict, where: str,
                 image_dirs: dict[str, tuple[str, ...]]) -> str:
    dataset = _text(record, "dataset", where)
    if dataset not in image_dirs:
        raise RecordError(f"{where}: no image folder known for dataset {dataset!r}; known: "
                          f"{sorted(image_dirs)} (pass image_dirs=...)")
    image_file = _text(record, "image_file", where)
    tried = [os.path.join(data_dir, folder, image_file) for folder in image_dirs[dataset]]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise RecordError(f"{where}: image {image_file} not found in any of {tried}")


def load_valse(data_dir: str, pieces: Sequence[str] | None = None, valid_only: bool = True,
               image_dirs: dict[str, tuple[str, ...]] | None = None) -> list[CompositionalItem]:
    """Items of DIR/valse/<piece>.json (default all eleven pieces). The caption's foil is the
    negative (`foil`, or every entry of `foils` in files written in that older form)."""
    image_dirs = {**VALSE_IMAGE_DIRS, **(image_dirs or {})}
    items = []
    for piece in pieces or VALSE_PIECES:
        path = os.path.join(data_dir, "valse", f"{piece}.json")
        for record_id, record in _entries(read_json(path, LAYOUT_HINT), path, dict):
            where = _where(path, record_id)
            caption = _text(record, "caption", where)
            if valid_only:
                mturk = record.get("mturk")
                votes = mturk.get("caption") if isinstance(mturk, dict) else None
                if isinstance(votes, bool) or not isinstance(votes, int):
                    raise RecordError(f"{where}: field 'mturk' must hold an integer 'caption' vote "
                                      f"count, got {mturk!r}")
                if votes < 2:
                    continue
            if "foils" in record:
                foils = record["foils"]
                if not (isinstance(foils, list) and foils
                        and all(isinstance(f, str) and f.strip() for f in foils)):
                    raise RecordError(f"{where}: field 'foils' must be a list of non-empty strings, "
                                      f"got {foils!r}")
            else:
                foils = [_text(record, "foil", where)]
            image = _valse_image(data_dir, record, where, image_dirs)
            items.append(CompositionalItem(image, caption, list(foils), piece))
    return items
