"""Named architectures with a config file's `model.overrides` applied, for every model family.

An override mapping mirrors the config dataclass: `{"vision": {"width": 64}, "embed_dim": 32}` replaces
fields of the nested `vision` config and the top-level `embed_dim`; for CLIP-VG, `{"clip": {"text":
{...}}, "hidden_dim": 64}` reaches into its CLIP. Lists become tuples (config files and the command
line give lists; the frozen configs hold tuples, which hash).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

Config = TypeVar("Config")


def with_overrides(base: Config, overrides: Mapping[str, Any], where: str = "model.overrides") -> Config:
    """`base` (a frozen dataclass) with `overrides` applied, nested configs field by field; an unknown
    field is a KeyError naming its path."""
    fields = {f.name for f in dataclasses.fields(base)}
    changes = {}
    for key in overrides.keys():
        value = overrides[key]
        if key not in fields:
            raise KeyError(f"{where}.{key}: {type(base).__name__} has no field {key!r}; it has {sorted(fields)}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and hasattr(value, "keys"):  # a dict or a ConfigDict
            value = with_overrides(current, value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(base, **changes)
