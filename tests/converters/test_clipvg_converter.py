"""CLIP-VG checkpoints: a PyTorch CLIP-VG written from shared/research/clipvg.md §1 (open_clip towers,
hand-written post-norm fusion, aliasing wrappers), saved as the reference's training script saves it,
predicts the same boxes through our converter and model; write -> read is exact both ways."""

import argparse
import collections
import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from torch_models import randomize  # noqa: E402
from vlalign_jax.converters import clipvg  # noqa: E402
from vlalign_jax.converters.table import CheckpointMismatchError  # noqa: E402
from vlalign_jax.converters.torch_io import CheckpointFormatError  # noqa: E402
from vlalign_jax.models.grounding import CLIPVG, GROUNDING_CONFIGS, patch_padding_mask  # noqa: E402

CONFIG = GROUNDING_CONFIGS["tiny"]
BATCH = 3


# ---- the PyTorch reference, from the spec ---------------------------------------------------------

class VLEncoderLayer(nn.Module):
    """DETR `TransformerEncoderLayer.forward_post`, sequence-first: q = k = src + pos, v = src."""

    def __init__(self, d, heads, ffn, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src, key_padding_mask, pos):
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class VLTransformer(nn.Module):
    def __init__(self, d, heads, ffn, dropout, layers):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(VLEncoderLayer(d, heads, ffn, dropout) for _ in range(layers))

    def forward(self, src, mask, pos):
        for layer in self.encoder.layers:
            src = layer(src, mask, pos)
        return src


class MLP(nn.Module):
    def __init__(self, d_in, d_hidden, d_out, n):
        super().__init__()
        dims = [d_in] + [d_hidden] * (n - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [d_out]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class ImageEncoder(nn.Module):
    """Aliases clip.visual's parts; raw residual stream after `levels`, CLS kept, no ln_post/proj (§1.3)."""

    def __init__(self, visual, levels):
        super().__init__()
        self.levels = levels
        for name in ("class_embedding", "positional_embedding", "proj", "conv1", "ln_pre", "transformer", "ln_post"):
            setattr(self, name, getattr(visual, name))

    def forward(self, image):
        x = self.conv1(image).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding)
        assert self.transformer.batch_first
        features = []
        for i, block in enumerate(self.transformer.resblocks[:max(self.levels) + 1]):
            x = block(x)
            features.append(x)
        return torch.cat([features[i] for i in self.levels], dim=-1)


class TextEncoder(nn.Module):
    """Aliases clip's text parts; ln_final and text_projection on every token (§1.4)."""

    def __init__(self, clip):
        super().__init__()
        for name in ("positional_embedding", "text_projection", "token_embedding", "ln_final", "transformer"):
            setattr(self, name, getattr(clip, name))
        self.attn_mask = clip.attn_mask

    def forward(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        return self.ln_final(self.transformer(x, attn_mask=self.attn_mask)) @ self.text_projection


class MLClipVG(nn.Module):
    """`ML_CLIP_VG`: submodules registered in the reference's order, so state_dict keys match §1.8."""

    def __init__(self, config, seed=0):
        super().__init__()
        from open_clip.model import CLIP

        c, d = config.clip, config.hidden_dim
        torch.manual_seed(seed)
        self.clip = CLIP(embed_dim=c.embed_dim, quick_gelu=True,
                         vision_cfg=dict(image_size=c.vision.image_size, patch_size=c.vision.patch_size,
                                         width=c.vision.width, layers=c.vision.layers,
                                         mlp_ratio=c.vision.mlp_dim / c.vision.width),
                         text_cfg=dict(context_length=c.text.context_length, vocab_size=c.text.vocab_size,
                                       width=c.text.width, heads=c.text.heads, layers=c.text.layers,
                                       mlp_ratio=c.text.mlp_dim / c.text.width))
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.visu_proj = nn.Linear(config.visu_proj_in_dim, d)
        self.text_proj = nn.Linear(c.embed_dim, d)
        self.reg_token = nn.Embedding(1, d)
        self.vl_pos_embed = nn.Embedding(config.num_tokens, d)
        self.vl_transformer = VLTransformer(d, config.fusion_heads, config.fusion_mlp_dim, config.dropout,
                                            config.fusion_layers)
        self.image_encoder_clip_vg = ImageEncoder(self.clip.visual, config.feature_layers)
        self.image_encoder_clip_vg.positional_embedding.requires_grad_(True)
        self.text_encoder_clip_vg = TextEncoder(self.clip)
        self.bbox_embed = MLP(d, d, 4, config.head_layers)
        self.ml_visu_proj = nn.Linear(len(config.feature_layers) * c.vision.width, d)
        self.grid = c.vision.image_size // c.vision.patch_size

    def features(self, image, ids):
        return (self.ml_visu_proj(self.image_encoder_clip_vg(image).float()),
                self.text_proj(self.text_encoder_clip_vg(ids).float()))

    def forward(self, image, pad_mask, ids):
        visual, text = self.features(image, ids)
        batch = image.shape[0]
        # torchvision 0.10 Resize of the int mask: bilinear, no antialias, round, then bool (§1.5).
        visual_mask = torch.round(F.interpolate(pad_mask[:, None].float(), size=(self.grid, self.grid),
                                                mode="bilinear", align_corners=False, antialias=False))
        visual_mask = visual_mask[:, 0].bool().flatten(1)
        src = torch.cat([self.reg_token.weight[:, None].repeat(1, batch, 1), text.permute(1, 0, 2),
                         visual.permute(1, 0, 2)])
        false = torch.zeros(batch, 1, dtype=torch.bool)
        mask = torch.cat([false, ~(ids > 0), false, visual_mask], dim=1)
        pos = self.vl_pos_embed.weight[:, None].repeat(1, batch, 1)
        return self.bbox_embed(self.vl_transformer(src, mask, pos)[0]).sigmoid()


def reference(seed=0):
    model = randomize(MLClipVG(CONFIG, seed), seed)
    with torch.no_grad():  # spread the head's logits over a few units, so box errors are not squashed near 0.5
        model.bbox_embed.layers[-1].weight.mul_(30)
    return model


def save_like_reference(model, path, epoch=7):
    """`train_clip_vg.py`'s checkpoint dict, with real optimizer/scheduler states and an args Namespace."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2.5e-4, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / 110)))
    args = argparse.Namespace(model="ViT-B/16", vl_nheads=CONFIG.fusion_heads, vl_dropout=0.1, vl_hidden_dim=32,
                              vl_enc_layers=2, imsize=32, max_query_len=16, lr=2.5e-4, device="cuda")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "args": args,
                "val_accu": np.float64(0.625)}, path)  # a numpy scalar, as metrics often are


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    size, ctx = CONFIG.clip.vision.image_size, CONFIG.clip.text.context_length
    pixels = rng.standard_normal((BATCH, size, size, 3)).astype(np.float32)
    pad = np.zeros((BATCH, size, size), np.int32)
    pad[0, :, 20:] = 1  # cols 19/20 are patch 2's centre pair: 2 of 4 padded rounds half to even -> kept
    pad[1, :13, :] = 1  # rows 11/12 are patch 1's centre pair: masked
    pad[1, :, :3] = 1
    ids = np.zeros((BATCH, ctx), np.int64)
    for row, n in enumerate((5, ctx - 1, 9)):  # SOT, words, EOT, then 0 = padding (masked)
        ids[row, 0], ids[row, 1:n], ids[row, n] = 49406, rng.integers(1, 49000, n - 1), 49407
    return pixels, pad, ids


def run_ours(config, params, pixels, pad, ids):
    """Boxes, projected image tokens and projected text tokens; one jit (faster than eager here)."""
    import jax
    from flax import traverse_util

    model = CLIPVG(config)

    @jax.jit
    def run(tree, pixels, ids, pad):
        return (model.apply({"params": tree}, pixels, ids, pad), model.apply({"params": tree}, pixels,
                                                                              method="encode_image"),
                model.apply({"params": tree}, ids, method="encode_text"))

    out = run(traverse_util.unflatten_dict(params, sep="/"), pixels, ids.astype(np.int32), pad.astype(bool))
    return tuple(np.asarray(x) for x in out)


# ---- tests ----------------------------------------------------------------------------------------

def test_vit_b16_layout_is_the_documented_689_keys():
    shapes = clipvg.state_shapes(GROUNDING_CONFIGS["ViT-B-16"])
    assert len(shapes) == 689
    prefixes = ("clip.visual.", "clip.transformer.", "clip.", *clipvg.MODULE_ORDER[1:])
    counts = collections.Counter(next(p for p in prefixes if k.startswith(p)) for k in shapes)
    assert counts == {"clip.visual.": 152, "clip.transformer.": 144, "clip.": 6, "image_encoder_clip_vg.": 152,
                      "text_encoder_clip_vg.": 149, "vl_transformer.": 72, "bbox_embed.": 6, "text_proj.": 2,
                      "visu_proj.": 2, "ml_visu_proj.": 2, "reg_token.": 1, "vl_pos_embed.": 1}
    assert shapes["clip.visual.positional_embedding"] == (197, 768)
    assert shapes["vl_transformer.encoder.layers.5.self_attn.in_proj_weight"] == (1536, 512)
    assert shapes["ml_visu_proj.weight"] == (512, 3072) and shapes["vl_pos_embed.weight"] == (275, 512)
    assert shapes["bbox_embed.layers.2.weight"] == (4, 512) and shapes["clip.logit_scale"] == ()


def test_reference_checkpoint_predicts_the_same_boxes(tmp_path):
    ref = reference()
    save_like_reference(ref, tmp_path / "best_checkpoint.pth")
    state, meta = clipvg.load_state(tmp_path / "best_checkpoint.pth")
    assert list(state) == list(ref.state_dict()) or set(state) == set(ref.state_dict())
    assert meta["epoch"] == 7 and meta["val_accu"] == 0.625 and meta["args"]["vl_nheads"] == 4
    config, params = clipvg.read_clipvg(tmp_path / "best_checkpoint.pth")
    assert config == CONFIG  # inferred: shapes, args.vl_nheads, and the (0, 1, 3, 5) rule for 6 blocks
    pixels, pad, ids = inputs()
    with torch.no_grad():
        want_visual, want_text = ref.features(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(ids))
        want = ref(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(pad), torch.from_numpy(ids))
    got, visual, text = run_ours(config, params, pixels, pad, ids)
    # fp32 on both sides through ~10 layers; 1e-5 leaves room for summation order only.
    np.testing.assert_allclose(visual, want_visual.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(text, want_text.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    assert np.ptp(got) > 0.3 and 0.01 < got.min() and got.max() < 0.99  # informative, unsaturated boxes


def test_written_checkpoint_loads_strictly_and_round_trips_bitwise(tmp_path):
    ref = reference(seed=1)
    save_like_reference(ref, tmp_path / "ref.pth")
    config, params = clipvg.read_clipvg(tmp_path / "ref.pth")
    clipvg.write_clipvg(config, params, tmp_path / "ours.pth", epoch=3)
    obj = torch.load(tmp_path / "ours.pth", weights_only=False)
    assert obj["epoch"] == 3 and isinstance(obj["args"], argparse.Namespace)
    got, want = obj["model"], ref.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    # Aliases share their original's storage, as torch.save stores the reference's.
    for key in got:
        if clipvg.alias_of(key):
            assert got[clipvg.alias_of(key)].data_ptr() == got[key].data_ptr(), key
    MLClipVG(CONFIG, seed=2).load_state_dict(got, strict=True)
    config_back, params_back = clipvg.read_clipvg(tmp_path / "ours.pth")
    assert config_back == config and set(params_back) == set(params)
    for key, value in params.items():
        assert params_back[key].dtype == value.dtype, key
        np.testing.assert_array_equal(params_back[key], value, err_msg=key)


def test_fp16_clip_weights_are_read_as_fp32_exactly(tmp_path):
    ref = reference()
    for module in ref.clip.modules():  # OpenAI's convert_weights: convs, linears, MHA, projections to fp16
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
            for p in module.parameters(recurse=False):
                p.data = p.data.half()
    ref.clip.visual.proj.data = ref.clip.visual.proj.data.half()
    ref.clip.text_projection.data = ref.clip.text_projection.data.half()
    save_like_reference(ref, tmp_path / "fp16.pth")
    _, params = clipvg.read_clipvg(tmp_path / "fp16.pth")
    _, stored = clipvg.read_clipvg(tmp_path / "fp16.pth", dtype=None)
    assert all(v.dtype == np.float32 for v in params.values())
    assert stored["clip/visual_projection/kernel"].dtype == np.float16
    assert stored["clip/vision_model/embeddings/position_embedding"].dtype == np.float32  # never converted
    for key, value in stored.items():
        np.testing.assert_array_equal(params[key], value.astype(np.float32), err_msg=key)


def test_bad_checkpoints_name_every_offending_key(tmp_path):
    state = {k: v.numpy() for k, v in reference().state_dict().items()}
    tampered = dict(state)
    tampered["image_encoder_clip_vg.ln_pre.bias"] = state["clip.visual.ln_pre.bias"] + 1
    with pytest.raises(CheckpointFormatError, match=r"image_encoder_clip_vg\.ln_pre\.bias != clip\.visual\.ln_pre"):
        clipvg.params_from_state(tampered, CONFIG)
    broken = {k: v for k, v in state.items() if k not in ("text_encoder_clip_vg.ln_final.weight", "reg_token.weight")}
    broken["bbox_embed.layers.3.weight"] = np.zeros((4, 32), np.float32)
    broken["vl_pos_embed.weight"] = np.zeros((99, 32), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        clipvg.params_from_state(broken, CONFIG)
    assert set(err.value.missing) == {"text_encoder_clip_vg.ln_final.weight", "reg_token.weight"}
    assert err.value.unexpected == ["bbox_embed.layers.3.weight"]
    assert err.value.misshaped == [("vl_pos_embed.weight", (34, 32), (99, 32))]
    (tmp_path / "list.pth").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointFormatError, match="not a CLIP-VG checkpoint"):
        clipvg.read_clipvg(tmp_path / "list.pth")


@pytest.mark.parametrize("size,grid", [(224, 14), (32, 4)])
def test_patch_mask_matches_torch_bilinear_round(size, grid):
    rng = np.random.default_rng(size)
    pad = np.ones((32, size, size), np.int32)
    for row in pad:  # the image pasted at a random place, as NormalizeAndPad does
        h, w = rng.integers(1, size + 1, 2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        row[top:top + h, left:left + w] = 0
    want = torch.round(F.interpolate(torch.from_numpy(pad)[:, None].float(), size=(grid, grid), mode="bilinear",
                                     align_corners=False, antialias=False))[:, 0].bool().flatten(1).numpy()
    np.testing.assert_array_equal(np.asarray(patch_padding_mask(pad.astype(bool), grid)), want)


def test_the_clipvg_family_is_detected_loaded_and_kept_through_flax(tmp_path):
    """`vlalign convert` / `converters.load` find a reference CLIP-VG file by its contents, and a CLIP-VG
    model goes through our flax format unchanged; a plain CLIP cannot be written as clipvg."""
    from vlalign_jax import converters
    from vlalign_jax.converters.families import detect_family
    from vlalign_jax.models.clip import CLIP

    save_like_reference(reference(), tmp_path / "best_checkpoint.pth")
    assert detect_family(tmp_path / "best_checkpoint.pth") == "clipvg"
    model, params = converters.load(tmp_path / "best_checkpoint.pth")
    assert isinstance(model, CLIPVG)
    converters.save(model, params, tmp_path / "flax", "flax")
    again, params_again = converters.load(tmp_path / "flax")
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again)):
        np.testing.assert_array_equal(a, b)
    clip = CLIP(model.config.clip)
    with pytest.raises(ValueError, match="cannot be written as 'clipvg'"):
        converters.save(clip, params["clip"], tmp_path / "x.pth", "clipvg")


def test_objects_beyond_tensors_and_args_need_trust_pickle(tmp_path, capsys):
    """A file whose args hold an object torch's safe loader refuses (a date) is read only on request."""
    import datetime

    from vlalign_jax import converters
    from vlalign_jax.cli import main

    model = reference()
    args = argparse.Namespace(model="ViT-B/16", vl_nheads=CONFIG.fusion_heads, vl_dropout=0.1,
                              started=datetime.date(2024, 1, 1))
    torch.save({"model": model.state_dict(), "epoch": 1, "args": args}, tmp_path / "dated.pth")
    with pytest.raises(CheckpointFormatError, match=r"dated\.pth.*--trust-pickle"):
        converters.load(tmp_path / "dated.pth", "clipvg")
    assert main(["convert", str(tmp_path / "dated.pth"), str(tmp_path / "out"), "--from", "clipvg",
                 "--to", "flax"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["convert", str(tmp_path / "dated.pth"), str(tmp_path / "out"), "--from", "clipvg",
                 "--to", "flax", "--trust-pickle"]) == 0
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    _, params = converters.load(tmp_path / "dated.pth", "clipvg", trust_pickle=True)
    got_back = clipvg.load_state(tmp_path / "dated.pth", trusted=True)[0]
    assert all(np.array_equal(got_back[k], want[k]) for k in want)
    flat_ours = converters.load(tmp_path / "out", "flax")[1]
    jax.tree.map(np.testing.assert_array_equal, flat_ours, params)
    with pytest.raises(ValueError, match="trust_pickle applies to the families"):
        converters.load(tmp_path / "out", "flax", trust_pickle=True)
