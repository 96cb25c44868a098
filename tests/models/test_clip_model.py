"""The CLIP module itself: architecture sizes, input checks, mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from vlalign_jax.models.clip import CLIP, abstract_params
from vlalign_jax.models.clip_configs import CLIP_CONFIGS, get_clip_config


@pytest.mark.parametrize("name,open_clip_name", [("ViT-B-32", "ViT-B-32-quickgelu"),
                                                 ("ViT-B-16", "ViT-B-16-quickgelu"),
                                                 ("ViT-L-14", "ViT-L-14-quickgelu"),
                                                 ("ViT-L-14-336", "ViT-L-14-336-quickgelu")])
def test_named_sizes_match_open_clip_parameter_counts(name, open_clip_name):
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only: no memory for ViT-L
        ref = open_clip.create_model(open_clip_name, pretrained=None, device="meta")
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(get_clip_config(name))))
    assert ours == sum(p.numel() for p in ref.parameters())


def test_unknown_model_name_lists_known_names():
    with pytest.raises(KeyError, match="ViT-B-32"):
        get_clip_config("ViT-H-99")


def _init(config, **kwargs):
    model = CLIP(config, **kwargs)
    pixels = jnp.zeros((2, config.vision.image_size, config.vision.image_size, 3))
    tokens = jnp.zeros((2, config.text.context_length), jnp.int32)
    return model, nn.meta.unbox(model.init(jax.random.key(0), pixels, tokens)["params"]), pixels, tokens


def test_wrong_input_shapes_are_named():
    model, params, pixels, tokens = _init(get_clip_config("tiny"))
    with pytest.raises(ValueError, match=r"pixels must be \[batch, 32, 32, 3\]"):
        model.apply({"params": params}, jnp.zeros((2, 3, 32, 32)), method="encode_image")
    with pytest.raises(ValueError, match="token_ids must be"):
        model.apply({"params": params}, jnp.zeros((2, 17), jnp.int32), method="encode_text")


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32():
    config = get_clip_config("tiny")
    model32, params, pixels, tokens = _init(config)
    model16 = CLIP(config, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    pixels = jax.random.normal(jax.random.key(1), pixels.shape)
    tokens = jax.random.randint(jax.random.key(2), tokens.shape, 1, 49407)
    img32, txt32, _ = model32.apply({"params": params}, pixels, tokens)
    img16, txt16, _ = model16.apply({"params": params}, pixels, tokens)
    assert model16.apply({"params": params}, pixels, method="encode_image").dtype == jnp.bfloat16
    assert img16.dtype == jnp.float32  # normalisation (and so the loss) runs in fp32
    # Unit-norm embeddings: bf16's 8-bit mantissa keeps cosine agreement well above 0.99.
    assert float(jnp.min(jnp.sum(img32 * img16.astype(jnp.float32), -1))) > 0.99
    assert float(jnp.min(jnp.sum(txt32 * txt16.astype(jnp.float32), -1))) > 0.99


def test_parameters_carry_logical_axis_names():
    model = CLIP(get_clip_config("tiny"))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16), jnp.int32))
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed)["params"], sep="/")
    assert tuple(specs["vision_model/encoder/layers_0/mlp/fc1/kernel"]) == ("embed", "mlp")
    assert tuple(specs["text_model/token_embedding/embedding"]) == ("vocab", "embed")
    assert set(CLIP_CONFIGS) >= {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "tiny"}
