"""Key/shape mapping tables between our flat parameter paths and a PyTorch state_dict.

A family's table is a list of `Rule`s: our path pattern(s), their key pattern(s) and a `Transform`,
a named pair of array functions (ours -> theirs, theirs -> ours) plus the shape map. Patterns may hold
`{i}` for a layer index; `Rule.repeat` names which layer count expands it. One `apply_*` pair serves
every family and reports every missing, unexpected or mis-shaped key at once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax import traverse_util

Arrays = tuple[np.ndarray, ...]
Shapes = tuple[tuple[int, ...], ...]


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the architecture; lists every offending key."""

    def __init__(self, source: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 misshaped: Sequence[tuple[str, tuple, tuple]] = (), wrong_dtype: Sequence[tuple[str, Any]] = ()):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        self.wrong_dtype = list(wrong_dtype)
        lines = [f"{source} does not match the model:"]
        lines += [f"  missing key: {k}" for k in self.missing]
        lines += [f"  unexpected key: {k}" for k in self.unexpected]
        lines += [f"  wrong shape: {k}: expected {tuple(e)}, found {tuple(f)}" for k, e, f in self.misshaped]
        lines += [f"  wrong dtype: {k}: {d} (weights are real numbers)" for k, d in self.wrong_dtype]
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Transform:
    """Maps arrays both ways; `to_theirs(from_theirs(x)) == x` bitwise for every transform."""

    name: str
    to_theirs: Callable[[Arrays], Arrays]
    from_theirs: Callable[[Arrays], Arrays]
    theirs_shapes: Callable[[Shapes], Shapes]


def _contiguous(*arrays: np.ndarray) -> Arrays:
    return tuple(np.asarray(a, order="C") for a in arrays)


IDENTITY = Transform("identity", lambda a: a, lambda a: a, lambda s: s)

# Dense kernels are [in, out] in flax and weight matrices [out, in] in torch.
LINEAR = Transform(
    "linear",
    lambda a: _contiguous(a[0].T),
    lambda a: _contiguous(a[0].T),
    lambda s: (tuple(reversed(s[0])),),
)

# Flax conv kernels are [kh, kw, in, out]; torch's are [out, in, kh, kw].
CONV = Transform(
    "conv",
    lambda a: _contiguous(a[0].transpose(3, 2, 0, 1)),
    lambda a: _contiguous(a[0].transpose(2, 3, 1, 0)),
    lambda s: ((s[0][3], s[0][2], s[0][0], s[0][1]),),
)

# nn.MultiheadAttention stores q, k, v stacked: in_proj_weight [3*width, width], in_proj_bias [3*width].
FUSED_QKV_WEIGHT = Transform(
    "fused_qkv_weight",
    lambda a: _contiguous(np.concatenate([k.T for k in a], axis=0)),
    lambda a: _contiguous(*(w.T for w in np.split(a[0], 3, axis=0))),
    lambda s: ((3 * s[0][1], s[0][0]),),
)
FUSED_QKV_BIAS = Transform(
    "fused_qkv_bias",
    lambda a: _contiguous(np.concatenate(a, axis=0)),
    lambda a: _contiguous(*np.split(a[0], 3, axis=0)),
    lambda s: ((3 * s[0][0],),),
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """`ours` paths (slash-separated) <-> `theirs` keys (dot-separated), through `transform`."""

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    transform: Transform = IDENTITY
    repeat: str | None = None  # name of the layer count that expands `{i}`


def rule(ours: str | tuple[str, ...], theirs: str | tuple[str, ...], transform: Transform = IDENTITY,
         repeat: str | None = None) -> Rule:
    as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)
    return Rule(as_tuple(ours), as_tuple(theirs), transform, repeat)


def expand(rules: Sequence[Rule], counts: Mapping[str, int]) -> list[Rule]:
    """Replace `{i}` by every layer index; a rule whose `repeat` count is missing is an error."""
    out = []
    for r in rules:
        if r.repeat is None:
            out.append(r)
            continue
        for i in range(counts[r.repeat]):
            out.append(Rule(tuple(p.format(i=i) for p in r.ours), tuple(p.format(i=i) for p in r.theirs),
                            r.transform))
    return out


def to_theirs(params: Mapping[str, np.ndarray], rules: Sequence[Rule],
              expected_shapes: Mapping[str, tuple[int, ...]], source: str) -> dict[str, np.ndarray]:
    """Our flat params -> their state_dict, after checking our paths and shapes against the model."""
    check_arrays(params, expected_shapes, source)
    out: dict[str, np.ndarray] = {}
    for r in rules:
        for key, value in zip(r.theirs, r.transform.to_theirs(tuple(params[p] for p in r.ours))):
            out[key] = value
    return out


def from_theirs(state: Mapping[str, np.ndarray], rules: Sequence[Rule],
                expected_shapes: Mapping[str, tuple[int, ...]], source: str) -> dict[str, np.ndarray]:
    """Their state_dict -> our flat params, after checking every key and shape of theirs."""
    theirs_expected: dict[str, tuple[int, ...]] = {}
    for r in rules:
        shapes = r.transform.theirs_shapes(tuple(tuple(expected_shapes[p]) for p in r.ours))
        theirs_expected.update(zip(r.theirs, shapes))
    check_arrays(state, theirs_expected, source)
    complex_keys = [k for k in theirs_expected if np.iscomplexobj(state[k])]
    if complex_keys:  # casting to a real dtype would drop the imaginary part without a word
        raise CheckpointMismatchError(source, wrong_dtype=[(k, np.asarray(state[k]).dtype) for k in complex_keys])
    out: dict[str, np.ndarray] = {}
    for r in rules:
        for path, value in zip(r.ours, r.transform.from_theirs(tuple(state[k] for k in r.theirs))):
            out[path] = value
    return out


def check_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped key."""
    missing = [k for k in expected if k not in arrays]
    unexpected = [k for k in arrays if k not in expected]
    misshaped = [(k, expected[k], np.shape(arrays[k])) for k in expected
                 if k in arrays and tuple(np.shape(arrays[k])) != tuple(expected[k])]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, missing, unexpected, misshaped)


def flat_shapes(abstract_params: Callable[[Any], Any], config: Any) -> dict[str, tuple[int, ...]]:
    """Our flat `{path: shape}` of the model `abstract_params(config)` describes; traced once per
    (model, config) and then cached, as tracing an init takes 0.2 s to a second and every read,
    write and check of a checkpoint asks for it."""
    return dict(_flat_shapes(abstract_params, config))


@functools.lru_cache(maxsize=32)
def _flat_shapes(abstract_params: Callable[[Any], Any], config: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    flat = traverse_util.flatten_dict(abstract_params(config), sep="/")
    return tuple((k, tuple(v.shape)) for k, v in flat.items())
