"""Run configs: Python files with `get_config()`, `--config.a.b=value` overrides, and the saved copy.

A config file returns an `ml_collections.ConfigDict`. Overrides are parsed as Python literals
(`--config.optim.lr=3e-4`, `--config.mesh.data=2`, `--config.losses="{'x': 1}"`), fall back to a
plain string, and must name an existing field: a typo is an error naming the closest valid key, and a
value of the wrong type is an error naming the field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import ml_collections

CONFIG_FILE_NAME = "config.json"


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the field."""


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Import `path` and call its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"vlalign_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    return module.get_config()


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted path (`optim.lr`)."""
    keys = []
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            keys += flat_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set `config.<key> = value` for an existing field, converting ints to floats where declared."""
    *parents, leaf = key.split(".")
    node = config
    for depth, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise _unknown(config, key)
        node = node[name]
    if leaf not in node:
        raise _unknown(config, key)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict) and not isinstance(value, dict):
        raise ConfigError(f"config field {key!r} is a group; set one of its fields, e.g. {key}.{next(iter(current), '')}")
    try:
        with node.unlocked():
            node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"config field {key!r} expects {type(current).__name__}, got {value!r} "
                          f"({type(value).__name__})") from e


def _unknown(config: ml_collections.ConfigDict, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, flat_keys(config), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config field {key!r}{hint}")


def split_overrides(argv: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest, overrides = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(argv):
                key, value = body, argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{arg} needs a value")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def build_config(path: str | Path, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Load a config file, apply the overrides in order, and lock it against new fields."""
    config = load_config_file(path)
    for key, text in overrides:
        apply_override(config, key, parse_value(text))
    config.lock()
    return config


def save_config(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    path = Path(workdir) / CONFIG_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
    return path
