"""Hugging Face `CLIPModel` naming and `config.json`, both ways."""

from __future__ import annotations

from typing import Any, Mapping

from vlalign_jax.converters.table import CONV, LINEAR, Rule, rule
from vlalign_jax.models.clip import ClipConfig, TextConfig, VisionConfig

# transformers' legacy CLIP configs set eos_token_id=2 and then pool at argmax(input_ids).
LEGACY_EOS_TOKEN_ID = 2


def _block_rules(tower: str, repeat: str) -> list[Rule]:
    o, t = f"{tower}/encoder/layers_{{i}}", f"{tower}.encoder.layers.{{i}}"
    rules = []
    for module in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/out_proj",
                   "mlp/fc1", "mlp/fc2"):
        theirs = module.replace("/", ".")
        rules += [rule(f"{o}/{module}/kernel", f"{t}.{theirs}.weight", LINEAR, repeat),
                  rule(f"{o}/{module}/bias", f"{t}.{theirs}.bias", repeat=repeat)]
    for norm in ("layer_norm1", "layer_norm2"):
        rules += [rule(f"{o}/{norm}/scale", f"{t}.{norm}.weight", repeat=repeat),
                  rule(f"{o}/{norm}/bias", f"{t}.{norm}.bias", repeat=repeat)]
    return rules


def _norm(ours: str, theirs: str) -> list[Rule]:
    return [rule(f"{ours}/scale", f"{theirs}.weight"), rule(f"{ours}/bias", f"{theirs}.bias")]


RULES: list[Rule] = [
    rule("vision_model/embeddings/class_embedding", "vision_model.embeddings.class_embedding"),
    rule("vision_model/embeddings/position_embedding", "vision_model.embeddings.position_embedding.weight"),
    rule("vision_model/embeddings/patch_embedding/kernel", "vision_model.embeddings.patch_embedding.weight", CONV),
    *_norm("vision_model/pre_layernorm", "vision_model.pre_layrnorm"),  # sic: HF's spelling
    *_block_rules("vision_model", "vision"),
    *_norm("vision_model/post_layernorm", "vision_model.post_layernorm"),
    rule("visual_projection/kernel", "visual_projection.weight", LINEAR),
    rule("text_model/token_embedding/embedding", "text_model.embeddings.token_embedding.weight"),
    rule("text_model/position_embedding", "text_model.embeddings.position_embedding.weight"),
    *_block_rules("text_model", "text"),
    *_norm("text_model/final_layer_norm", "text_model.final_layer_norm"),
    rule("text_projection/kernel", "text_projection.weight", LINEAR),
    rule("logit_scale", "logit_scale"),
]

# Buffers some transformers versions save; they are recomputed, not learned.
BUFFER_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for fields a config.json leaves out.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def sub_config(cfg: Mapping[str, Any], name: str, defaults: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`cfg[name]` over `defaults`; a sub-config that is not a JSON object is an error naming it."""
    sub = cfg.get(name) or {}
    if not isinstance(sub, Mapping):
        raise ValueError(f"{source}: {name} must be an object, got {sub!r}")
    return {**defaults, **sub}


def require_positive_ints(fields: Mapping[str, Any], names: Any, source: str, where: str = "") -> None:
    """Sizes read from a config must be positive integers (not strings, floats, bools or null)."""
    bad = [f"{where}{n}={fields[n]!r}" for n in names
           if isinstance(fields[n], bool) or not isinstance(fields[n], int) or fields[n] <= 0]
    if bad:
        raise ValueError(f"{source}: these fields must be positive integers: {', '.join(bad)}")


_TEXT_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "eos_token_id")
_VISION_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size")


def config_from_json(cfg: Mapping[str, Any], source: str) -> ClipConfig:
    """transformers `CLIPConfig` dict -> ClipConfig; towers with different activations are refused."""
    if cfg.get("model_type", "clip") != "clip":
        raise ValueError(f"{source}: model_type {cfg.get('model_type')!r} is not a CLIP model")
    t = sub_config(cfg, "text_config", _TEXT_DEFAULTS, source)
    v = sub_config(cfg, "vision_config", _VISION_DEFAULTS, source)
    require_positive_ints(t, _TEXT_SIZES, source, "text_config.")
    require_positive_ints(v, _VISION_SIZES, source, "vision_config.")
    require_positive_ints({"projection_dim": cfg.get("projection_dim", 512)}, ["projection_dim"], source)
    for name, tower in (("text_config", t), ("vision_config", v)):
        if tower["hidden_size"] % tower["num_attention_heads"]:
            raise ValueError(f"{source}: {name}.hidden_size {tower['hidden_size']} is not divisible by "
                             f"num_attention_heads {tower['num_attention_heads']}")
    if t["hidden_act"] != v["hidden_act"] or t["layer_norm_eps"] != v["layer_norm_eps"]:
        raise ValueError(f"{source}: the text and vision towers use different activations or LayerNorm eps "
                         f"({t['hidden_act']}/{t['layer_norm_eps']} vs {v['hidden_act']}/{v['layer_norm_eps']}); "
                         "vlalign_jax's CLIP shares one")
    eos = t["eos_token_id"]
    text = TextConfig(vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"],
                      width=t["hidden_size"], layers=t["num_hidden_layers"], heads=t["num_attention_heads"],
                      mlp_dim=t["intermediate_size"], pool="argmax" if eos == LEGACY_EOS_TOKEN_ID else "eos",
                      eos_token_id=49407 if eos == LEGACY_EOS_TOKEN_ID else eos)
    vision = VisionConfig(image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
                          layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                          mlp_dim=v["intermediate_size"])
    return ClipConfig(embed_dim=cfg.get("projection_dim", 512), vision=vision, text=text, act=t["hidden_act"],
                      layer_norm_eps=t["layer_norm_eps"])


def config_to_json(config: ClipConfig, torch_dtype: str) -> dict[str, Any]:
    """ClipConfig -> a config.json that `transformers.CLIPModel.from_pretrained` reads."""
    t, v = config.text, config.vision
    eos = LEGACY_EOS_TOKEN_ID if t.pool == "argmax" else t.eos_token_id
    common = dict(hidden_act=config.act, layer_norm_eps=config.layer_norm_eps, projection_dim=config.embed_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.logit_scale_init,
        "torch_dtype": torch_dtype,
        "text_config": dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim,
                            num_hidden_layers=t.layers, num_attention_heads=t.heads,
                            max_position_embeddings=t.context_length, eos_token_id=eos, bos_token_id=49406,
                            pad_token_id=1, **common),
        "vision_config": dict(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.layers,
                              num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                              num_channels=3, **common),
    }
