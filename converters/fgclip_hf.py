"""FG-CLIP 1 Hugging Face folders (remote code `FGCLIPModel`), both ways.

The state_dict is transformers' `CLIPModel` plus five entries (shared/research/fgclip.md section 5.1):
`text_model.embeddings.position_embedding_{res,ori}.weight` [248, Dt], `text_filip_projection.weight`
[P, Dt] and the 0-d `logit_scale_finegraind` / `logit_scale_hardneg` (the reference's spellings; ours
are `logit_scale_fine_grained` / `logit_scale_hard_negative`). The CLIP keys use `clip_hf.RULES`.

config.json is a plain transformers `CLIPConfig` (`model_type="clip"`). Loading with
`trust_remote_code` needs a top-level `auto_map` (beside `architectures`, not inside the text or
vision sub-configs) naming the remote classes, and those `.py` files next to config.json; we write
neither file. The released folders' exact `auto_map` could not be read (fgclip.md 5.1 VERIFY): what a
folder we read carries is kept in `Checkpoint.meta["hf_config"]` and written back unchanged;
otherwise `DEFAULT_AUTO_MAP` names the GitHub v1.0 files, a guess.

The reference model ignores the config's token ids and forces eos = pad = 49407, bos = 49406, and
hard-codes 248-row long tables with keep_len 20; reading does the same, writing refuses anything else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlalign_jax.converters import clip_hf
from vlalign_jax.converters.table import LINEAR, Rule, expand, flat_shapes, from_theirs, rule, to_theirs
from vlalign_jax.converters.torch_io import (CheckpointFormatError, atomic_dir, hf_weight_keys, read_json,
                                             save_state_dict)
from vlalign_jax.models.fgclip import EOS_TOKEN_ID, KEEP_LEN, FgClipConfig, abstract_params

# The remote-code model hard-codes these (modeling_clip.py:258-265, fgclip.py:54-56).
LONG_CONTEXT_LENGTH = 248
BOS_TOKEN_ID = 49406
# GitHub v1.0 keeps FGCLIPModel in fgclip.py and CLIPConfig in configuration_clip.py; the Hub copy's
# file names are unverified.
DEFAULT_AUTO_MAP = {"AutoConfig": "configuration_clip.CLIPConfig",
                    "AutoModelForCausalLM": "fgclip.FGCLIPModel"}
ARCHITECTURES = ["FGCLIPModel"]
# config.json fields carried through Checkpoint.meta so a round trip keeps them.
CARRIED_CONFIG_KEYS = ("auto_map", "architectures")

EXTRA_RULES: list[Rule] = [
    rule("text_model/position_embedding_res", "text_model.embeddings.position_embedding_res.weight"),
    rule("text_model/position_embedding_ori", "text_model.embeddings.position_embedding_ori.weight"),
    rule("text_filip_projection/kernel", "text_filip_projection.weight", LINEAR),
    rule("logit_scale_fine_grained", "logit_scale_finegraind"),  # sic: the reference's spelling
    rule("logit_scale_hard_negative", "logit_scale_hardneg"),
]
RULES: list[Rule] = [*clip_hf.RULES, *EXTRA_RULES]
# Non-persistent in the reference, but some exports save them; recomputed, never learned.
BUFFER_KEYS = clip_hf.BUFFER_KEYS


def layer_counts(config: FgClipConfig) -> dict[str, int]:
    return {"vision": config.vision.layers, "text": config.text.layers}


def param_shapes(config: FgClipConfig) -> dict[str, tuple[int, ...]]:
    """Our flat `{path: shape}` for `config` (cached: `table.flat_shapes`)."""
    return flat_shapes(abstract_params, config)


def config_from_json(cfg: Mapping[str, Any], source: str) -> FgClipConfig:
    """An FG-CLIP folder's `CLIPConfig` dict -> FgClipConfig (eos pooling at 49407, as the model forces)."""
    clip = clip_hf.config_from_json(cfg, source)
    fields = {f.name: getattr(clip, f.name) for f in dataclasses.fields(clip)}
    fields["text"] = dataclasses.replace(clip.text, pool="eos", eos_token_id=EOS_TOKEN_ID)
    if "logit_scale_init_value" in cfg:
        fields["logit_scale_init"] = float(cfg["logit_scale_init_value"])
    return FgClipConfig(**fields, long_context_length=LONG_CONTEXT_LENGTH, keep_len=KEEP_LEN)


def config_to_json(config: FgClipConfig, torch_dtype: str, carried: Mapping[str, Any] | None = None) -> dict:
    """FgClipConfig -> config.json; `carried` (auto_map, architectures) overrides the defaults."""
    if config.long_context_length != LONG_CONTEXT_LENGTH or config.keep_len != KEEP_LEN:
        raise ValueError(f"the FG-CLIP remote code hard-codes {LONG_CONTEXT_LENGTH} long positions and keep_len "
                         f"{KEEP_LEN}; this model has {config.long_context_length} and {config.keep_len}")
    if config.text.eos_token_id != EOS_TOKEN_ID:
        raise ValueError(f"the FG-CLIP remote code pools at token {EOS_TOKEN_ID}, not {config.text.eos_token_id}")
    out = clip_hf.config_to_json(config, torch_dtype)
    out["text_config"].update(eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID, bos_token_id=BOS_TOKEN_ID)
    out["architectures"] = list(ARCHITECTURES)
    out["auto_map"] = dict(DEFAULT_AUTO_MAP)
    out.update({k: v for k, v in (carried or {}).items() if k in CARRIED_CONFIG_KEYS})
    return out


def state_from_params(params: Mapping[str, np.ndarray], config: FgClipConfig,
                      source: str = "params") -> dict[str, np.ndarray]:
    """Our flat `{path: array}` -> the FG-CLIP state_dict (every path and shape checked)."""
    return to_theirs(params, expand(RULES, layer_counts(config)), param_shapes(config), source)


def params_from_state(state: Mapping[str, np.ndarray], config: FgClipConfig, source: str) -> dict[str, np.ndarray]:
    """An FG-CLIP state_dict -> our flat params; one error lists every missing/unexpected/mis-shaped key."""
    state = {k: v for k, v in state.items() if k not in BUFFER_KEYS}
    return from_theirs(state, expand(RULES, layer_counts(config)), param_shapes(config), source)


def read(path: Path, act: str | None = None):
    """An FG-CLIP HF folder -> `families.Checkpoint` (signature of `families.READERS` entries)."""
    from vlalign_jax.converters import families  # families may import this module: import lazily

    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointFormatError(f"{path}: an FG-CLIP Hugging Face checkpoint is a folder with config.json")
    raw = read_json(path / "config.json")
    config = config_from_json(raw, str(path / "config.json"))
    if act is not None and act != config.act:
        raise ValueError(f"{path}/config.json says hidden_act={config.act!r}, but act={act!r} was requested")
    params = params_from_state(families._hf_weights(path), config, str(path))
    carried = {k: raw[k] for k in CARRIED_CONFIG_KEYS if k in raw}
    return families.Checkpoint(config, params, {"hf_config": carried} if carried else {})


def write(ckpt, path: Path, overwrite: bool = False) -> None:
    """`families.Checkpoint` with an FgClipConfig -> folder with config.json + model.safetensors."""
    if not isinstance(ckpt.config, FgClipConfig):
        raise ValueError(f"an FG-CLIP folder needs an FgClipConfig, got {type(ckpt.config).__name__}; "
                         "grow one from CLIP with models.fgclip.fgclip_config_from_clip/fgclip_params_from_clip")
    state = {k: np.asarray(v) for k, v in state_from_params(ckpt.params, ckpt.config).items()}  # 0-d stays 0-d
    dtype_name = str(next(iter(state.values())).dtype)  # float32, bfloat16 or float16
    config_json = config_to_json(ckpt.config, dtype_name, ckpt.meta.get("hf_config"))
    with atomic_dir(Path(path), overwrite) as tmp:
        save_state_dict(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2))


def is_fgclip_folder(path: Path) -> bool:
    """True for an HF folder holding FG-CLIP weights (config names FGCLIPModel, or the weights hold
    `text_filip_projection.weight`); lets `detect_family` tell it from a plain CLIP folder."""
    path = Path(path)
    if not (path / "config.json").exists():
        return False
    raw = read_json(path / "config.json")
    architectures = raw.get("architectures")
    if isinstance(architectures, list) and any("FGCLIP" in str(a) for a in architectures):
        return True
    return "text_filip_projection.weight" in hf_weight_keys(path)

