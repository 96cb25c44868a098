"""Run configs: Python files with `get_config()`, `--config.a.b=value` overrides, and the saved copy.

A config file returns an `ml_collections.ConfigDict`. Overrides are parsed as Python literals
(`--config.optim.lr=3e-4`, `--config.mesh.data=2`, `--config.model.overrides="{'text': {'width': 64}}"`),
fall back to a plain string, and must name an existing field: a typo is an error naming the closest
valid key, and a value of the wrong type is an error naming the field. `build_config` then checks the
engine's value ranges (`config_checks.py`), so a bad override fails before any workdir or device is
touched.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

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
    """`text` as a Python literal (`3`, `0.1`, `(1, 2)`, `{'a': 1}`, `None`), else the string itself.

    Text that is not a literal, malformed literals (`[1,`) included, stays a string: a string field
    takes it as written, any other field rejects it naming the field (`apply_override`)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        # TypeError: an unhashable set member or dict key (`{[]: 1}`); the others: nesting too deep.
        return text


def apply_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set `config.<key> = value` for an existing field, converting ints to floats where declared.

    A group (`model.overrides`) can be replaced by a dict, but a top-level section (`train`, `optim`)
    cannot: replacing it would drop every field the dict does not repeat."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise _unknown(config, key)
        node = node[name]
    if leaf not in node:
        raise _unknown(config, key)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        example = f"{key}.{next(iter(current))}" if len(current) else ""
        if not parents and len(current):
            raise ConfigError(f"config field {key!r} is a section; set its fields one at a time, e.g. "
                              f"--config.{example}=...")
        if not isinstance(value, dict):
            what = f"a group; set one of its fields, e.g. {example}, or give a dict" if example else "a dict"
            raise ConfigError(f"config field {key!r} is {what}, got {shown(value)} ({type(value).__name__})")
    if isinstance(value, dict) and not all(isinstance(k, str) for k in _dict_keys(value)):
        # ConfigDict would take them, but the saved config.json could not be written (sorted keys).
        raise ConfigError(f"config field {key!r} takes dicts with string keys only, got {shown(value)}")
    try:
        with node.unlocked():
            node[leaf] = value
    except (TypeError, OverflowError) as e:  # ml_collections' type-safety: the declared type cannot hold it
        hint = (": values are Python literals (3, 0.1, True, None, (1, 2), {'a': 1}) and any other text is a "
                "string" if isinstance(value, str) else ": too large for a float" if isinstance(e, OverflowError)
                else "")
        raise ConfigError(f"config field {key!r} expects {type(current).__name__}, got {shown(value)} "
                          f"({type(value).__name__}){hint}") from e
    except (ValueError, KeyError) as e:  # e.g. a dict key with a dot, which ConfigDict does not allow
        raise ConfigError(f"config field {key!r} cannot take {shown(value)}: {e}") from e


def _dict_keys(value: dict) -> list:
    """Every key of `value` and of the dicts nested in it (ConfigDict keys must be strings)."""
    keys = []
    for k, v in value.items():
        keys.append(k)
        if isinstance(v, dict):
            keys += _dict_keys(v)
    return keys


def shown(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for error messages (a fuzzed value can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


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
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                key, value = body, argv[i + 1]
                i += 1
            else:  # last, or followed by another option: `--config.a --workdir w` must not set a="--workdir"
                following = f" (the next argument is the option {argv[i + 1]!r})" if i + 1 < len(argv) else ""
                raise ConfigError(f"config field {body!r} needs a value: {arg}=VALUE or {arg} VALUE{following}")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def build_config(path: str | Path, overrides: Sequence[tuple[str, str]] = (),
                 add_defaults: Callable[[ml_collections.ConfigDict], None] | None = None
                 ) -> ml_collections.ConfigDict:
    """Load a config file, let `add_defaults` fill in fields a command adds (the curriculum's group),
    apply the overrides in order, check the engine's fields (`config_checks.check_config`) and lock it
    against new fields."""
    from vlalign_jax.train.config_checks import check_config  # imports this module's ConfigError

    config = load_config_file(path)
    if add_defaults is not None:
        add_defaults(config)
    for key, text in overrides:
        apply_override(config, key, parse_value(text))
    check_config(config)
    config.lock()
    return config


def save_config(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    path = Path(workdir) / CONFIG_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
    return path
