"""CLIP-VG training checkpoints (`checkpoint.pth` / `best_checkpoint.pth` of linhuixiao/CLIP-VG), both ways.

A file is `torch.save({"model": state_dict, "optimizer", "lr_scheduler", "epoch", "args"
(argparse.Namespace), "val_accu"})` (shared/research/clipvg.md §1.9). The state_dict (§1.8) is OpenAI
CLIP's under `clip.`, the fusion and head, and two wrappers that alias CLIP submodules, so the same
tensors appear again under `image_encoder_clip_vg.` (= `clip.visual.`) and `text_encoder_clip_vg.`
(= `clip.` text parts, no logit_scale): 689 entries for ViT-B/16. Reading checks each alias equals
its original and keeps one copy; writing emits every alias sharing its original's storage (as
torch.save does for the reference), so `load_state_dict(strict=True)` accepts it.

Released files probably hold fp16 CLIP convs and linears (`convert_weights`, §1.1): reading casts to
`dtype` (fp32 by default). Fusion heads, dropout and the feature layers are not visible in tensor
shapes: they come from `args` when the file has it (`vl_nheads`, `vl_dropout`; `feature_layers` is
ours), else the reference's defaults (8 heads, 0.1, (0, 3, 7, 11) for 12 blocks, (0, 7, 15, 23) for 24).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import numpy as np
from flax import traverse_util

from vlalign_jax.converters import clip_openai
from vlalign_jax.converters.table import (FUSED_QKV_BIAS, FUSED_QKV_WEIGHT, LINEAR, CheckpointMismatchError, Rule,
                                          check_arrays, expand, flat_shapes, from_theirs, rule, to_theirs)
from vlalign_jax.converters.torch_io import (CheckpointFormatError, atomic_path, numpy_to_tensor, require_torch,
                                             tensor_to_numpy)
from vlalign_jax.models.clip_configs import CLIP_CONFIGS
from vlalign_jax.models.grounding import GroundingConfig, abstract_params, default_feature_layers

IMAGE_ALIAS, TEXT_ALIAS = "image_encoder_clip_vg.", "text_encoder_clip_vg."
# `ML_CLIP_VG.__init__` registration order, which is the reference state_dict's order.
MODULE_ORDER = ("clip.", "visu_proj.", "text_proj.", "reg_token.", "vl_pos_embed.", "vl_transformer.", IMAGE_ALIAS,
                TEXT_ALIAS, "bbox_embed.", "ml_visu_proj.")
# What a training checkpoint pickles besides tensors and containers: the argparse `args`, and numpy
# scalars (a metric or an lr stored as np.float64).
SAFE_GLOBALS = [argparse.Namespace, np.dtype, getattr(np, "_core", getattr(np, "core", None)).multiarray.scalar,
                *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool"))]
# Reference `--model` names, written into `args` so an export says which CLIP it holds.
REFERENCE_MODEL_NAMES = {"ViT-B-16": "ViT-B/16", "ViT-B-32": "ViT-B/32", "ViT-L-14": "ViT-L/14"}


def _prefixed(rules: list[Rule], ours: str, theirs: str) -> list[Rule]:
    return [Rule(tuple(ours + p for p in r.ours), tuple(theirs + k for k in r.theirs), r.transform, r.repeat)
            for r in rules]


def _linear(ours: str, theirs: str, repeat: str | None = None) -> list[Rule]:
    return [rule(f"{ours}/kernel", f"{theirs}.weight", LINEAR, repeat), rule(f"{ours}/bias", f"{theirs}.bias",
                                                                             repeat=repeat)]


def _fusion_rules() -> list[Rule]:
    o, t = "vl_transformer/layers_{i}", "vl_transformer.encoder.layers.{i}"
    qkv = lambda leaf: tuple(f"{o}/self_attn/{n}_proj/{leaf}" for n in "qkv")
    norm = lambda n: [rule(f"{o}/{n}/scale", f"{t}.{n}.weight", repeat="fusion"),
                      rule(f"{o}/{n}/bias", f"{t}.{n}.bias", repeat="fusion")]
    return [
        rule(qkv("kernel"), f"{t}.self_attn.in_proj_weight", FUSED_QKV_WEIGHT, "fusion"),
        rule(qkv("bias"), f"{t}.self_attn.in_proj_bias", FUSED_QKV_BIAS, "fusion"),
        *_linear(f"{o}/self_attn/out_proj", f"{t}.self_attn.out_proj", "fusion"),
        *_linear(f"{o}/linear1", f"{t}.linear1", "fusion"),
        *_linear(f"{o}/linear2", f"{t}.linear2", "fusion"),
        *norm("norm1"), *norm("norm2"),
    ]


RULES: list[Rule] = [
    *_prefixed(clip_openai.RULES, "clip/", "clip."),
    *_linear("visu_proj", "visu_proj"),
    *_linear("text_proj", "text_proj"),
    rule("reg_token", "reg_token.weight"),
    rule("vl_pos_embed", "vl_pos_embed.weight"),
    *_fusion_rules(),
    *_linear("bbox_embed/layers_{i}", "bbox_embed.layers.{i}", "head"),
    *_linear("ml_visu_proj", "ml_visu_proj"),
]


def layer_counts(config: GroundingConfig) -> dict[str, int]:
    return {"vision": config.clip.vision.layers, "text": config.clip.text.layers, "fusion": config.fusion_layers,
            "head": config.head_layers}


def param_shapes(config: GroundingConfig) -> dict[str, tuple[int, ...]]:
    """Our flat `{path: shape}` for `config` (cached: `table.flat_shapes`)."""
    return flat_shapes(abstract_params, config)


def alias_of(key: str) -> str | None:
    """The wrapper key holding the same tensor as `clip.` key `key`, or None."""
    if key.startswith("clip.visual."):
        return IMAGE_ALIAS + key[len("clip.visual."):]
    if key.startswith("clip.") and key != "clip.logit_scale":
        return TEXT_ALIAS + key[len("clip."):]
    return None


def state_shapes(config: GroundingConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the reference state_dict (aliases included) -> shape, in the reference's order."""
    shapes = param_shapes(config)
    out: dict[str, tuple[int, ...]] = {}
    for r in expand(RULES, layer_counts(config)):
        out.update(zip(r.theirs, r.transform.theirs_shapes(tuple(shapes[p] for p in r.ours))))
    out.update({alias_of(k): s for k, s in list(out.items()) if alias_of(k)})
    return _ordered(out)


def _ordered(state: Mapping[str, Any]) -> dict[str, Any]:
    rank = lambda k: next(i for i, p in enumerate(MODULE_ORDER) if k.startswith(p))
    return {k: state[k] for k in sorted(state, key=rank)}  # stable: table order within a module


def state_from_params(params: Mapping[str, np.ndarray], config: GroundingConfig,
                      source: str = "params") -> dict[str, np.ndarray]:
    """Our flat params -> the reference state_dict, aliases included (each the same array object)."""
    state = to_theirs(params, expand(RULES, layer_counts(config)), param_shapes(config), source)
    state.update({alias_of(k): v for k, v in list(state.items()) if alias_of(k)})
    return _ordered(state)


def params_from_state(state: Mapping[str, np.ndarray], config: GroundingConfig | None = None,
                      args: Mapping[str, Any] | None = None, source: str = "state_dict",
                      dtype: Any = np.float32) -> tuple[GroundingConfig, dict[str, np.ndarray]]:
    """The reference state_dict -> (config, our flat params), cast to `dtype` (None keeps each stored dtype).

    `config` defaults to one inferred from shapes and `args`. Missing, unexpected and mis-shaped keys
    are reported together; an alias that differs from its original is an error naming both.
    """
    state = clip_openai.strip_prefix(state)
    config = config or infer_config(state, args or {}, source)
    check_arrays(state, state_shapes(config), source)
    differ = [f"{alias_of(k)} != {k}" for k in state if alias_of(k) and not _same_tensor(state[alias_of(k)], state[k])]
    if differ:
        raise CheckpointFormatError(f"{source}: aliased entries hold different values: " + ", ".join(differ))
    canonical = {k: v for k, v in state.items() if not k.startswith((IMAGE_ALIAS, TEXT_ALIAS))}
    params = from_theirs(canonical, expand(RULES, layer_counts(config)), param_shapes(config), source)
    if dtype is not None:
        params = {k: np.asarray(v).astype(dtype) for k, v in params.items()}
    return config, params


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality, as one storage saved twice is (NaN included, which `==` never equals)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def infer_config(state: Mapping[str, np.ndarray], args: Mapping[str, Any], source: str) -> GroundingConfig:
    """The architecture from tensor shapes, plus `args` for what shapes do not show (heads, dropout)."""
    needed = ["vl_pos_embed.weight", "visu_proj.weight", "ml_visu_proj.weight",
              "vl_transformer.encoder.layers.0.linear1.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointMismatchError(source, missing=missing)
    wrong = [f"{k} {tuple(np.shape(state[k]))}" for k in needed if np.ndim(state[k]) != 2 or 0 in np.shape(state[k])]
    if wrong:
        raise CheckpointFormatError(f"{source}: the architecture is read from these tensors' shapes, which cannot be "
                                    f"right: {', '.join(wrong)}")
    clip_state = {k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}
    clip = clip_openai.infer_config(clip_state, "quick_gelu", source, key_prefix="clip.")
    layers = clip.vision.layers
    feature_layers = tuple(args.get("feature_layers") or default_feature_layers(layers))
    levels = state["ml_visu_proj.weight"].shape[1] // clip.vision.width
    if levels != len(feature_layers):
        raise ValueError(f"{source}: ml_visu_proj takes {levels} levels but feature layers {feature_layers} are "
                         f"{len(feature_layers)}; pass a GroundingConfig with the right feature_layers")
    count = lambda pattern: len({m.group(1) for k in state if (m := re.match(pattern, k))})
    try:
        return GroundingConfig(
            clip=clip, feature_layers=feature_layers, hidden_dim=state["vl_pos_embed.weight"].shape[1],
            fusion_layers=count(r"vl_transformer\.encoder\.layers\.(\d+)\."),
            fusion_heads=int(args.get("vl_nheads", 8)),
            fusion_mlp_dim=state["vl_transformer.encoder.layers.0.linear1.weight"].shape[0],
            dropout=float(args.get("vl_dropout", 0.1)), head_layers=count(r"bbox_embed\.layers\.(\d+)\."),
            visu_proj_in_dim=state["visu_proj.weight"].shape[1])
    except ValueError as e:  # GroundingConfig's own checks (heads divide hidden_dim, ...) do not know the file
        raise ValueError(f"{source}: {e}") from e


def load_state(path: str | Path, trusted: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A CLIP-VG file -> (state_dict as numpy, meta: `epoch`, `val_accu`, `args` as a dict, when present).

    Loads with `weights_only=True`, allowing `SAFE_GLOBALS` beyond torch's own safe types (the reference
    pickles its `args`); `trusted=True` unpickles anything. A bare state_dict (no `model`) is accepted.
    """
    torch = require_torch()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(str(path), map_location="cpu", weights_only=not trusted)
    except Exception as e:  # torch raises many types for corrupt or unsafe files; name the file once.
        lines = str(e).splitlines() or [""]
        detail, hint = lines[0], ""
        if not trusted and isinstance(e, pickle.UnpicklingError):
            # torch's message is a page long; its one informative line names the refused global.
            detail = next((line.strip() for line in lines if "Unsupported global" in line), detail)
            hint = ("; it pickles objects beyond tensors and argparse args: if you trust the file, pass "
                    "--trust-pickle (trust_pickle=True), which runs its pickled code")
        raise CheckpointFormatError(f"could not read {path} as a CLIP-VG checkpoint: {type(e).__name__}: "
                                    f"{detail}{hint}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a CLIP-VG checkpoint dict")
    model = obj.get("model", obj)
    state = {}
    for key, value in model.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key] = tensor_to_numpy(value)
    meta = {k: obj[k] for k in ("epoch", "val_accu") if k in obj and "model" in obj}
    if "model" in obj and obj.get("args") is not None:
        meta["args"] = dict(vars(obj["args"])) if isinstance(obj["args"], argparse.Namespace) else dict(obj["args"])
    return state, meta


def is_clipvg_file(path: str | Path) -> bool:
    """Whether a torch file holds a CLIP-VG model: a dict whose `model` state_dict has the fusion
    encoder (`vl_transformer.*`, DDP's `module.` prefix allowed, as the reader strips it). Unreadable files
    are not CLIP-VG (the family's reader says why)."""
    torch = require_torch()
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any failure means "not this family"; detection moves on
        return False
    model = obj.get("model") if isinstance(obj, Mapping) else None
    return isinstance(model, Mapping) and any(str(k).removeprefix("module.").startswith("vl_transformer.")
                                              for k in model)


def read_clipvg(path: str | Path, config: GroundingConfig | None = None, dtype: Any = np.float32,
                trusted: bool = False) -> tuple[GroundingConfig, dict[str, np.ndarray]]:
    """A CLIP-VG checkpoint -> (config, our flat `{path: array}` params); see `params_from_state`."""
    state, meta = load_state(path, trusted)
    return params_from_state(state, config, meta.get("args"), str(path), dtype)


def write_clipvg(config: GroundingConfig, params: Mapping[str, Any], path: str | Path, epoch: int = 0,
                 extras: Mapping[str, Any] | None = None, overwrite: bool = True) -> None:
    """Our params (flat or nested) -> `{"model": state_dict, "epoch", "args", **extras}` at `path`, atomically.

    Every alias is the same tensor as its original, so torch.save stores it once. `args` is an
    argparse.Namespace as in the reference, holding the fusion sizes (and our `feature_layers`) so
    `read_clipvg` rebuilds the same config.
    """
    torch = require_torch()
    params = nn.meta.unbox(dict(params))
    if any(isinstance(v, Mapping) for v in params.values()):
        params = traverse_util.flatten_dict(params, sep="/")
    flat = {k: np.asarray(v) for k, v in params.items()}
    state = state_from_params(flat, config)
    tensors: dict[int, Any] = {}  # id(array) -> tensor, so aliases share one storage
    for v in state.values():
        if id(v) not in tensors:
            tensors[id(v)] = numpy_to_tensor(v)
    model = {k: tensors[id(v)] for k, v in state.items()}
    args = {"imsize": config.clip.vision.image_size, "max_query_len": config.clip.text.context_length,
            "vl_hidden_dim": config.hidden_dim, "vl_nheads": config.fusion_heads,
            "vl_dim_feedforward": config.fusion_mlp_dim, "vl_enc_layers": config.fusion_layers,
            "vl_dropout": config.dropout, "feature_layers": list(config.feature_layers)}
    names = [reference for ours, reference in REFERENCE_MODEL_NAMES.items() if CLIP_CONFIGS[ours] == config.clip]
    if names:
        args["model"] = names[0]
    obj = {"model": model, "epoch": int(epoch), "args": argparse.Namespace(**args), **(extras or {})}
    with atomic_path(Path(path), overwrite) as tmp:
        torch.save(obj, str(tmp))
