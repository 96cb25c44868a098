"""FG-CLIP 2 Hugging Face folders (remote code `Fgclip2Model`), both ways.

The state_dict is transformers' `Siglip2Model` (`siglip2_hf.RULES`) plus (shared/research/fgclip.md 5.2):
`text_model.embeddings.position_embedding_{res,ori}.weight` [196, D], `longtext_head.{weight,bias}`,
`boxtext_head.{weight,bias}`, `dense_feature_head.*` (the layout of `vision_model.head`, packed
`in_proj` included) and, when the training script attached them, the 0-d `logit_scale_finegraind`
/ `logit_scale_hardneg` (ours: `logit_scale_fine_grained` / `logit_scale_hard_negative`).

The two fine-grained scales are optional on their side: the inference class does not define them
(a folder saved from it lacks them) while one saved from the training model has them. Reading a
folder without them fills ours with ln 100 (the training script's init) and records
`meta["fgclip2"]["fine_grained_scales_saved"] = False`, so writing that checkpoint back leaves them
out again; every other key is required and every missing, unexpected or mis-shaped one is named.

config.json is `Fgclip2Config` (`model_type="fgclip2"`, sub-configs `fgclip2_text_model` with
`keep_len` / `longtext_len` and `fgclip2_vision_model`), otherwise SigLIP 2's fields. The released
folders' `auto_map` / `architectures` could not be read (fgclip.md 5.2 VERIFY): what a folder we
read carries is written back unchanged; otherwise `DEFAULT_AUTO_MAP` (GitHub file names) is a guess.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vlalign_jax.converters import clip_hf, siglip2_hf
from vlalign_jax.converters.table import (
    LINEAR,
    Rule,
    expand,
    flat_shapes,
    from_theirs,
    rule,
    to_theirs,
)
from vlalign_jax.converters.torch_io import (
    CheckpointFormatError,
    atomic_dir,
    hf_weight_keys,
    read_json,
    save_state_dict,
)

from vlalign_jax.models.fgclip2 import (
    FINE_GRAINED_SCALE_INIT,
    Fgclip2Config,
    abstract_params,
)

MODEL_TYPE = "fgclip2"
ARCHITECTURES = ["Fgclip2Model"]
DEFAULT_AUTO_MAP = {"AutoConfig": "configuration_fgclip2.Fgclip2Config",
                    "AutoModel": "modeling_fgclip2.Fgclip2Model",
                    "AutoModelForCausalLM": "modeling_fgclip2.Fgclip2Model"}
CARRIED_CONFIG_KEYS = ("auto_map", "architectures")

# `dense_feature_head` is a second `Fgclip2MultiheadAttentionPoolingHead`: SigLIP 2's head rules, renamed.
_HEAD, _THEIR_HEAD = "vision_model/head/", "vision_model.head."
_DENSE_RULES = [
    Rule(tuple(p.replace(_HEAD, "dense_feature_head/", 1) for p in r.ours),
         tuple(k.replace(_THEIR_HEAD, "dense_feature_head.", 1) for k in r.theirs), r.transform, r.repeat)
    for r in siglip2_hf.RULES if all(p.startswith(_HEAD) for p in r.ours)
]
SCALE_RULES: list[Rule] = [
    rule("logit_scale_fine_grained", "logit_scale_finegraind"),  # sic: the reference's spellings
    rule("logit_scale_hard_negative", "logit_scale_hardneg"),
]
EXTRA_RULES: list[Rule] = [
    rule("text_model/position_embedding_res", "text_model.embeddings.position_embedding_res.weight"),
    rule("text_model/position_embedding_ori", "text_model.embeddings.position_embedding_ori.weight"),
    rule("longtext_head/kernel", "longtext_head.weight", LINEAR),
    rule("longtext_head/bias", "longtext_head.bias"),
    rule("boxtext_head/kernel", "boxtext_head.weight", LINEAR),
    rule("boxtext_head/bias", "boxtext_head.bias"),
    *_DENSE_RULES,
]
RULES: list[Rule] = [*siglip2_hf.RULES, *EXTRA_RULES, *SCALE_RULES]
RULES_WITHOUT_SCALES: list[Rule] = [*siglip2_hf.RULES, *EXTRA_RULES]
SCALE_KEYS = tuple(k for r in SCALE_RULES for k in r.theirs)
SCALE_PATHS = tuple(p for r in SCALE_RULES for p in r.ours)
# Non-persistent buffers some exports may still hold; recomputed, never learned.
BUFFER_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def layer_counts(config: Fgclip2Config) -> dict[str, int]:
    return {"vision": config.vision.layers, "text": config.text.layers}


def param_shapes(config: Fgclip2Config) -> dict[str, tuple[int, ...]]:
    """Our flat `{path: shape}` for `config` (cached: `table.flat_shapes`)."""
    return flat_shapes(abstract_params, config)


# ---- config.json ----------------------------------------------------------------------------------

def config_from_json(cfg: Mapping[str, Any], source: str) -> Fgclip2Config:
    """An `Fgclip2Config` dict -> Fgclip2Config (SigLIP 2 fields via siglip2_hf, plus keep_len/longtext_len)."""
    if cfg.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{source}: model_type {cfg.get('model_type')!r} is not an FG-CLIP 2 model ({MODEL_TYPE!r})")
    text = clip_hf.sub_config(cfg, "text_config", {}, source)
    siglip = siglip2_hf.config_from_json({**cfg, "model_type": "siglip2"}, source)
    fields = {f.name: getattr(siglip, f.name) for f in dataclasses.fields(siglip)}
    try:
        return Fgclip2Config(**fields, keep_len=int(text.get("keep_len", 20)),
                             long_context_length=int(text.get("longtext_len", 196)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_json(config: Fgclip2Config, dtype_name: str, carried: Mapping[str, Any] | None = None) -> dict:
    """Fgclip2Config -> config.json; `carried` (auto_map, architectures) overrides the defaults."""
    out = siglip2_hf.config_to_json(config, dtype_name)
    out["model_type"] = MODEL_TYPE
    out["architectures"] = list(ARCHITECTURES)
    out["auto_map"] = dict(DEFAULT_AUTO_MAP)
    out["text_config"].update(model_type="fgclip2_text_model", keep_len=config.keep_len,
                              longtext_len=config.long_context_length)
    out["vision_config"]["model_type"] = "fgclip2_vision_model"
    out.update({k: v for k, v in (carried or {}).items() if k in CARRIED_CONFIG_KEYS})
    return out


# ---- state dicts ----------------------------------------------------------------------------------

def state_from_params(params: Mapping[str, np.ndarray], config: Fgclip2Config, source: str = "params",
                      with_scales: bool = True) -> dict[str, np.ndarray]:
    """Our flat `{path: array}` -> the FG-CLIP 2 state_dict (every path and shape checked);
    `with_scales=False` leaves out the two fine-grained scales (as the inference class saves)."""
    state = to_theirs(params, expand(RULES, layer_counts(config)), param_shapes(config), source)
    if not with_scales:
        for key in SCALE_KEYS:
            del state[key]
    return state


def params_from_state(state: Mapping[str, np.ndarray], config: Fgclip2Config, source: str
                      ) -> tuple[dict[str, np.ndarray], bool]:
    """An FG-CLIP 2 state_dict -> (our flat params, whether the fine-grained scales were in it).

    Without either scale key the two are filled with ln 100 in `logit_scale`'s dtype; with only one,
    the other is reported missing like any other key.
    """
    state = {k: v for k, v in state.items() if k not in BUFFER_KEYS}
    saved = any(k in state for k in SCALE_KEYS)
    shapes = param_shapes(config)
    rules = expand(RULES if saved else RULES_WITHOUT_SCALES, layer_counts(config))
    params = from_theirs(state, rules, {k: v for k, v in shapes.items() if saved or k not in SCALE_PATHS}, source)
    if not saved:
        dtype = np.asarray(state["logit_scale"]).dtype
        for path in SCALE_PATHS:
            params[path] = np.asarray(FINE_GRAINED_SCALE_INIT, dtype=dtype)
    return params, saved


# ---- folders --------------------------------------------------------------------------------------

def read(path: Path, act: str | None = None):
    """An FG-CLIP 2 HF folder -> `families.Checkpoint` (signature of `families.READERS` entries)."""
    from vlalign_jax.converters import (
        families,  # families may import this module: import lazily
    )

    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointFormatError(f"{path}: an FG-CLIP 2 Hugging Face checkpoint is a folder with config.json")
    raw = read_json(path / "config.json")
    config = config_from_json(raw, str(path / "config.json"))
    if act is not None and act != config.act:
        raise ValueError(f"{path}/config.json says hidden_act={config.act!r}, but act={act!r} was requested")
    params, saved = params_from_state(families._hf_weights(path), config, str(path))
    meta: dict[str, Any] = {"fgclip2": {"fine_grained_scales_saved": saved}}
    carried = {k: raw[k] for k in CARRIED_CONFIG_KEYS if k in raw}
    if carried:
        meta["hf_config"] = carried
    return families.Checkpoint(config, params, meta)


def write(ckpt, path: Path, overwrite: bool = False) -> None:
    """`families.Checkpoint` with an Fgclip2Config -> folder with config.json + model.safetensors; all or
    nothing. The fine-grained scales are written unless the checkpoint was read from a folder without them."""
    if not isinstance(ckpt.config, Fgclip2Config):
        raise TypeError(f"an FG-CLIP 2 folder needs an Fgclip2Config, got {type(ckpt.config).__name__}; grow one "
                         "from SigLIP 2 with models.fgclip2.fgclip2_config_from_siglip/fgclip2_params_from_siglip")
    with_scales = ckpt.meta.get("fgclip2", {}).get("fine_grained_scales_saved", True)
    state = {k: np.asarray(v) for k, v in state_from_params(ckpt.params, ckpt.config, with_scales=with_scales).items()}
    dtype_name = str(state["logit_scale"].dtype)  # float32, bfloat16 or float16
    config_json = config_to_json(ckpt.config, dtype_name, ckpt.meta.get("hf_config"))
    with atomic_dir(Path(path), overwrite) as tmp:
        save_state_dict(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2))


def is_fgclip2_folder(path: Path) -> bool:
    """True for an HF folder holding FG-CLIP 2 weights: config.json says model_type "fgclip2", or the
    weights hold `longtext_head.weight` (lets a family detector tell it from a plain SigLIP 2 folder)."""
    path = Path(path)
    if not (path / "config.json").exists():
        return False
    try:
        raw = read_json(path / "config.json")
    except CheckpointFormatError:
        return False
    if raw.get("model_type") == MODEL_TYPE:
        return True
    return "longtext_head.weight" in hf_weight_keys(path)

