"""Hugging Face `Siglip2Model` (NaFlex) folders, both ways: naming table, config.json, read and write.

A folder is `config.json` (`model_type: "siglip2"`) plus `model.safetensors` (or a sharded
`model.safetensors.index.json`, or `pytorch_model.bin`), as `Siglip2Model.save_pretrained` writes it.
Only the MAP head's `torch.nn.MultiheadAttention` is not a plain rename: its packed `in_proj_weight`
/ `in_proj_bias` are our separate q/k/v projections. `logit_scale`/`logit_bias` are `(1,)` there and
0-d here. FG-CLIP 2 (`shared/research/fgclip.md` 5.2) is this layout plus extra tables and heads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlalign_jax.converters import clip_hf
from vlalign_jax.converters.table import (FUSED_QKV_BIAS, FUSED_QKV_WEIGHT, LINEAR, Rule, Transform, expand,
                                          flat_shapes, from_theirs, rule, to_theirs)
from vlalign_jax.converters.torch_io import (CheckpointFormatError, atomic_dir, load_safetensors,
                                             load_torch_object, read_json, save_state_dict, tensors_to_numpy)
from vlalign_jax.models.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig, abstract_params

if TYPE_CHECKING:
    from vlalign_jax.converters.families import Checkpoint

# Our 0-d scalars <-> torch's `nn.Parameter(torch.randn(1))`.
SCALAR = Transform(
    "scalar",
    lambda a: (np.asarray(a[0], order="C").reshape(1),),
    lambda a: (np.asarray(a[0], order="C").reshape(()),),
    lambda s: ((1,),),
)

_LINEARS = ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/out_proj", "mlp/fc1", "mlp/fc2")


def _linear(ours: str, theirs: str, repeat: str | None = None) -> list[Rule]:
    return [rule(f"{ours}/kernel", f"{theirs}.weight", LINEAR, repeat), rule(f"{ours}/bias", f"{theirs}.bias",
                                                                           repeat=repeat)]


def _norm(ours: str, theirs: str, repeat: str | None = None) -> list[Rule]:
    return [rule(f"{ours}/scale", f"{theirs}.weight", repeat=repeat), rule(f"{ours}/bias", f"{theirs}.bias",
                                                                          repeat=repeat)]


def _block_rules(tower: str) -> list[Rule]:
    o, t = f"{tower}_model/encoder/layers_{{i}}", f"{tower}_model.encoder.layers.{{i}}"
    rules = [r for m in _LINEARS for r in _linear(f"{o}/{m}", f"{t}.{m.replace('/', '.')}", tower)]
    return rules + [r for n in ("layer_norm1", "layer_norm2") for r in _norm(f"{o}/{n}", f"{t}.{n}", tower)]


_HEAD, _THEIR_HEAD = "vision_model/head", "vision_model.head"
RULES: list[Rule] = [
    *_linear("vision_model/embeddings/patch_embedding", "vision_model.embeddings.patch_embedding"),
    rule("vision_model/embeddings/position_embedding/embedding", "vision_model.embeddings.position_embedding.weight"),
    *_block_rules("vision"),
    *_norm("vision_model/post_layernorm", "vision_model.post_layernorm"),
    rule(f"{_HEAD}/probe", f"{_THEIR_HEAD}.probe"),
    rule(tuple(f"{_HEAD}/attention/{p}_proj/kernel" for p in "qkv"), f"{_THEIR_HEAD}.attention.in_proj_weight",
         FUSED_QKV_WEIGHT),
    rule(tuple(f"{_HEAD}/attention/{p}_proj/bias" for p in "qkv"), f"{_THEIR_HEAD}.attention.in_proj_bias",
         FUSED_QKV_BIAS),
    *_linear(f"{_HEAD}/attention/out_proj", f"{_THEIR_HEAD}.attention.out_proj"),
    *_norm(f"{_HEAD}/layernorm", f"{_THEIR_HEAD}.layernorm"),
    *_linear(f"{_HEAD}/mlp/fc1", f"{_THEIR_HEAD}.mlp.fc1"),
    *_linear(f"{_HEAD}/mlp/fc2", f"{_THEIR_HEAD}.mlp.fc2"),
    rule("text_model/embeddings/token_embedding/embedding", "text_model.embeddings.token_embedding.weight"),
    rule("text_model/embeddings/position_embedding/embedding", "text_model.embeddings.position_embedding.weight"),
    *_block_rules("text"),
    *_norm("text_model/final_layer_norm", "text_model.final_layer_norm"),
    *_linear("text_model/head", "text_model.head"),
    rule("logit_scale", "logit_scale", SCALAR),
    rule("logit_bias", "logit_bias", SCALAR),
]

# A buffer older transformers versions may have saved; it is recomputed, not learned.
BUFFER_KEYS = ("text_model.embeddings.position_ids",)

# transformers' Siglip2TextConfig / Siglip2VisionConfig defaults, for fields a config.json leaves out.
_TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                      layer_norm_eps=1e-6, projection_size=None)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        num_channels=3, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                        vision_use_head=True, num_patches=256)
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def layer_counts(config: SiglipConfig) -> dict[str, int]:
    return {"vision": config.vision.layers, "text": config.text.layers}


def param_shapes(config: SiglipConfig) -> dict[str, tuple[int, ...]]:
    """Our flat `{path: shape}` for `config` (cached: `table.flat_shapes`)."""
    return flat_shapes(abstract_params, config)


def config_from_json(cfg: Mapping[str, Any], source: str) -> SiglipConfig:
    """transformers `Siglip2Config` dict -> SiglipConfig; what we cannot represent is refused by name."""
    if cfg.get("model_type") != "siglip2":
        raise ValueError(f"{source}: model_type {cfg.get('model_type')!r} is not a SigLIP 2 model ('siglip2')")
    t = clip_hf.sub_config(cfg, "text_config", _TEXT_DEFAULTS, source)
    v = clip_hf.sub_config(cfg, "vision_config", _VISION_DEFAULTS, source)
    clip_hf.require_positive_ints(t, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "max_position_embeddings"), source, "text_config.")
    clip_hf.require_positive_ints(v, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                      "num_channels", "num_patches"), source, "vision_config.")
    if not v["vision_use_head"]:
        raise ValueError(f"{source}: vision_use_head=false (no MAP head) is not supported")
    if isinstance(v["patch_size"], bool) or not isinstance(v["patch_size"], int) or v["patch_size"] <= 0:
        raise ValueError(f"{source}: patch_size {v['patch_size']!r} must be one integer (square patches)")
    if t["hidden_act"] != v["hidden_act"] or t["layer_norm_eps"] != v["layer_norm_eps"]:
        raise ValueError(f"{source}: the text and vision towers use different activations or LayerNorm eps "
                         f"({t['hidden_act']}/{t['layer_norm_eps']} vs {v['hidden_act']}/{v['layer_norm_eps']}); "
                         "vlalign_jax's SigLIP shares one")
    eos = t.get("eos_token_id")
    if isinstance(eos, list):
        raise ValueError(f"{source}: a list of eos_token_id {eos} is not supported")
    text = SiglipTextConfig(
        vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"], width=t["hidden_size"],
        layers=t["num_hidden_layers"], heads=t["num_attention_heads"], mlp_dim=t["intermediate_size"],
        projection_dim=t["projection_size"] if t["projection_size"] is not None else t["hidden_size"],
        **{k: t.get(k) for k in _TOKEN_IDS})
    vision = SiglipVisionConfig(patch_size=v["patch_size"], num_patches=v["num_patches"], width=v["hidden_size"],
                                layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                                mlp_dim=v["intermediate_size"], num_channels=v["num_channels"])
    try:
        return SiglipConfig(vision=vision, text=text, act=t["hidden_act"], layer_norm_eps=t["layer_norm_eps"])
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_json(config: SiglipConfig, dtype_name: str) -> dict[str, Any]:
    """SiglipConfig -> a config.json that `transformers.Siglip2Model.from_pretrained` reads."""
    t, v = config.text, config.vision
    common = dict(hidden_act=config.act, layer_norm_eps=config.layer_norm_eps, attention_dropout=0.0)
    token_ids = {k: getattr(t, k) for k in _TOKEN_IDS if getattr(t, k) is not None}
    return {
        "architectures": ["Siglip2Model"],
        "model_type": "siglip2",
        "dtype": dtype_name,
        "initializer_factor": 1.0,
        "text_config": dict(model_type="siglip2_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
                            intermediate_size=t.mlp_dim, num_hidden_layers=t.layers, num_attention_heads=t.heads,
                            max_position_embeddings=t.context_length, projection_size=t.projection_dim,
                            **token_ids, **common),
        "vision_config": dict(model_type="siglip2_vision_model", hidden_size=v.width, intermediate_size=v.mlp_dim,
                              num_hidden_layers=v.layers, num_attention_heads=v.heads, num_channels=v.num_channels,
                              patch_size=v.patch_size, num_patches=v.num_patches, vision_use_head=True, **common),
    }


def params_from_hf(state: Mapping[str, np.ndarray], config: SiglipConfig, source: str) -> dict[str, np.ndarray]:
    """Their flat state_dict -> our flat `{path: array}`; every missing, extra or mis-shaped key is listed."""
    state = {k: a for k, a in state.items() if k not in BUFFER_KEYS}
    return from_theirs(state, expand(RULES, layer_counts(config)), param_shapes(config), source)


def params_to_hf(params: Mapping[str, np.ndarray], config: SiglipConfig, source: str = "params"
                 ) -> dict[str, np.ndarray]:
    """Our flat `{path: array}` -> their state_dict."""
    return to_theirs(params, expand(RULES, layer_counts(config)), param_shapes(config), source)


def load_hf_weights(path: Path) -> dict[str, np.ndarray]:
    """A HF folder's tensors: sharded or single safetensors, else pytorch_model.bin."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        return {k: a for shard in shards for k, a in load_safetensors(path / shard).items()}
    if (path / "model.safetensors").exists():
        return load_safetensors(path / "model.safetensors")
    if (path / "pytorch_model.bin").exists():
        return tensors_to_numpy(load_torch_object(path / "pytorch_model.bin"), path / "pytorch_model.bin")
    raise CheckpointFormatError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")


def read_siglip2_hf(path: Path, act: str | None) -> Checkpoint:
    """A `Siglip2Model` folder -> Checkpoint(SiglipConfig, flat params as stored)."""
    # Imported here: families.py imports this module to register the family.
    from vlalign_jax.converters.families import Checkpoint

    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointFormatError(f"{path}: a Hugging Face checkpoint is a folder with config.json")
    config = config_from_json(read_json(path / "config.json"), str(path / "config.json"))
    if act is not None and act != config.act:
        raise ValueError(f"{path}/config.json says hidden_act={config.act!r}, but act={act!r} was requested")
    return Checkpoint(config, params_from_hf(load_hf_weights(path), config, str(path)))


def write_siglip2_hf(ckpt: Checkpoint, path: Path, overwrite: bool) -> None:
    """Checkpoint(SiglipConfig, ...) -> a folder `Siglip2Model.from_pretrained` loads; all or nothing."""
    if not isinstance(ckpt.config, SiglipConfig):
        raise TypeError(f"a siglip2 folder needs a SiglipConfig checkpoint, got {type(ckpt.config).__name__}")
    state = params_to_hf(ckpt.params, ckpt.config)
    dtype_name = str(next(iter(state.values())).dtype)  # float32, bfloat16 or float16
    with atomic_dir(Path(path), overwrite) as tmp:
        save_state_dict(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_to_json(ckpt.config, dtype_name), indent=2))
