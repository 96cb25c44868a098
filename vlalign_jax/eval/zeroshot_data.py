"""Datasets, class names and prompt templates for zero-shot classification (`eval.zeroshot`).

A `ZeroShotDataset` is a random-access source of `{"image": PIL RGB, "label": int, "index": int}`
with the class names its labels index, from one of three layouts:
- `image_folder`: `ROOT/<class>/**/<image>` as torchvision's `ImageFolder` reads it: every folder
  under ROOT is a class, labels follow the sorted folder names, files are walked in sorted order and
  kept by extension (`IMAGE_EXTENSIONS`, any case); a class folder with no image is an error.
- `csv_dataset`: a table with an image path column and a label column (a class index or a class
  name); paths are relative to `image_root` (default: the table's folder). Read with
  `data.sources.csv_captions.CsvImageText`, labels checked row by row when the table is opened.
- `tfds_dataset`: a TFDS dataset prepared as array_record, read with `data.sources.tfds_source`.

Every loader takes `class_names` to replace the names the data carries (ImageNet folders and TFDS's
imagenet2012 name classes by WordNet id, e.g. `n01440764`): a list, a file of one name per line, or
`"imagenet"` for OpenAI's CLIP ImageNet names. Built-in metadata (package data under
`zeroshot_metadata/`) is copied from the OpenAI CLIP notebook `notebooks/Prompt_Engineering_for_ImageNet.ipynb`
(identical to open_clip's `zero_shot_metadata.py`): the 1000 class names, the 80 prompt templates and
the 7 of them OpenAI's forward selection picked, which it reports as a bit better than all 80.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from vlalign_jax.data.records import RecordError
from vlalign_jax.data.sources.csv_captions import CsvImageText
from vlalign_jax.data.sources.json_records import read_rgb_image

# torchvision.datasets.folder.IMG_EXTENSIONS, so the same files are found.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
METADATA = "zeroshot_metadata"
# Built-in template sets by name (file under zeroshot_metadata/).
TEMPLATE_SETS = {"imagenet": "imagenet_templates.txt", "imagenet_simple": "imagenet_templates_simple.txt"}
CLASS_NAME_SETS = {"imagenet": "imagenet_classnames.txt"}
LABEL_TYPES = ("auto", "index", "name")

ClassNames = Sequence[str] | str | os.PathLike


@dataclasses.dataclass(frozen=True)
class ZeroShotDataset:
    """A named source of labelled images; `source[i]` is `{"image", "label", "index"}` and
    `source.describe(i)` names record i's file for error messages."""

    name: str
    source: Any
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.source)


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, trailing newlines and blank lines at the end dropped; a blank
    line before the end is an error naming its line (it would shift every later class index)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [n + 1 for n, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(f"{path}: blank line {blank[0]}; expected one entry per line")
    if not lines:
        raise ValueError(f"{path}: no entries")
    return lines


def _metadata(file_name: str) -> list[str]:
    resource = resources.files(__package__).joinpath(METADATA, file_name)
    with resources.as_file(resource) as path:
        return read_list_file(path)


def imagenet_classnames() -> list[str]:
    """OpenAI CLIP's 1000 ImageNet class names in class-index order (two names occur twice, as
    published: 'missile' 657/744 and 'sunglasses' 836/837)."""
    return _metadata(CLASS_NAME_SETS["imagenet"])


def load_templates(templates: Sequence[str] | str | os.PathLike | None = None) -> list[str]:
    """Prompt templates with one `{}` each: a list as given, a built-in set by name (`TEMPLATE_SETS`:
    'imagenet' = OpenAI's 80, 'imagenet_simple' = their 7), or a file of one template per line.
    None is 'imagenet'. A name wins over a file of the same name in the working directory."""
    if templates is None:
        templates = "imagenet"
    if isinstance(templates, str) and templates in TEMPLATE_SETS:
        loaded, where = _metadata(TEMPLATE_SETS[templates]), f"template set {templates!r}"
    elif isinstance(templates, (str, os.PathLike)):
        if not Path(templates).is_file():
            raise FileNotFoundError(f"templates {templates!s}: no such file and not a built-in set "
                                    f"{sorted(TEMPLATE_SETS)}")
        loaded, where = read_list_file(templates), str(templates)
    else:
        loaded, where = list(templates), "templates"
    if not loaded:
        raise ValueError(f"{where}: no templates")
    for n, template in enumerate(loaded):
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"{where}: template {n} {template!r} must contain '{{}}' exactly once")
    return loaded


def resolve_class_names(class_names: ClassNames, where: str) -> list[str]:
    """A list of class names from a list, a built-in set name ('imagenet') or a file path."""
    if isinstance(class_names, str) and class_names in CLASS_NAME_SETS:
        return _metadata(CLASS_NAME_SETS[class_names])
    if isinstance(class_names, (str, os.PathLike)):
        if not Path(class_names).is_file():
            raise FileNotFoundError(f"{where}: class names {class_names!s}: no such file and not a "
                                    f"built-in set {sorted(CLASS_NAME_SETS)}")
        return read_list_file(class_names)
    names = list(class_names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{where}: class names must be non-empty strings, got {names[:5]}...")
    return names


def _override(found: Sequence[str], class_names: ClassNames | None, where: str) -> tuple[str, ...]:
    """`found` (the data's own names), or `class_names` in their place; the counts must match."""
    if class_names is None:
        return tuple(found)
    names = resolve_class_names(class_names, where)
    if len(names) != len(found):
        raise ValueError(f"{where}: {len(found)} classes, but {len(names)} class names were given")
    return tuple(names)


class ImageFolderSource:
    """`ROOT/<class>/**/<image>` in torchvision `ImageFolder` order: `classes` are the sorted folder
    names and `samples` the `(path, label)` pairs."""

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root}: no such directory")
        self.classes = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"image folder {self.root}: no class folders in it")
        suffixes = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[str, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            count = len(self.samples)
            for folder, _, files in sorted(os.walk(self.root / name, followlinks=True)):
                self.samples += [(os.path.join(folder, f), label) for f in sorted(files)
                                 if f.lower().endswith(suffixes)]
            if len(self.samples) == count:
                empty.append(name)
        if empty:
            raise FileNotFoundError(f"image folder {self.root}: no image ({', '.join(suffixes)}) in class "
                                    f"folders {empty}")

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return f"image {self.samples[index][0]} (record {index})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        return {"image": read_rgb_image(Path(path), self.describe(index)), "label": label, "index": index}


def image_folder(root: str | os.PathLike, class_names: ClassNames | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ZeroShotDataset:
    """A dataset from `ROOT/<class>/<image>`; prompts use the folder names unless `class_names`
    (same count, sorted-folder order) replaces them."""
    source = ImageFolderSource(root, extensions)
    return ZeroShotDataset(Path(root).name, source, _override(source.classes, class_names, f"image folder {root}"))


class CsvLabelSource:
    """Rows of a `CsvImageText` table whose second column is an integer label, checked at load."""

    def __init__(self, table: CsvImageText, labels: list[int]):
        self.table, self.labels = table, labels

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return self.table.describe(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.table[index]["image"], "label": self.labels[index], "index": index}


def _is_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def csv_dataset(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                image_column: str = "filepath", label_column: str = "label", separator: str = ",",
                class_names: ClassNames | None = None, label_type: str = "auto") -> ZeroShotDataset:
    """A dataset from a table of image paths and labels.

    `label_type`: 'index' (0-based class index; `class_names` required), 'name' (a class name; the
    classes are `class_names`, else the sorted distinct labels), or 'auto': 'index' when every label
    is an integer, else 'name' (an error when integer labels are also all class names: say which).
    A label that is empty, out of range or not a known name is an error naming the table and row.
    """
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    table = CsvImageText(path, image_root, image_column, label_column, separator)
    where = str(path)
    if not table.rows:
        raise ValueError(f"{where}: no rows")
    for n, (image, label) in enumerate(table.rows):
        if image is None or label is None or not label.strip() or not image.strip():
            raise RecordError(f"{table.describe(n)}: empty image path or label")
    labels = [label.strip() for _, label in table.rows]
    names = None if class_names is None else resolve_class_names(class_names, where)
    if label_type == "auto":
        label_type = "index" if all(_is_int(label) for label in labels) else "name"
        if label_type == "index" and names is not None and set(labels) <= set(names):
            raise ValueError(f"{where}: labels could be class indices or class names; "
                             "pass label_type='index' or 'name'")
    if label_type == "index":
        if names is None:
            raise ValueError(f"{where}: labels are class indices, so class_names must be given")
        ids = []
        for n, label in enumerate(labels):
            if not _is_int(label) or not 0 <= int(label) < len(names):
                raise RecordError(f"{table.describe(n)}: label {label!r} is not a class index in "
                                  f"[0, {len(names)})")
            ids.append(int(label))
    else:
        names = sorted(set(labels)) if names is None else names
        index_of = {name: i for i, name in reversed(list(enumerate(names)))}  # first of duplicates
        unknown = [n for n, label in enumerate(labels) if label not in index_of]
        if unknown:
            raise RecordError(f"{table.describe(unknown[0])}: label {labels[unknown[0]]!r} is not one of "
                              f"the {len(names)} class names ({len(unknown)} rows like it)")
        ids = [index_of[label] for label in labels]
    return ZeroShotDataset(Path(path).stem, CsvLabelSource(table, ids), tuple(names))


def tfds_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                 image_key: str = "image", label_key: str = "label",
                 class_names: ClassNames | None = None) -> ZeroShotDataset:
    """A TFDS split (array_record format) by name under `data_dir`; class names from its `ClassLabel`
    feature unless `class_names` replaces them (needed when the label is a plain integer)."""
    from vlalign_jax.data.sources.tfds_source import TfdsSource

    source = TfdsSource(name, split, data_dir, image_key=image_key, label_key=label_key)
    where = f"TFDS {source.full_name} split {split!r}"
    if source.class_names is None:
        if class_names is None:
            raise ValueError(f"{where}: label {label_key!r} has no class names (not a ClassLabel); "
                             "pass class_names")
        names = tuple(resolve_class_names(class_names, where))
    else:
        names = _override(source.class_names, class_names, where)
    return ZeroShotDataset(f"{name}:{split}", source, names)


__all__ = ["IMAGE_EXTENSIONS", "TEMPLATE_SETS", "CsvLabelSource", "ImageFolderSource", "ZeroShotDataset",
           "csv_dataset", "image_folder", "imagenet_classnames", "load_templates", "read_list_file",
           "resolve_class_names", "tfds_dataset"]
