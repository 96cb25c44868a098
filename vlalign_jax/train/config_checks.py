"""Range checks for the fields the training engine reads, run once a config's overrides are applied.

`build_config` calls `check_config`, so a value the engine cannot use (`train.steps=0`,
`optim.lr=nan`, two mesh axes of -1, `data.on_error="ignore"`) is a `ConfigError` naming the field
and its allowed range before a workdir is written or a device is touched, instead of a crash (or a
silently wrong run) deep in the loop.

Each rule is what the code consuming the field needs: train/loop.py (steps, epochs, intervals,
accumulation, EMA, seeds), train/optim.py (the optax chain and its schedule), parallel/mesh.py (axis
sizes), data/pipeline.py and data/records.py (threads, workers, bad-record policy). Only fields the
config has are checked: configs differ by method, and the engine reads most fields with a default.
This module imports neither jax nor optax, so the CLI reports config errors without loading them;
the constants copied from those modules are compared with the originals in tests/train/test_config.py.
(config.py imports this module inside `build_config`: this one needs its `ConfigError`.)
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import pkgutil
import re
import struct
from pathlib import Path
from typing import Any, Callable

import ml_collections

from vlalign_jax.data.records import ON_ERROR
from vlalign_jax.train.config import ConfigError, shown

# Copies of optim.DECAY_RULES and mesh.MESH_AXES (those modules import jax and optax).
DECAY_RULES = ("matrices", "all_but_norms_and_biases", "all")
MESH_AXES = ("data", "fsdp", "tensor")
# The step counter and every step count the schedule compares against it are int32 on device.
INT32_MAX = 2**31 - 1
# jax.random.PRNGKey takes an int64; grain's shuffle and random_map take 0 .. 2**32 - 1.
INT64_RANGE = (-(2**63), 2**63 - 1)
GRAIN_SEED_RANGE = (0, 2**32 - 1)
# Optimizer hyperparameters become float32 on device: they must stay finite there, and XLA flushes
# numbers below the smallest normal float32 to 0 (an eps of 1e-40 divides a zero gradient by 0).
FLOAT32_TINY = 1.1754943508222875e-38

_MISSING = object()


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise `ConfigError` naming the first engine field whose value is outside its allowed range."""
    _check_method(config)
    _check_train(config)
    _check_optim(config)
    _check_mesh(config)
    _check_data(config)
    _integer(config, "eval.batch_size", low=1)  # examples per encoder call in every evaluator


def _check_method(config: ml_collections.ConfigDict) -> None:
    """`method` names a module of vlalign_jax.methods (found without importing it: that needs jax)."""
    name = _get(config, "method")
    if name is _MISSING:
        return
    known = _method_modules()
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config field 'method' must name a module of vlalign_jax.methods "
                          f"({', '.join(known)}), got {shown(name)}{hint}")


def _method_modules() -> list[str]:
    """The modules of vlalign_jax.methods defining `make(config)` (make_method's contract), read as text."""
    spec = importlib.util.find_spec("vlalign_jax.methods")
    locations = list(spec.submodule_search_locations or ()) if spec else []
    names = []
    for module in pkgutil.iter_modules(locations):
        path = Path(module.module_finder.path) / f"{module.name}.py"
        if not module.ispkg and path.is_file() and re.search(r"^def make\(", path.read_text(), re.MULTILINE):
            names.append(module.name)
    return sorted(names)


def _check_train(config: ml_collections.ConfigDict) -> None:
    # train.epochs > 0 makes setup_run derive train.steps from the dataset size; 0 / None leave it alone.
    epochs = _number(config, "train.epochs", low=0, none_ok=True)
    if epochs:
        _integer(config, "train.steps", low=0, high=INT32_MAX, none_ok=True)  # overwritten by setup_run
    else:
        _integer(config, "train.steps", low=1, high=INT32_MAX,
                 note=" (or set 'train.epochs' > 0)" if _get(config, "train.epochs") is not _MISSING else "")
    batch_size = _integer(config, "train.batch_size", low=1)
    _integer(config, "train.checkpoint_every", low=1)  # step % checkpoint_every
    _integer(config, "train.log_every", low=1)  # step % log_every
    _integer(config, "train.eval_every", low=0, none_ok=True, note=" (0 = never)")
    _integer(config, "train.keep_checkpoints", low=1, none_ok=True, note=" (None = keep all)")
    accum = _integer(config, "train.accum_steps", low=1)
    if batch_size is not None and accum is not None and batch_size % accum:
        raise ConfigError(f"config field 'train.batch_size' (={batch_size}) must be divisible by "
                          f"'train.accum_steps' (={accum}): each micro-batch is batch_size / accum_steps")
    # ema = decay * ema + (1 - decay) * params: a convex combination (0 or None = no EMA, 1 = frozen copy).
    _number(config, "train.ema_decay", low=0, high=1, none_ok=True, float32=True)
    seed = _integer(config, "train.seed", low=INT64_RANGE[0], high=INT64_RANGE[1])
    if seed is not None and _get(config, "data.seed") is _MISSING:  # the data pipeline's seed too
        _integer(config, "train.seed", low=GRAIN_SEED_RANGE[0], high=GRAIN_SEED_RANGE[1],
                 note=" (it also seeds the data pipeline, as data.seed is not set)")


def _check_optim(config: ml_collections.ConfigDict) -> None:
    _number(config, "optim.lr", low=0, float32=True)
    _integer(config, "optim.warmup_steps", low=0, high=INT32_MAX)
    _number(config, "optim.warmup_fraction", low=0, high=1)  # of train.steps, like HF's warmup_ratio
    _number(config, "optim.weight_decay", low=0, float32=True)
    _number(config, "optim.final_lr_fraction", low=0, high=1, float32=True)  # cosine decays lr to lr * this
    _number(config, "optim.max_grad_norm", low=0, none_ok=True, float32=True, note=" (0 or None = no clipping)")
    # Adam's bias correction divides by 1 - b**t (so b must stay below 1 as a float32), and a zero
    # gradient by sqrt(nu) + eps.
    _number(config, "optim.b1", low=0, high=1, high_open=True, float32=True)
    _number(config, "optim.b2", low=0, high=1, high_open=True, float32=True)
    _number(config, "optim.eps", low=FLOAT32_TINY, float32=True, note=" (a smaller one is 0 on device)")
    _choice(config, "optim.decay_rule", DECAY_RULES)
    freeze = _get(config, "optim.freeze")
    if freeze is not _MISSING:
        if not isinstance(freeze, (tuple, list)) or not all(isinstance(p, str) for p in freeze):
            raise ConfigError(f"config field 'optim.freeze' must be a tuple of regular expressions "
                              f"(parameter paths to freeze), got {shown(freeze)}")
        for pattern in freeze:
            _regex("optim.freeze", pattern)
    multipliers = _get(config, "optim.lr_multipliers")
    if multipliers is not _MISSING:
        if not isinstance(multipliers, (ml_collections.ConfigDict, dict)):
            raise ConfigError(f"config field 'optim.lr_multipliers' must be a dict of regular expression -> "
                              f"learning-rate multiplier, got {shown(multipliers)}")
        for pattern, value in multipliers.items():
            _regex("optim.lr_multipliers", pattern)
            if not _is_number(value) or not math.isfinite(_as_float32(value)) or value < 0:
                raise ConfigError(f"config field 'optim.lr_multipliers' must map each pattern to a finite "
                                  f"float32 >= 0, got {shown(pattern)}: {shown(value)}")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
    free = []
    for axis in MESH_AXES:
        key = f"mesh.{axis}"
        value = _get(config, key)
        if value is _MISSING:
            continue
        if not _is_int(value) or not (value == -1 or value >= 1):
            raise ConfigError(f"config field {key!r} must be -1 (all remaining devices) or an integer >= 1, "
                              f"got {shown(value)}")
        if value == -1:
            free.append(key)
    if len(free) > 1:
        raise ConfigError(f"config fields {' and '.join(repr(k) for k in free)} are each -1; at most one mesh "
                          "axis may be -1 (all remaining devices)")


def _check_data(config: ml_collections.ConfigDict) -> None:
    _choice(config, "data.on_error", ON_ERROR)
    _number(config, "data.max_skip_fraction", low=0, high=1)
    _integer(config, "data.num_threads", low=0)
    _integer(config, "data.num_workers", low=0, note=" (0 = read in the training process)")
    _integer(config, "data.seed", low=GRAIN_SEED_RANGE[0], high=GRAIN_SEED_RANGE[1])


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    """`config.<key>` for a dotted key, or `_MISSING` where any part of the path is absent."""
    node: Any = config
    for name in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    """Ints are exact (math.isfinite would overflow converting a huge one to float)."""
    return isinstance(value, int) or math.isfinite(value)


def _as_float32(value: int | float) -> float:
    """`value` rounded to the nearest float32, as a Python float (inf past the float32 range)."""
    try:
        return struct.unpack("f", struct.pack("f", float(value)))[0]
    except OverflowError:  # past float32's range, or an int past float64's
        return math.inf if value > 0 else -math.inf


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _ranged(config: ml_collections.ConfigDict, key: str, kind: str, accepts: Callable[[Any], bool],
            low: float | None, high: float | None, low_open: bool, high_open: bool, none_ok: bool,
            note: str, float32: bool = False) -> Any:
    """The value at `key` (None when absent, or None and allowed), raising unless `accepts` it and it
    lies in the interval; with `float32`, the value as rounded to a float32 must (it is one on device)."""
    value = _get(config, key)
    if value is _MISSING or (value is None and none_ok):
        return None
    ok = accepts(value) and _finite(value)
    device = _as_float32(value) if ok and float32 else value
    ok = ok and _finite(device)
    if ok and low is not None:
        ok = device > low if low_open else device >= low
    if ok and high is not None:
        ok = device < high if high_open else device <= high
    if not ok:
        rounded = f" ({device!r} as a float32)" if float32 and _is_number(value) and device != value else ""
        raise ConfigError(f"config field {key!r} must be {kind} {_interval(low, high, low_open, high_open)}"
                          f"{' or None' if none_ok else ''}{note}, got {shown(value)}{rounded}")
    return value


def _integer(config: ml_collections.ConfigDict, key: str, low: int | None = None, high: int | None = None,
             none_ok: bool = False, note: str = "") -> int | None:
    return _ranged(config, key, "an integer", _is_int, low, high, False, False, none_ok, note)


def _number(config: ml_collections.ConfigDict, key: str, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, none_ok: bool = False, note: str = "",
            float32: bool = False) -> float | None:
    kind = "a finite float32" if float32 else "a finite number"
    return _ranged(config, key, kind, _is_number, low, high, low_open, high_open, none_ok, note, float32)


def _choice(config: ml_collections.ConfigDict, key: str, allowed: tuple[str, ...]) -> None:
    value = _get(config, key)
    if value is not _MISSING and value not in allowed:
        raise ConfigError(f"config field {key!r} must be one of {allowed}, got {shown(value)}")


def _regex(key: str, pattern: Any) -> None:
    """Patterns are matched with re.fullmatch against parameter paths; a bad one fails here, not at setup."""
    if not isinstance(pattern, str):
        raise ConfigError(f"config field {key!r} holds {shown(pattern)}, which is not a regular expression string")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config field {key!r} holds the invalid regular expression {shown(pattern)}: {e}") from e
