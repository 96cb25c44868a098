"""Fuzzed PyTorch checkpoints (reliability issue, item 5: converter state_dicts).

Every checkpoint family is written for real by the test (tiny random torch models from the converter
tests' helpers), then hypothesis applies one to three mutations to its state_dict, its container or its
config.json, and `converters.load` / `converters.read` must either succeed with parameters shaped
exactly as the loaded architecture says (and, for mutations that change nothing that matters, equal
to the unmutated load) or raise `CheckpointFormatError` / `CheckpointMismatchError` / `ValueError` /
`FileNotFoundError` from converter code, whose message names the file and, for key mutations, the key.

Mutations: delete a key; rename it (junk prefix or suffix); transpose, flatten or grow/shrink one dim;
replace it by a 0-d tensor; change its dtype (float64, float16, bfloat16, int64, bool; complex64 where
the container holds it); NaN/inf values; extra keys (junk names, or buffers the family documents as
dropped); a DDP `module.` prefix on every key; in pickles, a non-tensor entry or a non-dict object;
truncated weight or config files, a removed weight file; config.json fields dropped or mistyped.

The rules asserted, read from the converters: unexpected keys are errors naming them, except the
buffers each family lists (`clip_openai.DERIVED_KEYS`, the HF modules' `BUFFER_KEYS`), which are
dropped; non-finite values load unchanged; real dtypes (ints and bools too, as torch's
`load_state_dict` copies them) are cast by `load` and kept by `read`; complex tensors are refused.
Families whose architecture is read off tensor shapes (openai, open_clip, degla, clipvg) may load a
shape change to an architecture-defining key as a different, self-consistent model.

Cases tried: EXAMPLES per layout x len(LAYOUTS) = 10 x 10 = 100.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("transformers")

# The tiny-checkpoint builders live beside the converter tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters"))

from safetensors.numpy import load_file, save_file  # noqa: E402
from test_clipvg_converter import reference as clipvg_reference  # noqa: E402
from test_clipvg_converter import save_like_reference as save_clipvg  # noqa: E402
from test_fgclip2_converter import reference_folder as fgclip2_folder  # noqa: E402
from test_fgclip_converter import _reference_folder as fgclip_folder  # noqa: E402
from test_siglip2_converter import hf_folder as siglip2_folder  # noqa: E402
from torch_models import tiny_hf_clip, tiny_open_clip  # noqa: E402

import vlalign_jax.converters as converters  # noqa: E402
from vlalign_jax.converters import clip_hf, clip_openai, clipvg, fgclip2_hf, siglip2_hf  # noqa: E402
from vlalign_jax.converters.families import model_param_shapes  # noqa: E402
from vlalign_jax.converters.torch_io import numpy_to_tensor, tensor_to_numpy  # noqa: E402

EXAMPLES = 10
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
CLEAN_ERRORS = (converters.CheckpointFormatError, converters.CheckpointMismatchError, FileNotFoundError, ValueError)
REPO = Path(converters.__file__).resolve().parents[1]  # errors must be raised by converter or model code

# ---- layouts: one valid checkpoint per on-disk form, and how to write a mutated state_dict ---------


@dataclasses.dataclass
class Layout:
    """A valid checkpoint as `state` (logical keys -> arrays) plus what it takes to write it back.

    `write(state, config, folder)` writes the state (and config.json, for folders) under `folder` and
    returns the path `load` is given; `weights` and `config_file` name its files relative to that path.
    """

    name: str
    family: str
    state: dict[str, Any]
    write: Callable[[dict, dict | None, Path], Path]
    pickled: bool                       # a torch pickle: entries may be any object, complex tensors fit
    infers_shapes: bool = False         # architecture read off tensor shapes (OpenAI names)
    ignorable: tuple[str, ...] = ()     # buffers the family drops by rule
    optional: tuple[str, ...] = ()      # keys that may be absent together
    config: dict | None = None          # config.json (or open_clip_config.json) contents
    weights: str = ""                   # weight file relative to the load path ("" = the path itself)
    config_file: str = ""
    strips_module_prefix: bool = False  # a `module.` prefix on every key is undone
    act: str | None = None
    base: dict | None = None            # params of the unmutated load, filled by the fixture


def _torch_state(state: dict) -> dict:
    return {k: numpy_to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def _pickle_writer(name: str, wrap: Callable[[dict], Any] = lambda s: s):
    def write(state, config, folder):
        torch.save(wrap(_torch_state(state)) if isinstance(state, dict) else state, folder / name)
        return folder / name
    return write


def _safetensors_writer(name: str):
    def write(state, config, folder):
        save_file(state, str(folder / name))
        return folder / name
    return write


def _folder_writer(weights: str, config_name: str):
    def write(state, config, folder):
        path = folder / "ckpt"
        path.mkdir()
        save_file(state, str(path / weights), metadata={"format": "pt"})
        (path / config_name).write_text(json.dumps(config))
        return path
    return write


def _clipvg_wrap(args: dict) -> Callable[[dict], Any]:
    """The reference's `{"model", "epoch", "args"}` with every wrapper alias the same tensor as its original."""
    def alias(key: str) -> str | None:  # a DDP-prefixed model's aliases are prefixed too
        prefix = "module." if key.startswith("module.") else ""
        found = clipvg.alias_of(key[len(prefix):])
        return prefix + found if found else None

    def wrap(tensors: dict) -> dict:
        model = dict(tensors)
        model.update({alias(k): v for k, v in tensors.items() if alias(k)})
        return {"model": model, "epoch": 7, "args": argparse.Namespace(**args)}
    return wrap


def _numpy_state(tensors: dict) -> dict:
    return {k: tensor_to_numpy(v) for k, v in tensors.items()}


def _folder_state(folder: Path, config_name: str) -> tuple[dict, dict]:
    return load_file(str(folder / "model.safetensors")), json.loads((folder / config_name).read_text())


def _openai_layouts(tmp: Path) -> list[Layout]:
    state = _numpy_state(tiny_open_clip(quick_gelu=True).state_dict())
    common = dict(infers_shapes=True, ignorable=clip_openai.DERIVED_KEYS, strips_module_prefix=True)
    converters.convert(_write_once(tmp / "base.pt", state), tmp / "oc", "openai", "open_clip")
    oc_config = json.loads((tmp / "oc" / converters.families.OPEN_CLIP_CONFIG).read_text())
    weights, config_name = converters.families.OPEN_CLIP_WEIGHTS[0], converters.families.OPEN_CLIP_CONFIG
    return [
        Layout("openai_pt", "openai", state, _pickle_writer("model.pt"), True, **common),
        Layout("open_clip_bin", "open_clip", state, _pickle_writer("model.bin"), True, act="quick_gelu", **common),
        Layout("open_clip_safetensors", "open_clip", state, _safetensors_writer("model.safetensors"), False,
               act="quick_gelu", **common),
        Layout("open_clip_folder", "open_clip", state, _folder_writer(weights, config_name), False,
               config=oc_config, weights=weights, config_file=config_name, **common),
        Layout("degla", "degla", state, _pickle_writer("epoch_3.pt", lambda t: {
            "epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in t.items()}, "optimizer": {}}),
            True, **{**common, "strips_module_prefix": False}),  # already DDP-prefixed: a second prefix stays
    ]


def _write_once(path: Path, state: dict) -> Path:
    torch.save(_torch_state(state), path)
    return path


def _hf_layout(name: str, family: str, folder: Path, ignorable: tuple[str, ...], optional=()) -> Layout:
    state, config = _folder_state(folder, "config.json")
    return Layout(name, family, state, _folder_writer("model.safetensors", "config.json"), False,
                  ignorable=ignorable, optional=optional, config=config, weights="model.safetensors",
                  config_file="config.json")


def _hf_layouts(tmp: Path) -> list[Layout]:
    tiny_hf_clip().save_pretrained(tmp / "hf")
    fgclip_folder(tmp / "fgclip")
    fgclip2_folder(tmp / "fgclip2")
    siglip2_folder(tmp / "siglip2")
    return [
        _hf_layout("hf_clip", "hf", tmp / "hf", clip_hf.BUFFER_KEYS),
        _hf_layout("fgclip", "fgclip", tmp / "fgclip", clip_hf.BUFFER_KEYS),
        _hf_layout("fgclip2", "hf", tmp / "fgclip2", fgclip2_hf.BUFFER_KEYS, fgclip2_hf.SCALE_KEYS),
        _hf_layout("siglip2", "hf", tmp / "siglip2", siglip2_hf.BUFFER_KEYS),
    ]


def _clipvg_layout(tmp: Path) -> Layout:
    save_clipvg(clipvg_reference(), tmp / "clipvg.pth")
    state, meta = clipvg.load_state(tmp / "clipvg.pth")
    canonical = {k: v for k, v in state.items() if not k.startswith((clipvg.IMAGE_ALIAS, clipvg.TEXT_ALIAS))}
    return Layout("clipvg", "clipvg", canonical, _pickle_writer("best_checkpoint.pth", _clipvg_wrap(meta["args"])),
                  True, infers_shapes=True, strips_module_prefix=True)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Layout]:
    tmp = tmp_path_factory.mktemp("bases")
    found = [*_openai_layouts(tmp), *_hf_layouts(tmp), _clipvg_layout(tmp)]
    for layout in found:  # the unmutated load, which value-preserving mutations must reproduce
        (tmp / f"base_{layout.name}").mkdir()
        _, params = converters.load(layout.write(layout.state, layout.config, tmp / f"base_{layout.name}"),
                                    family=layout.family, act=layout.act)
        layout.base = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    return {layout.name: layout for layout in found}


LAYOUTS = ("openai_pt", "open_clip_bin", "open_clip_safetensors", "open_clip_folder", "degla", "hf_clip", "fgclip",
           "fgclip2", "siglip2", "clipvg")

# ---- mutations --------------------------------------------------------------------------------------

MUST_FAIL, MAY_SUCCEED, MUST_SUCCEED, EXACT = "must_fail", "may_succeed", "must_succeed", "exact"
JUNK_PREFIXES = ("junk.", "_orig_mod.", "model.")
JUNK_SUFFIXES = ("_", ".orig", "_ema")
JUNK_KEYS = ("extra.weight", "visual.extra_bias", "text_model.extra", "head.weight.1", "")
DTYPES = ("float64", "float16", "bfloat16", "int64", "bool", "complex64")
NON_TENSORS = ("junk", 7, None, [1, 2], {"a": 1})
MISTYPES = ("64", 63.5, None, -1, [64], {}, True)


@dataclasses.dataclass(frozen=True)
class Mutation:
    kind: str
    key: str = ""
    arg: Any = None


def mutations(layout: Layout) -> st.SearchStrategy[list[Mutation]]:
    keys = st.sampled_from(sorted(layout.state))
    if layout.infers_shapes:  # the few keys the architecture is read from, as often as all the others
        keys = st.one_of(keys, st.sampled_from(sorted(_architecture_keys(layout) & set(layout.state))))
    kinds = [
        st.builds(Mutation, st.just("delete"), keys),
        st.builds(Mutation, st.just("rename"), keys, st.sampled_from([p + "{}" for p in JUNK_PREFIXES] +
                                                                     ["{}" + s for s in JUNK_SUFFIXES])),
        st.builds(Mutation, st.just("transpose"), keys),
        st.builds(Mutation, st.just("flatten"), keys),
        st.builds(Mutation, st.just("dim"), keys, st.tuples(st.integers(0, 3), st.sampled_from([-1, 1]))),
        st.builds(Mutation, st.just("scalar"), keys),
        st.builds(Mutation, st.just("dtype"), keys, st.sampled_from(DTYPES if layout.pickled else DTYPES[:-1])),
        st.builds(Mutation, st.just("nonfinite"), keys, st.sampled_from([np.nan, np.inf, -np.inf])),
        st.builds(Mutation, st.just("extra"), st.sampled_from(JUNK_KEYS + layout.ignorable), st.integers(0, 2)),
        st.just(Mutation("module_prefix")),
        st.builds(Mutation, st.just("truncate"), st.sampled_from(["weights", "config"] if layout.config else
                                                                 ["weights"]), st.floats(0, 0.95)),
    ]
    if layout.pickled:
        kinds += [st.builds(Mutation, st.just("object"), keys, st.sampled_from(NON_TENSORS)),
                  st.builds(Mutation, st.just("not_a_dict"), arg=st.sampled_from([[1, 2], "x", None]))]
    if layout.config:
        fields = sorted(_config_fields(layout.config))
        kinds += [st.builds(Mutation, st.just("config_drop"), st.sampled_from(fields)),
                  st.builds(Mutation, st.just("config_mistype"), st.sampled_from(fields), st.sampled_from(MISTYPES)),
                  st.just(Mutation("config_not_object")), st.just(Mutation("remove_weights"))]
    return st.lists(st.one_of(kinds), min_size=1, max_size=3)


def _config_fields(config: dict, prefix: str = "") -> list[str]:
    """Dotted paths of config.json's fields, one level into sub-dicts (text_config.hidden_size)."""
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if isinstance(v, dict) and not prefix:
            out += _config_fields(v, f"{k}.")
    return out


def _reshaped(value: np.ndarray, m: Mutation) -> np.ndarray | None:
    """The array a shape mutation leaves, or None where it changes nothing."""
    if m.kind == "transpose":
        out = np.ascontiguousarray(value.T)
    elif m.kind == "flatten":
        out = value.reshape(-1) if value.ndim != 1 else value.reshape(1, -1)
    elif m.kind == "scalar":
        out = np.asarray(value.reshape(-1)[0] if value.size else 0, value.dtype)
    else:
        axis, delta = m.arg
        if axis >= value.ndim or value.shape[axis] + delta < 0:
            return None
        out = np.resize(value, value.shape[:axis] + (value.shape[axis] + delta,) + value.shape[axis + 1:])
    return None if out.shape == value.shape else out


def _cast(value: np.ndarray, name: str) -> np.ndarray | None:
    if not np.issubdtype(value.dtype, np.floating):
        return None
    if name == "bfloat16":
        return value.astype(ml_dtypes.bfloat16)
    if name == "bool":
        return value > 0
    return value.astype(name)


@dataclasses.dataclass
class Applied:
    """A mutated checkpoint and what it obliges the loader to do."""

    state: Any
    config: dict | None
    outcome: str = EXACT              # the strictest outcome of any mutation: EXACT < MUST_SUCCEED < MAY < FAIL
    named: set[str] = dataclasses.field(default_factory=set)  # keys an error must name one of
    any_key_ok: bool = False          # an architecture-defining key moved, or a file/config broke: name the file
    nonfinite: int = 0
    truncate: tuple[str, float] | None = None
    remove_weights: bool = False
    module_prefix: bool = False
    reshaped: set[str] = dataclasses.field(default_factory=set)
    config_named: set[str] = dataclasses.field(default_factory=set)  # mistyped fields and values


ORDER = (EXACT, MUST_SUCCEED, MAY_SUCCEED, MUST_FAIL)


def apply(layout: Layout, muts: list[Mutation]) -> Applied:
    state = dict(layout.state)
    config = json.loads(json.dumps(layout.config)) if layout.config else None
    out = Applied(state, config)

    def oblige(outcome: str, *named: str) -> None:
        out.outcome = max(out.outcome, outcome, key=ORDER.index)
        out.named.update(named)

    infer_keys = _architecture_keys(layout)
    for m in muts:
        if not isinstance(out.state, dict):
            break
        state = out.state
        if m.kind in ("delete", "rename", "transpose", "flatten", "dim", "scalar", "dtype", "nonfinite", "object") \
                and (m.key not in state or not isinstance(state[m.key], np.ndarray)):
            continue
        if m.kind == "delete":
            del state[m.key]
            oblige(EXACT if m.key in layout.ignorable else MAY_SUCCEED if m.key in layout.optional else MUST_FAIL,
                   m.key)
        elif m.kind == "rename":
            new = m.arg.format(m.key)
            if new in state:
                continue
            state[new] = state.pop(m.key)
            oblige(MAY_SUCCEED if m.key in layout.ignorable or new in layout.ignorable else MUST_FAIL, m.key, new)
        elif m.kind in ("transpose", "flatten", "dim", "scalar"):
            new = _reshaped(state[m.key], m)
            if new is None:
                continue
            state[m.key] = new
            out.reshaped.add(m.key)
        elif m.kind == "dtype":
            new = _cast(state[m.key], m.arg)
            if new is None:
                continue
            state[m.key] = new
            exact = m.arg == "float64"
            oblige(MUST_FAIL if m.arg == "complex64" else EXACT if exact else MUST_SUCCEED, m.key)
        elif m.kind == "nonfinite":
            value = state[m.key]
            if value.dtype not in (np.float32, np.float64, np.float16) or value.size == 0 or out.nonfinite < 0:
                continue
            value = value.copy()
            value.reshape(-1)[: (value.size + 1) // 2] = m.arg
            state[m.key] = value
            out.nonfinite = 1
            oblige(MUST_SUCCEED, m.key)
        elif m.kind == "extra":
            if m.key in state:
                continue
            state[m.key] = [np.zeros(3, np.float32), np.asarray(1.5, np.float32), np.ones((2, 2), np.int64)][m.arg]
            oblige(EXACT if m.key in layout.ignorable else MUST_FAIL, m.key)
        elif m.kind == "module_prefix":  # applied last, to every key the other mutations leave
            out.module_prefix = True
            oblige(EXACT if layout.strips_module_prefix else MUST_FAIL)
            out.any_key_ok = out.any_key_ok or not layout.strips_module_prefix
        elif m.kind == "object":
            state[m.key] = m.arg
            oblige(MUST_FAIL, m.key)
        elif m.kind == "not_a_dict":
            out.state = m.arg
            oblige(MUST_FAIL)
            out.any_key_ok = True
        elif m.kind == "truncate":
            out.truncate = (m.key, m.arg)
            oblige(MUST_FAIL)
            out.any_key_ok = True
        elif m.kind == "remove_weights":
            out.remove_weights = True
            oblige(MUST_FAIL)
            out.any_key_ok = True
        elif m.kind in ("config_drop", "config_mistype", "config_not_object"):
            _mutate_config(out, m)
            oblige(MUST_FAIL if m.kind == "config_not_object" else MAY_SUCCEED)
            out.any_key_ok = True
    if out.truncate and out.truncate[0] == "config":  # truncated on writing, after every other mutation
        out.config_named = set()
    for key in out.reshaped:  # judged by the final shape: two reshapes may undo each other
        if not isinstance(out.state, dict) or np.shape(out.state.get(key)) == np.shape(layout.state[key]):
            oblige(MAY_SUCCEED)  # the values may have moved, the shape has not
        elif layout.infers_shapes and key in infer_keys:
            out.any_key_ok = True
            oblige(MAY_SUCCEED, key)
        else:
            oblige(MAY_SUCCEED if key in layout.ignorable else MUST_FAIL, key)
    if out.nonfinite and isinstance(out.state, dict):  # counted at the end: a key may be hit twice, then cast
        out.nonfinite = sum(_count_nonfinite(v) for k, v in out.state.items() if k not in layout.ignorable)
    if out.module_prefix and isinstance(out.state, dict):
        out.state = {f"module.{k}": v for k, v in out.state.items()}
    return out


def _count_nonfinite(value: Any) -> int:
    return int(np.sum(~np.isfinite(np.asarray(value, np.float64)))) if isinstance(value, np.ndarray) else 0


def _mutate_config(out: Applied, m: Mutation) -> None:
    if m.kind == "config_not_object" or not isinstance(out.config, dict):
        out.config, out.config_named = [out.config], set()
        return
    *parents, leaf = m.key.split(".")
    node = out.config
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return
    if m.kind == "config_drop":
        del node[leaf]
    else:
        node[leaf] = m.arg
        out.config_named.update({leaf, repr(m.arg), str(m.arg)})


def _architecture_keys(layout: Layout) -> set[str]:
    """Keys whose shapes define the architecture when it is read off the tensors."""
    if not layout.infers_shapes:
        return set()
    openai = {"visual.conv1.weight", "visual.positional_embedding", "visual.transformer.resblocks.0.mlp.c_fc.weight",
              "text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight",
              "transformer.resblocks.0.mlp.c_fc.weight", "logit_bias"}
    if layout.family != "clipvg":
        return openai
    return {f"clip.{k}" for k in openai} | {"vl_pos_embed.weight", "visu_proj.weight", "ml_visu_proj.weight",
                                            "vl_transformer.encoder.layers.0.linear1.weight"}


# ---- writing, loading, checking -----------------------------------------------------------------


def write(layout: Layout, applied: Applied, folder: Path) -> Path:
    path = layout.write(applied.state, applied.config, folder)
    if applied.truncate:
        which, fraction = applied.truncate
        target = path / (layout.weights if which == "weights" else layout.config_file) if path.is_dir() else path
        data = target.read_bytes()
        target.write_bytes(data[: int(len(data) * fraction)])
    if applied.remove_weights:
        (path / layout.weights).unlink()
    return path


def flat_params(result: Any, api: str) -> tuple[Any, dict[str, np.ndarray]]:
    if api == "read":
        return result.config, dict(result.params)
    model, params = result
    return model.config, traverse_util.flatten_dict(params, sep="/")


def check_success(layout: Layout, applied: Applied, config: Any, params: dict, api: str, detected: bool) -> None:
    assert applied.outcome != MUST_FAIL, f"a broken checkpoint loaded: {layout.name}"
    assert {k: tuple(np.shape(v)) for k, v in params.items()} == model_param_shapes(config)
    if api == "load":
        assert all(v.dtype == np.float32 for v in params.values())
    if applied.nonfinite > 0 and applied.outcome == MUST_SUCCEED:
        assert sum(_count_nonfinite(np.asarray(v)) for v in params.values()) == applied.nonfinite
    if applied.outcome == EXACT and not detected:
        assert set(params) == set(layout.base)
        for key, want in layout.base.items():
            np.testing.assert_array_equal(np.asarray(params[key], np.float32), want, err_msg=key)


def check_error(layout: Layout, applied: Applied, path: Path, err: BaseException) -> None:
    where = f"{layout.name}: {type(err).__name__}: {err}"
    assert isinstance(err, CLEAN_ERRORS), where
    assert applied.outcome not in (EXACT, MUST_SUCCEED), f"a valid checkpoint was refused: {where}"
    innermost = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
    assert REPO in innermost.parents and "site-packages" not in str(innermost), f"raised in {innermost}: {where}"
    message = str(err)
    assert str(path) in message, f"the message does not name {path}: {where}"
    if applied.named and not applied.any_key_ok:
        assert any(k in message for k in applied.named), f"the message names none of {applied.named}: {where}"
    about_config = layout.config_file and str(path / layout.config_file) in message
    if applied.config_named and about_config and not isinstance(err, converters.CheckpointMismatchError):
        assert any(n in message for n in applied.config_named), f"neither a field nor its value is named: {where}"


def run_case(layout: Layout, muts: list[Mutation], api: str, detect: bool, folder: Path) -> None:
    applied = apply(layout, muts)
    path = write(layout, applied, folder)
    family = None if detect else layout.family
    try:
        result = (converters.read if api == "read" else converters.load)(path, family=family, act=layout.act)
    except Exception as err:  # noqa: BLE001 - every exception is judged here
        check_error(layout, applied, path, err)
        return
    config, params = flat_params(result, api)
    check_success(layout, applied, config, params, api, detect)


@pytest.mark.parametrize("name", LAYOUTS)
def test_mutated_checkpoints_load_or_fail_clearly(layouts, name, tmp_path):
    layout = layouts[name]
    counter = itertools.count()

    @FUZZ
    @given(muts=mutations(layout), api=st.sampled_from(["load", "read"]), detect=st.sampled_from([False, False, True]))
    def case(muts: list[Mutation], api: str, detect: bool) -> None:
        folder = tmp_path / str(next(counter))
        folder.mkdir()
        try:
            run_case(layout, muts, api, detect, folder)
        finally:
            shutil.rmtree(folder)

    case()
    assert next(counter) == EXAMPLES  # every case ran: the docstring's count holds
