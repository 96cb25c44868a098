"""TFDS datasets read by random access through `tfds.data_sources` (e.g. zero-shot evaluation sets).

A dataset prepared in TFDS's `array_record` (or `parquet`) file format is read record by record with
`builder.as_data_source(split)`, which decodes to numpy without TensorFlow; datasets prepared in the
default `tfrecord` format cannot be read this way (TFDS says so, naming the folder). The dataset is
found by name under `data_dir`, from its files alone: no download and no builder code is needed.
Split slices (`"test[:1000]"`) work as in TFDS. Class names come from a `ClassLabel` label feature.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from vlalign_jax.data.records import RecordError


def _tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "Reading TFDS datasets needs tensorflow-datasets and array_record (TensorFlow is not "
            "needed): `pip install 'vlalign-jax[tfds]'`."
        ) from e
    return tfds


def _to_rgb(array: np.ndarray) -> Image.Image:
    """A decoded TFDS image (`[h, w, channels]` uint8, channels 1, 3 or 4) as a PIL RGB image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.asarray(array)).convert("RGB")


class TfdsSource:
    """Random-access source of `{"image": PIL RGB, "label": int and/or "caption": str, "index": int}`.

    `label_key=None` leaves out the label; `caption_key` adds a text feature as `caption` (str).
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None,
                 image_key: str = "image", label_key: str | None = "label", caption_key: str | None = None):
        tfds = _tfds()
        self.name, self.split = name, split
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.image_key, self.label_key, self.caption_key = image_key, label_key, caption_key
        builder = tfds.builder(name, data_dir=self.data_dir)
        self.full_name = builder.info.full_name
        features = builder.info.features
        wanted = [k for k in (image_key, label_key, caption_key) if k is not None]
        missing = [k for k in wanted if k not in features]
        if missing:
            raise KeyError(f"TFDS {self.full_name}: no feature {missing}; it has {sorted(features.keys())}")
        label = features[label_key] if label_key is not None else None
        self.class_names: list[str] | None = list(label.names) if hasattr(label, "names") else None
        self._data_source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._data_source)

    def describe(self, index: int) -> str:
        """Where record `index` comes from, for error messages."""
        where = f" in {self.data_dir}" if self.data_dir is not None else ""
        return f"TFDS {self.full_name} split {self.split!r} record {index}{where}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.describe(index)}: index out of range [0, {len(self)})")
        try:
            record = self._data_source[index]
            out: dict[str, Any] = {"image": _to_rgb(record[self.image_key]), "index": index}
            if self.label_key is not None:
                out["label"] = int(record[self.label_key])
            if self.caption_key is not None:
                caption = record[self.caption_key]
                out["caption"] = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RecordError(f"{self.describe(index)}: {type(e).__name__}: {e}") from e
        return out
