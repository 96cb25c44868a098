"""OpenAI CLIP / open_clip state_dict naming (`visual.transformer.resblocks.3.attn.in_proj_weight`).

The same names serve OpenAI's releases, open_clip's `CLIP` class and DeGLA's checkpoints. The
architecture is inferred from tensor shapes as OpenAI's `build_model` does (heads = width / 64);
the activation is not visible in the weights, so each family states its default.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np

from vlalign_jax.converters.table import (CONV, FUSED_QKV_BIAS, FUSED_QKV_WEIGHT, IDENTITY, LINEAR,
                                          CheckpointMismatchError, Rule, rule)
from vlalign_jax.converters.torch_io import CheckpointFormatError
from vlalign_jax.models.clip import ClipConfig, TextConfig, VisionConfig

# Entries that are not learned weights: OpenAI's TorchScript archives record sizes next to the weights,
# and TorchScript state_dicts include the causal mask buffer. Both are recomputed, so they are dropped.
DERIVED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _block_rules(ours: str, theirs: str, repeat: str) -> list[Rule]:
    o, t = f"{ours}/encoder/layers_{{i}}", f"{theirs}.resblocks.{{i}}"
    qkv = lambda leaf: tuple(f"{o}/self_attn/{n}_proj/{leaf}" for n in "qkv")
    return [
        rule(f"{o}/layer_norm1/scale", f"{t}.ln_1.weight", repeat=repeat),
        rule(f"{o}/layer_norm1/bias", f"{t}.ln_1.bias", repeat=repeat),
        rule(qkv("kernel"), f"{t}.attn.in_proj_weight", FUSED_QKV_WEIGHT, repeat),
        rule(qkv("bias"), f"{t}.attn.in_proj_bias", FUSED_QKV_BIAS, repeat),
        rule(f"{o}/self_attn/out_proj/kernel", f"{t}.attn.out_proj.weight", LINEAR, repeat),
        rule(f"{o}/self_attn/out_proj/bias", f"{t}.attn.out_proj.bias", repeat=repeat),
        rule(f"{o}/layer_norm2/scale", f"{t}.ln_2.weight", repeat=repeat),
        rule(f"{o}/layer_norm2/bias", f"{t}.ln_2.bias", repeat=repeat),
        rule(f"{o}/mlp/fc1/kernel", f"{t}.mlp.c_fc.weight", LINEAR, repeat),
        rule(f"{o}/mlp/fc1/bias", f"{t}.mlp.c_fc.bias", repeat=repeat),
        rule(f"{o}/mlp/fc2/kernel", f"{t}.mlp.c_proj.weight", LINEAR, repeat),
        rule(f"{o}/mlp/fc2/bias", f"{t}.mlp.c_proj.bias", repeat=repeat),
    ]


def _norm(ours: str, theirs: str) -> list[Rule]:
    return [rule(f"{ours}/scale", f"{theirs}.weight"), rule(f"{ours}/bias", f"{theirs}.bias")]


RULES: list[Rule] = [
    rule("vision_model/embeddings/class_embedding", "visual.class_embedding"),
    rule("vision_model/embeddings/position_embedding", "visual.positional_embedding"),
    rule("vision_model/embeddings/patch_embedding/kernel", "visual.conv1.weight", CONV),
    *_norm("vision_model/pre_layernorm", "visual.ln_pre"),
    *_block_rules("vision_model", "visual.transformer", "vision"),
    *_norm("vision_model/post_layernorm", "visual.ln_post"),
    # OpenAI stores projections as [in, out] matrices used as `x @ proj`, like flax kernels.
    rule("visual_projection/kernel", "visual.proj", IDENTITY),
    rule("text_model/token_embedding/embedding", "token_embedding.weight"),
    rule("text_model/position_embedding", "positional_embedding"),
    *_block_rules("text_model", "transformer", "text"),
    *_norm("text_model/final_layer_norm", "ln_final"),
    rule("text_projection/kernel", "text_projection", IDENTITY),
    rule("logit_scale", "logit_scale"),
]


def rules_for(config: ClipConfig) -> list[Rule]:
    """The table for this architecture: open_clip's SigLIP-style models add `logit_bias`."""
    return RULES + ([rule("logit_bias", "logit_bias")] if config.logit_bias_init is not None else [])


def layer_counts(config: ClipConfig) -> dict[str, int]:
    return {"vision": config.vision.layers, "text": config.text.layers}


def _count_layers(state: Mapping[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(state: Mapping[str, np.ndarray], act: str, source: str, vision_heads: int | None = None,
                 text_heads: int | None = None, key_prefix: str = "") -> ClipConfig:
    """Rebuild the architecture from tensor shapes; missing keys needed for that are listed. Head
    counts leave no trace in the shapes: pass them when a config records them, else width // 64 (every
    OpenAI model; open_clip configs may differ, e.g. ViT-H-14's 16 heads of 80). Errors name keys as the file
    spells them: `key_prefix` is what the caller stripped (CLIP-VG's `clip.`)."""
    needed = ["visual.conv1.weight", "visual.positional_embedding", "visual.transformer.resblocks.0.mlp.c_fc.weight",
              "text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight",
              "transformer.resblocks.0.mlp.c_fc.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointMismatchError(source, missing=[key_prefix + k for k in missing])
    ranks = dict(zip(needed, (4, 2, 2, 2, 2, 2, 1, 2)))
    wrong = [f"{key_prefix}{k} {tuple(np.shape(state[k]))}" for k, n in ranks.items()
             if np.ndim(state[k]) != n or 0 in np.shape(state[k])]
    if "logit_bias" in state and np.size(state["logit_bias"]) != 1:
        wrong.append(f"{key_prefix}logit_bias {tuple(np.shape(state['logit_bias']))}")
    if wrong:
        raise CheckpointFormatError(f"{source}: the architecture is read from these tensors' shapes, which cannot be "
                                    f"right: {', '.join(wrong)}")
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round(math.sqrt(state["visual.positional_embedding"].shape[0] - 1))
    text_width = state["ln_final.weight"].shape[0]
    vision = VisionConfig(
        image_size=grid * patch, patch_size=patch, width=vision_width,
        layers=_count_layers(state, "visual.transformer"), heads=vision_heads or max(vision_width // 64, 1),
        mlp_dim=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    text = TextConfig(
        vocab_size=state["token_embedding.weight"].shape[0], context_length=state["positional_embedding"].shape[0],
        width=text_width, layers=_count_layers(state, "transformer"), heads=text_heads or max(text_width // 64, 1),
        mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], pool="argmax")
    for tower, key in ((vision, "visual.conv1.weight"), (text, "ln_final.weight")):
        if tower.width % tower.heads:
            raise CheckpointFormatError(f"{source}: a width of {tower.width} (read from {key_prefix}{key}) cannot be "
                                        f"split into {tower.heads} attention heads")
    bias = float(np.asarray(state["logit_bias"], np.float32)) if "logit_bias" in state else None
    return ClipConfig(embed_dim=state["text_projection"].shape[1], vision=vision, text=text, act=act,
                      logit_bias_init=bias)


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Drop a DDP `module.` prefix when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)
