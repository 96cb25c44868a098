"""The released stage-2 recipes (configs/fgclip/vit_b16_finehard.py, configs/fgclip2/base_finehard.py)
run as written except for the model size and batch: a FineHARD annotation file and its images are
written here, the starting checkpoint is a random CLIP / SigLIP 2 saved in its Hugging Face layout
(the tokenizer files beside it for FG-CLIP 2), and one epoch is trained. Checked: the epoch sets the
step count, the start is grown from the checkpoint, the logged learning rate is the recipe's warmup
(200 steps for v1, 3% for v2) and the ranking threshold is carried (v2), and every loss term of the method is finite and nonzero."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from vlalign_jax import converters
from vlalign_jax.models.clip import CLIP, ClipConfig
from vlalign_jax.models.fgclip import extend_text_positions
from vlalign_jax.models.siglip import SigLIP, SiglipConfig
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.config import build_config
from vlalign_jax.train.loop import setup_run, train
from vlalign_jax.train.metrics import read_metrics_jsonl

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECORDS, BATCH = 24, 8  # one epoch = 3 steps (8: the test machine has 8 devices)
WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "red", "green", "blue", "square", "circle", "on", "the",
         "left", "right", "picture", "of", "shapes", "wrong", "long", "short", "with", "."]


def write_finehard(root: Path) -> tuple[Path, Path]:
    """RECORDS images (two coloured boxes each, sizes below and above 128 px) and their annotations."""
    rng = np.random.default_rng(0)
    images, records = root / "images", []
    images.mkdir(parents=True)
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for i in range(RECORDS):
        width, height = (96, 64) if i % 2 else (160, 200)
        pixels = np.zeros((height, width, 3), np.uint8)
        boxes = []
        for k, (name, colour) in enumerate(list(colours.items())[i % 2:i % 2 + 2]):
            x1, y1 = k * width // 2, int(rng.integers(0, height // 2))
            x2, y2 = x1 + width // 3, y1 + height // 3
            pixels[y1:y2, x1:x2] = colour
            negatives = {f"neg_{n}": f"a wrong {name} circle {n}" for n in range(10)}
            boxes.append({"bbox": [x1 / width, y1 / height, x2 / width, y2 / height, 0.9],
                          "short_expr": f"a {name} square", "long_expr": f"a long {name} square on the left",
                          "flag_short_neg": 1, "short_expr_negs": negatives})
        Image.fromarray(pixels).save(images / f"{i}.png")
        records.append({"f_path": f"{i}.png", "caption": "a long picture of shapes with a square",
                        "short_caption": "shapes", "bbox_info": boxes})
    annotations = root / "jsonfiles" / "part-0.json"
    annotations.parent.mkdir()
    annotations.write_text(json.dumps(records))
    return annotations, images


def recipe(path: str, tmp_path: Path, **overrides):
    annotations, images = write_finehard(tmp_path / "finehard")
    pairs = {"data.train_path": str(annotations), "data.image_root": str(images), "data.num_workers": "0",
             "data.num_threads": "1", "data.on_error": "raise", "train.batch_size": str(BATCH),
             "train.progress_bar": "False", "train.log_every": "1", "train.checkpoint_every": "100",
             "model.dtype": "float32", **overrides}
    return build_config(str(CONFIGS / path), list(pairs.items()))


def logged(workdir: Path) -> list[dict]:
    return [row for row in read_metrics_jsonl(workdir / "metrics.jsonl") if "loss" in row]


def test_fgclip1_released_recipe(tmp_path):
    small = ("{'act': 'quick_gelu', 'embed_dim': 16, 'vision': {'image_size': 32, 'patch_size': 8, 'width': 32, "
             "'layers': 1, 'heads': 2, 'mlp_dim': 64}, 'text': {'context_length': 77, 'width': 32, 'layers': 1, "
             "'heads': 2, 'mlp_dim': 64}}")
    probe = recipe("fgclip/vit_b16_finehard.py", tmp_path / "probe", **{"model.name": "tiny",
                                                                        "model.overrides": small})
    fg_config = setup_run(probe).method.model.config
    clip_config = ClipConfig(**{f.name: getattr(fg_config, f.name) for f in dataclasses.fields(ClipConfig)})
    clip = CLIP(clip_config)
    params = clip.init(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 77), np.int32))
    converters.save(clip, params["params"], tmp_path / "clip-vit", "hf")
    config = recipe("fgclip/vit_b16_finehard.py", tmp_path, **{"model.name": "tiny", "model.overrides": small,
                                                                "model.init_from": str(tmp_path / "clip-vit")})
    train(config, tmp_path / "run")
    rows = logged(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]  # one epoch of 24 records at batch 8
    np.testing.assert_allclose([r["learning_rate"] for r in rows], [1e-6 * s / 200 for s in range(3)], rtol=1e-4)
    for term in ("loss/itc_long", "loss/itc_short", "loss/region", "loss/hard_negative"):
        assert all(np.isfinite(r[term]) and r[term] > 0 for r in rows), term
    table = converters.load(tmp_path / "clip-vit")[1]["text_model"]["position_embedding"]
    start = load_params(tmp_path / "run")["text_model"]["position_embedding_ori"]
    np.testing.assert_allclose(start, extend_text_positions(table), atol=1e-7)  # lr <= 1e-8: barely moved


def test_fgclip2_released_recipe(tmp_path, write_word_tokenizer):
    small = ("{'vision': {'patch_size': 8, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64}, "
             "'text': {'context_length': 64, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64, "
             "'projection_dim': 32}}")
    folder, tokenizer = tmp_path / "siglip2", tmp_path / "tokenizer"
    tokenizer.mkdir()
    vocab_size = write_word_tokenizer(tokenizer, WORDS)
    overrides = {"model.name": "tiny", "model.overrides": small, "model.init_from": "",
                 "data.tokenizer_path": str(tokenizer), "data.max_num_patches": "64"}
    fg_config = setup_run(recipe("fgclip2/base_finehard.py", tmp_path / "probe", **overrides)).method.model.config
    siglip_config = SiglipConfig(**{f.name: getattr(fg_config, f.name) for f in dataclasses.fields(SiglipConfig)})
    assert siglip_config.text.vocab_size == vocab_size and fg_config.long_context_length == 196
    siglip = SigLIP(siglip_config)
    n = siglip_config.vision.num_patches
    params = siglip.init(jax.random.PRNGKey(2), np.zeros((1, n, siglip_config.vision.patch_dim), np.float32),
                         np.ones((1, n), np.int32), np.asarray([[16, 16]], np.int32), np.zeros((1, 64), np.int32))
    converters.save(siglip, params["params"], folder, "hf")
    config = recipe("fgclip2/base_finehard.py", tmp_path, **{**overrides, "model.init_from": str(folder),
                                                              "train.epochs": "1"})  # of 6, for time
    train(config, tmp_path / "run")
    rows = logged(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]  # one epoch of 24 records at batch 8
    # warmup ceil(0.03 * 3) = 1 step, then the cosine from the peak
    np.testing.assert_allclose([r["learning_rate"] for r in rows[:2]], [0.0, 1e-6], rtol=1e-4)
    assert 0.0 < rows[2]["learning_rate"] < 1e-6
    assert rows[0]["ranking_threshold"] == 0.0 and rows[1]["ranking_threshold"] == rows[0]["next_ranking_threshold"]
    for term in ("loss/sigmoid_long", "loss/sigmoid_short", "loss/region", "loss/tic", "loss/hard_itc",
                 "loss/hard_pair", "loss/hard_rank"):
        assert all(np.isfinite(r[term]) and r[term] > 0 for r in rows), term
