"""Named CLIP architectures (OpenAI's released sizes plus tiny ones for tests)."""

from __future__ import annotations

import dataclasses

from vlalign_jax.models.clip import ClipConfig, TextConfig, VisionConfig


def _vit(image_size: int, patch_size: int, width: int, layers: int) -> VisionConfig:
    return VisionConfig(image_size, patch_size, width, layers, width // 64, 4 * width)


def _text(width: int, layers: int, context_length: int = 77) -> TextConfig:
    return TextConfig(context_length=context_length, width=width, layers=layers, heads=width // 64,
                      mlp_dim=4 * width)


_TINY = ClipConfig(32, VisionConfig(32, 8, 128, 2, 2, 256), _text(128, 2, context_length=16))

CLIP_CONFIGS: dict[str, ClipConfig] = {
    "ViT-B-32": ClipConfig(512, _vit(224, 32, 768, 12), _text(512, 12)),
    "ViT-B-16": ClipConfig(512, _vit(224, 16, 768, 12), _text(512, 12)),
    "ViT-L-14": ClipConfig(768, _vit(224, 14, 1024, 24), _text(768, 12)),
    "ViT-L-14-336": ClipConfig(768, _vit(336, 14, 1024, 24), _text(768, 12)),
    # Tiny sizes for tests and demos: seconds on a CPU. Heads are 64 wide, as in every released
    # checkpoint, so the head count can be inferred from tensor shapes when converting.
    "tiny": _TINY,
    "tiny-gelu": dataclasses.replace(_TINY, act="gelu"),
}


def get_clip_config(name: str) -> ClipConfig:
    """Look up a named architecture; the error lists the known names."""
    if name not in CLIP_CONFIGS:
        raise KeyError(f"unknown CLIP model {name!r}; known: {sorted(CLIP_CONFIGS)}")
    return CLIP_CONFIGS[name]
