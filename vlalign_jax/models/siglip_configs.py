"""Named SigLIP 2 NaFlex architectures (the released B/16 plus a tiny one for tests).

`base-patch16` is `google/siglip2-base-patch16-naflex` (transformers' `Siglip2Config` fields):
both towers 768 wide, 12 layers, 12 heads, MLP 3072, tanh GELU, LayerNorm eps 1e-6; a 16 x 16
learned position grid (`num_patches=256`) over 16 x 16 patches; Gemma vocabulary (256000) with 64
text positions; text `projection_size` 768, so image and text embeddings are both 768 wide.
"""

from __future__ import annotations

from vlalign_jax.models.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig


def _base(width: int, layers: int, heads: int, mlp_dim: int, patch_size: int = 16) -> SiglipConfig:
    return SiglipConfig(
        vision=SiglipVisionConfig(patch_size=patch_size, num_patches=256, width=width, layers=layers,
                                  heads=heads, mlp_dim=mlp_dim),
        text=SiglipTextConfig(vocab_size=256000, context_length=64, width=width, layers=layers, heads=heads,
                              mlp_dim=mlp_dim, projection_dim=width),
    )


SIGLIP_CONFIGS: dict[str, SiglipConfig] = {
    "base-patch16": _base(768, 12, 12, 3072),
    # Seconds on a CPU at every NaFlex bucket: 4 x 4 patches, but the same 16 x 16 position grid as
    # the released models, so the resize both up- and downsamples as it does for them.
    "tiny": SiglipConfig(
        vision=SiglipVisionConfig(patch_size=4, num_patches=256, width=64, layers=2, heads=2, mlp_dim=128),
        text=SiglipTextConfig(vocab_size=1000, context_length=16, width=64, layers=2, heads=2, mlp_dim=128,
                              projection_dim=64),
    ),
}


def get_siglip_config(name: str) -> SiglipConfig:
    """Look up a named architecture; the error lists the known names."""
    if name not in SIGLIP_CONFIGS:
        raise KeyError(f"unknown SigLIP model {name!r}; known: {sorted(SIGLIP_CONFIGS)}")
    return SIGLIP_CONFIGS[name]
