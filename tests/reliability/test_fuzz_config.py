"""Fuzzed config overrides (reliability issue, item 5): every list of `--config.a.b=value` overrides
applied to the demo config ends in a config that passes the engine's checks, or a `ConfigError` naming
an offending key, never another exception; on the command line a bad override exits non-zero naming
the field before the workdir is created.

Keys are the demo config's real fields, its groups, near-miss typos of them and unknown paths; values
are ints (negative, zero, past int32 and int64), floats (nan and inf included), strings, nested
lists / tuples / dicts, None, bools and malformed Python. No training runs: an accepted config is
handed only to the cheap consumers of its fields (the optimizer on a three-leaf tree, the schedule,
the mesh shape, the bad-record policy) to show the checks let through only values they can use.
"""

from __future__ import annotations

import math
from pathlib import Path

import ml_collections
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vlalign_jax.cli import main
from vlalign_jax.train.config import (ConfigError, apply_override, build_config, flat_keys, load_config_file,
                                      parse_value, split_overrides)
from vlalign_jax.train.config_checks import check_config

DEMO = str(Path(__file__).resolve().parents[2] / "configs/demo/clip_shapes.py")
BASE = load_config_file(DEMO)
FIELDS = flat_keys(BASE)


def _groups(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    groups = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            groups += [prefix + name] + _groups(value, f"{prefix}{name}.")
    return groups


def _current(key: str):
    """The demo config's value at a dotted key."""
    node = BASE
    for name in key.split("."):
        node = node[name]
    return node


GROUPS = _groups(BASE)
# The fields the engine reads and check_config ranges: numbers, flags, tuples, and two choices.
ENGINE_FIELDS = [k for k in FIELDS if k.split(".")[0] in ("train", "optim", "mesh", "data") and
                 (not isinstance(_current(k), (str, ml_collections.ConfigDict)) or k == "data.on_error")]

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=250,
                suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------
# Keys


def _typo(key: str, position: int, kind: int) -> str:
    """One near miss of `key`: a dropped, doubled or swapped character, a case change, a plural, a
    suffix, or a broken dot."""
    i = position % len(key)
    return [key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key[:i] + key[i + 1:i + 2] + key[i:i + 1] + key[i + 2:],
            key.upper(), key + "s", key + ".x", "." + key, key + ".", key.replace(".", "..", 1),
            key.replace(".", "_"), key.replace("_", "-")][kind % 11]


UNKNOWN_KEYS = ["", ".", "foo", "foo.bar", "train.", ".train", "train..steps", "train.steps.x", "__class__",
                "lock", "to_dict", "model.overrides.vision.nope", "optim.lr_multipliers.x", "mesh.pipeline"]
KEYS = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS), st.sampled_from(GROUPS),
                 st.builds(_typo, st.sampled_from(FIELDS), st.integers(0, 60), st.integers(0, 10)),
                 st.sampled_from(UNKNOWN_KEYS))

# ---------------------------------------------------------------------------------------------------
# Values, as the text after `=`

EDGE_INTS = [0, 1, -1, 2, -2, 3, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, -(2**63) - 1,
             10**30, -(10**30), 10**400, -(10**400)]
INTS = st.one_of(st.integers(-10**6, 10**6), st.sampled_from(EDGE_INTS)).map(str)
FLOATS = st.one_of(st.floats().map(repr),  # repr(nan) / repr(inf) are no literals: they stay strings
                   st.sampled_from(["0.0", "-0.0", "0.5", "1.0", "-0.5", "1e-3", "0.999", "1e999", "-1e999",
                                    "1e-320", "1e30", "2.5"]))
STRINGS = st.one_of(st.text(max_size=8), st.text(max_size=8).map(repr),
                    st.sampled_from(["raise", "skip", "matrices", "all", "clip", "clpi", "tiny", "None!"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(), st.text(max_size=4))
LITERALS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), inner, max_size=3)), max_leaves=6).map(repr)
MALFORMED = ["[1,", "{", "(", ")", "{[]: 1}", "{{}}", "'unterminated", "1 +", "a\x00b", "", " ", "[" * 200,
             "(" * 120 + ")" * 120, "{'a': }", "--workdir", "=", "1e", "0x", "lambda: 0", "__import__('os')",
             "{'a.b': 1}", "{1: 2}", "{'vision': {'width': -3}}", "('(',)", "('text_model/x+',)", "{'(': 1.0}",
             "{'x+': -1.0}", "{'x+': 2}", "10**400", "9" * 5000, "nan", "inf", "-inf", "float('nan')", "b'x'",
             "1j", "...", "{1, 2}", "set()", "None", "True", "False", "()", "[]", "{}", "''", "'ignore'"]
VALUES = st.one_of(INTS, INTS, FLOATS, FLOATS, STRINGS, LITERALS, st.sampled_from(MALFORMED),
                   st.sampled_from(MALFORMED))
PATTERNS = st.sampled_from(["text_model/x+", "vision_model/[^/]+", "(", "[", "*", "a{2", "", "(?P<", "logit_scale"])


def _typed(key: str) -> st.SearchStrategy[str]:
    """Values of the field's own type (so they get past the type check to the range checks), at and
    past every edge."""
    current = _current(key)
    if isinstance(current, bool):
        return st.sampled_from(["True", "False", "None", "0", "1"])
    if isinstance(current, int):
        return st.one_of(INTS, st.just("None"))
    if isinstance(current, float):
        return st.one_of(FLOATS, INTS)
    if isinstance(current, str):
        return STRINGS
    if isinstance(current, tuple):
        return st.lists(PATTERNS, max_size=3).map(lambda p: repr(tuple(p)))
    if isinstance(current, ml_collections.ConfigDict):  # an empty group: a free-form dict
        multipliers = st.one_of(st.floats(-2, 3), st.sampled_from([0, 1, 1e39, 10**400, float("inf")]))
        return st.dictionaries(PATTERNS, multipliers, max_size=2).map(repr)
    return VALUES


def typed_overrides(keys: list[str]) -> st.SearchStrategy[tuple[str, str]]:
    """(key, value) with the value mostly of the key's own type, else anything."""
    return st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), st.one_of(_typed(k), _typed(k), VALUES)))


OVERRIDES = st.lists(st.one_of(typed_overrides(FIELDS), typed_overrides(FIELDS), st.tuples(KEYS, VALUES)),
                     min_size=1, max_size=4)


def _offender(overrides: list[tuple[str, str]]) -> str | None:
    """The key whose override cannot be applied (the first), or None when all apply."""
    config = load_config_file(DEMO)
    for key, text in overrides:
        try:
            apply_override(config, key, parse_value(text))
        except ConfigError:
            return key
    return None


def _same(value, expected) -> bool:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict() == expected
    if isinstance(value, float) and isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return value == float(expected) or (math.isnan(value) and math.isnan(expected))
    if isinstance(value, tuple) and isinstance(expected, list):
        return value == tuple(expected)
    return value == expected or repr(value) == repr(expected)


def check_outcome(overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict | None:
    """Build; on success the config is locked, valid, and holds every override; on failure the
    ConfigError names the override that failed (or, failing a range check, an overridden field)."""
    try:
        config = build_config(DEMO, overrides)
    except ConfigError as e:
        message, offender = str(e), _offender(overrides)
        event("ConfigError while applying" if offender is not None else "ConfigError from check_config")
        if offender is not None:
            assert repr(offender) in message, (overrides, message)
        else:  # the demo config passes the checks, so a failing one involves an overridden field
            assert any(repr(key) in message for key, _ in overrides), (overrides, message)
        return None
    event("built")
    assert config.is_locked
    check_config(config)
    keys = [key for key, _ in overrides]
    for i, (key, text) in enumerate(overrides):
        related = any(j != i and (k == key or k.startswith(key + ".") or key.startswith(k + "."))
                      for j, k in enumerate(keys))
        if not related:
            node = config
            for name in key.split("."):
                node = node[name]
            assert _same(node, parse_value(text)), (key, text, node)
    return config


@FUZZ
@given(OVERRIDES)
def test_overrides_build_a_valid_config_or_name_the_key(overrides):
    check_outcome(overrides)


@settings(FUZZ, max_examples=200)
@given(typed_overrides(FIELDS))
def test_one_override_of_a_real_field_is_applied_or_named(override):
    check_outcome([override])


@settings(FUZZ, max_examples=150)
@given(OVERRIDES, st.lists(st.booleans(), min_size=4, max_size=4),
       st.one_of(st.none(), st.none(), st.sampled_from([*FIELDS[:8], "x"])))
def test_argv_overrides_split_then_build_or_name_the_key(overrides, equals_form, dangling):
    """The argv form: `--config.k=v` or `--config.k v`, optionally ending in a `--config.k` with no value."""
    argv = ["train", "--config", DEMO]
    for (key, text), equals in zip(overrides, equals_form):
        argv += [f"--config.{key}={text}"] if equals else [f"--config.{key}", text]
    argv += ["--workdir", "w"] + ([f"--config.{dangling}"] if dangling else [])
    split_as_written = all(equals or not text.startswith("--") for (_, text), equals in zip(overrides, equals_form))
    try:
        rest, parsed = split_overrides(argv)
    except ConfigError as e:
        event("ConfigError from split_overrides")
        bad = [key for (key, text), equals in zip(overrides, equals_form) if not equals and text.startswith("--")]
        assert repr((bad or [dangling])[0]) in str(e), (argv, str(e))
        assert not split_as_written or dangling
        return
    assert split_as_written and not dangling
    assert rest == ["train", "--config", DEMO, "--workdir", "w"]
    # A key holding "=" splits at its first "=" in the `=` form; the argv form cannot say otherwise.
    assert parsed == [(k, t) if not e or "=" not in k else tuple(f"{k}={t}".split("=", 1))
                      for (k, t), e in zip(overrides, equals_form)]
    check_outcome(parsed)


# ---------------------------------------------------------------------------------------------------
# Accepted configs work in the code that reads them

ENGINE_STRINGS = st.sampled_from(["'raise'", "'skip'", "'ignore'", "'all'", "'matrices'", "'all_but_norms_and_biases'"])


@settings(FUZZ, max_examples=40)
@given(st.lists(st.sampled_from(ENGINE_FIELDS).flatmap(
    lambda k: st.tuples(st.just(k), ENGINE_STRINGS if isinstance(_current(k), str) else _typed(k))),
    min_size=1, max_size=3))
def test_accepted_engine_values_work_in_their_consumers(overrides):
    """Whatever the checks let through builds an optimizer with finite updates and a finite, non-negative
    schedule, a mesh shape, a bad-record policy and an EMA update, and divides the step counter."""
    import jax
    import jax.numpy as jnp

    from vlalign_jax.data.records import RecordErrors
    from vlalign_jax.parallel.mesh import resolve_mesh_shape
    from vlalign_jax.train.optim import make_optimizer, schedule_from_config
    from vlalign_jax.train.state import ema_update

    config = check_outcome(overrides)
    if config is None:
        return
    tc, optim = config.train, config.optim
    assert 1 % tc.checkpoint_every >= 0 and 1 % tc.log_every >= 0 and (not tc.eval_every or 1 % tc.eval_every >= 0)
    assert tc.batch_size % tc.accum_steps == 0
    RecordErrors(config.data.on_error, config.data.max_skip_fraction).check()
    sizes = config.mesh.to_dict()
    fixed = math.prod(s for s in sizes.values() if s != -1)
    assert math.prod(resolve_mesh_shape(sizes, fixed * 2 if -1 in sizes.values() else fixed)) >= 1
    schedule = schedule_from_config(optim, tc.steps)
    for step in (0, 1, tc.steps // 2, tc.steps):
        lr = float(schedule(step))
        assert math.isfinite(lr) and lr >= 0, (step, lr)
    params = {"vision_model": {"kernel": jnp.ones((2, 3)), "scale": jnp.ones(3)}, "logit_scale": jnp.ones(())}
    optimizer = make_optimizer(optim, tc.steps, params)
    grads = {"vision_model": {"kernel": jnp.zeros((2, 3)), "scale": jnp.ones(3)}, "logit_scale": jnp.ones(())}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)  # a zero gradient included
    if optim.lr * (1 + optim.weight_decay) < 1e38:  # else a first step of lr x (1 + decay) overflows float32,
        # as any step can: the loop stops on (or with train.skip_nonfinite skips) non-finite updates
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates)), overrides
    if tc.ema_decay:
        ema = ema_update(params, grads, tc.ema_decay)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(ema))


# ---------------------------------------------------------------------------------------------------
# The command line

@pytest.mark.parametrize("bad, field", [
    (["--config.train.steps=0"], "train.steps"),
    (["--config.optim.lr=-1"], "optim.lr"),
    (["--config.optim.lr=1e999"], "optim.lr"),
    (["--config.mesh.fsdp=-1"], "mesh.fsdp"),
    (["--config.data.on_error=ignore"], "data.on_error"),
    (["--config.train.accum_steps", "3"], "train.accum_steps"),
    (["--config.optim.freeze=('(',)"], "optim.freeze"),
    (["--config.train.stpes=3"], "train.stpes"),
    (["--config.train={'steps': 3}"], "train"),
    (["--config.train.batch_size"], "train.batch_size"),  # dangling: no value
])
def test_cli_rejects_a_bad_override_before_training(tmp_path, capsys, bad, field):
    workdir = tmp_path / "run"
    code = main(["train", "--config", DEMO, "--workdir", str(workdir), *bad])
    err = capsys.readouterr().err
    assert code != 0
    assert repr(field) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not workdir.exists()  # neither config.json nor checkpoints/: nothing ran


def test_cli_option_after_a_valueless_override_is_not_taken_as_its_value(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = main(["train", "--config", DEMO, "--config.train.steps", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2 and "'train.steps' needs a value" in err and "--workdir" in err
    assert not workdir.exists()
