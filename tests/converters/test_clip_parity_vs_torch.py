"""Converted weights give the same embeddings as the PyTorch models they came from (fp32, 1e-5 abs).

The tolerance is float32 accumulation-order noise over a few layers; observed errors are ~1e-6.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

import vlalign_jax.converters as converters  # noqa: E402
from torch_models import (inputs, jax_embeddings, randomize, tiny_hf_clip, tiny_open_clip,  # noqa: E402
                          torch_embeddings)

TOL = 1e-5


def assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_file_matches_open_clip_model(tmp_path, quick_gelu):
    ref = tiny_open_clip(quick_gelu=quick_gelu)
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    model, params = converters.load(tmp_path / "model.pt", act="quick_gelu" if quick_gelu else "gelu")
    pixels, tokens = inputs()
    assert_close(jax_embeddings(model, params, pixels, tokens),
                 torch_embeddings(ref.encode_image, ref.encode_text, pixels, tokens))


def test_open_clip_folder_heads_come_from_its_config(tmp_path):
    """Head counts leave no trace in weight shapes: an open_clip folder's config gives them (vision
    head_width 32 -> 4 heads of width 128, text 8 heads), where width // 64 would build 2 and 2."""
    import json

    from open_clip.model import CLIP

    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2, "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 8, "layers": 2}}
    ref = randomize(CLIP(**cfg), seed=5)
    folder = tmp_path / "open_clip_folder"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    model, params = converters.load(folder, "open_clip")
    assert (model.config.vision.heads, model.config.text.heads, model.config.act) == (4, 8, "quick_gelu")
    pixels, tokens = inputs(seed=5)
    assert_close(jax_embeddings(model, params, pixels, tokens),
                 torch_embeddings(ref.encode_image, ref.encode_text, pixels, tokens))


def test_openai_torchscript_archive(tmp_path):
    """OpenAI released TorchScript archives; the family is recognised and QuickGELU is assumed."""
    ref = tiny_open_clip(quick_gelu=True, seed=1)
    pixels, tokens = inputs(seed=1)
    example = (torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(tokens))
    traced = torch.jit.trace(ref, example, strict=False, check_trace=False)
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    assert converters.families.detect_family(tmp_path / "ViT-tiny.pt") == "openai"
    model, params = converters.load(tmp_path / "ViT-tiny.pt")
    assert model.config.act == "quick_gelu"
    assert_close(jax_embeddings(model, params, pixels, tokens),
                 torch_embeddings(ref.encode_image, ref.encode_text, pixels, tokens))


@pytest.mark.parametrize("eos_token_id", [2, 49407])
def test_hf_folder_matches_transformers(tmp_path, eos_token_id):
    """eos_token_id=2 is transformers' legacy argmax pooling; any other id pools at its first occurrence."""
    ref = tiny_hf_clip(eos_token_id=eos_token_id)
    ref.save_pretrained(tmp_path / "hf")
    model, params = converters.load(tmp_path / "hf")
    assert model.config.text.pool == ("argmax" if eos_token_id == 2 else "eos")
    pixels, tokens = inputs(seed=2)
    if eos_token_id != 2:
        tokens[:, -1] = 49407  # a second end token after the first: only first-occurrence pooling is right
    assert_close(jax_embeddings(model, params, pixels, tokens),
                 torch_embeddings(lambda x: ref.get_image_features(pixel_values=x),
                                  lambda t: ref.get_text_features(input_ids=t), pixels, tokens))


def test_exported_hf_folder_loads_in_transformers(tmp_path):
    ref = tiny_open_clip(quick_gelu=True, seed=3)
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    converters.convert(tmp_path / "model.pt", tmp_path / "hf", None, "hf", act="quick_gelu")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    pixels, tokens = inputs(seed=3)
    assert_close(torch_embeddings(lambda x: hf.get_image_features(pixel_values=x),
                                  lambda t: hf.get_text_features(input_ids=t), pixels, tokens),
                 torch_embeddings(ref.encode_image, ref.encode_text, pixels, tokens))
    assert torch.equal(hf.logit_scale, ref.logit_scale)


def test_exported_open_clip_file_loads_strict(tmp_path):
    model, params = converters.load(_tiny_flax(tmp_path), family="flax")
    converters.save(model, params, tmp_path / "open_clip.safetensors", family="open_clip")
    from safetensors.torch import load_file

    ref = tiny_open_clip(quick_gelu=True, seed=9)
    ref.load_state_dict(load_file(tmp_path / "open_clip.safetensors"), strict=True)
    pixels, tokens = inputs(seed=4)
    assert_close(jax_embeddings(model, params, pixels, tokens),
                 torch_embeddings(ref.eval().encode_image, ref.encode_text, pixels, tokens))


def _tiny_flax(tmp_path):
    """A random model of ours, written in our own format."""
    import jax
    from flax import linen as nn

    from vlalign_jax.models.clip import CLIP
    from vlalign_jax.models.clip_configs import get_clip_config

    model = CLIP(get_clip_config("tiny"))
    pixels, tokens = inputs()
    params = nn.meta.unbox(model.init(jax.random.key(7), pixels, tokens.astype(np.int32))["params"])
    converters.save(model, params, tmp_path / "ours", family="flax")
    return tmp_path / "ours"


@pytest.mark.slow
def test_full_size_vit_b32_matches_open_clip(tmp_path):
    import open_clip

    ref = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    torch.save(ref.state_dict(), tmp_path / "b32.pt")
    model, params = converters.load(tmp_path / "b32.pt", family="openai")
    assert model.config.vision.width == 768 and model.config.vision.patch_size == 32
    pixels, tokens = inputs(batch=2, image_size=224, context_length=77)
    assert_close(jax_embeddings(model, params, pixels, tokens),
                 torch_embeddings(ref.encode_image, ref.encode_text, pixels, tokens))
