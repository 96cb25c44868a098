"""Random PyTorch reference models for parity tests (tiny unless asked otherwise)."""

from __future__ import annotations

import numpy as np
import torch


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter, so LayerNorm scales, biases and the logit scale are not at their init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module.eval()


def tiny_open_clip(quick_gelu: bool = True, seed: int = 0, image_size: int = 32, layers: int = 2):
    from open_clip.model import CLIP

    model = CLIP(embed_dim=32,
                 vision_cfg=dict(image_size=image_size, patch_size=8, width=128, layers=layers, mlp_ratio=2),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=128, heads=2, layers=layers),
                 quick_gelu=quick_gelu)
    return randomize(model, seed)


def tiny_hf_clip(seed: int = 0, eos_token_id: int = 2, hidden_act: str = "quick_gelu"):
    import transformers

    common = dict(hidden_act=hidden_act, num_hidden_layers=2, num_attention_heads=2, hidden_size=128)
    config = transformers.CLIPConfig(
        text_config=dict(intermediate_size=512, max_position_embeddings=16, eos_token_id=eos_token_id, **common),
        vision_config=dict(intermediate_size=256, image_size=32, patch_size=8, **common),
        projection_dim=32)
    torch.manual_seed(seed)
    return randomize(transformers.CLIPModel(config), seed)


def inputs(batch: int = 3, image_size: int = 32, context_length: int = 16, seed: int = 0):
    """Normalized NHWC pixels and token rows shaped like tokenizer output (sot, text, eot, padding)."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
    tokens = np.zeros((batch, context_length), np.int64)
    for row in range(batch):
        n = int(rng.integers(1, context_length - 1))
        tokens[row, 0] = 49406
        tokens[row, 1:n] = rng.integers(1, 49000, n - 1)
        tokens[row, n] = 49407
    return pixels, tokens


def torch_embeddings(image_fn, text_fn, pixels: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        image = image_fn(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        text = text_fn(torch.from_numpy(tokens))
    pooled = lambda out: out if isinstance(out, torch.Tensor) else out.pooler_output
    return pooled(image).numpy(), pooled(text).numpy()


def jax_embeddings(model, params, pixels: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = model.apply({"params": params}, pixels, method="encode_image")
    text = model.apply({"params": params}, tokens.astype(np.int32), method="encode_text")
    return np.asarray(image), np.asarray(text)
