"""FG-CLIP 2 in the fine-grained and dense evaluations, and the tokenizer a checkpoint or run goes with.

A tiny random FG-CLIP 2 (SigLIP 2 NaFlex, 4 px patches) is saved as a Hugging Face folder together with
tokenizer files (a word-level tokenizer behind the Gemma tokenizer's loader). `region_encoders` must
equal the model applied by hand: NaFlex inputs rebuilt here from PIL bilinear, the dense rows of the
image's own (h, w) grid, a loop-by-loop numpy RoIAlign on that grid, and `get_text_features` on each
walk with the tokenizer's ids and padding mask. Workdirs: a two-step FG-CLIP 1 training run (word
tokenizer), and an FG-CLIP 2 run's files written with the trainer's own writers (model.json, checkpoint).
"""

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image
from test_fine_grained import make_fgovd, roi_align_1x1

from vlalign_jax import converters
from vlalign_jax.cli import main
from vlalign_jax.data.gemma_tokenizer import GemmaTokenizer
from vlalign_jax.data.naflex import naflex_target_size
from vlalign_jax.data.tokenizers import ClipTokenizer
from vlalign_jax.data.word_tokenizer import WordTokenizer
from vlalign_jax.eval import fine_grained
from vlalign_jax.eval.dense_maps import render_heatmap, similarity_heatmap
from vlalign_jax.eval.region_encoders import load_region_model, load_tokenizer, region_encoders
from vlalign_jax.models.fgclip import FGCLIP
from vlalign_jax.models.fgclip2 import FGCLIP2, abstract_params, fgclip2_config_from_siglip
from vlalign_jax.models.siglip_configs import get_siglip_config
from vlalign_jax.train.checkpoint import Checkpointer
from vlalign_jax.train.export import save_model_config

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "photo", "of", "the", "red", "green", "blue", "square",
         "ball", "car", "cup", "on", "left", "right", "long", "caption", "."]
BUDGET = 48  # patches per image in most tests: a 37 x 22 px image becomes a 5 x 9 grid of 4 px patches
PATCH = 4
FGCLIP_SHAPES = Path(__file__).resolve().parents[2] / "configs" / "fgclip" / "shapes.py"


def tiny_model():
    config = fgclip2_config_from_siglip(get_siglip_config("tiny"), keep_len=4)  # 16 short, 52 long positions
    return FGCLIP2(dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=len(WORDS))))


def random_params(model, seed=0):
    """N(0, 0.2) everywhere but the dense head's queries and keys (N(0, 3)): peaked attention, so patches
    differ by a few percent rather than 1e-4 and a wrongly mapped box or grid shows."""
    rng = np.random.default_rng(seed)
    params = traverse_util.flatten_dict(abstract_params(model.config), sep="/")
    sharp = lambda key: key.startswith("dense_feature_head/attention/") and key.endswith(("q_proj/kernel",
                                                                                           "k_proj/kernel"))
    return traverse_util.unflatten_dict({k: rng.normal(0, 3.0 if sharp(k) else 0.2, v.shape).astype(np.float32)
                                         for k, v in params.items()}, sep="/")


@pytest.fixture(scope="module")
def fgclip2_folder(tmp_path_factory, write_word_tokenizer):
    path = tmp_path_factory.mktemp("fgclip2") / "fg-clip2-tiny"
    model = tiny_model()
    converters.save(model, random_params(model), path, "hf")
    write_word_tokenizer(path, WORDS)
    return path


def random_image(width, height, seed=0):
    """Horizontal and vertical ramps and a checkerboard, plus noise: every patch looks different."""
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * cols / width, 255 * rows / height, 255 * ((cols // 6 + rows // 6) % 2)], axis=-1)
    pixels += np.random.default_rng(seed).normal(0, 10, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def reference_inputs(image, budget):
    """FG-CLIP 2's image processor written out: PIL bilinear to whole patches, x / 255, (x - 0.5) / 0.5,
    row-major patches each flattened (row, column, channel), zero rows up to the budget."""
    height, width = naflex_target_size(image.height, image.width, PATCH, budget)
    pixels = (np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float64) / 255 - 0.5) / 0.5
    rows, cols = height // PATCH, width // PATCH
    patches = pixels.reshape(rows, PATCH, cols, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    values = np.zeros((budget, PATCH * PATCH * 3), np.float32)
    values[:rows * cols] = patches
    return values, (np.arange(budget) < rows * cols).astype(np.int32), np.array([rows, cols], np.int32)


def by_hand(model, params):
    """The model's methods, jitted, applied to a batch of one image's reference inputs."""
    fns = {m: jax.jit(lambda p, *a, m=m: model.apply({"params": p}, *a, method=m))
           for m in ("get_image_dense_features", "get_image_features")}
    text = jax.jit(lambda p, ids, walk, mask: model.apply({"params": p}, ids, walk, mask, method="get_text_features"),
                   static_argnums=2)

    def image(method, inputs):
        return np.asarray(fns[method](params, *(x[None] for x in inputs))[0], np.float64)

    return image, lambda ids, walk, mask: np.asarray(text(params, ids, walk, mask), np.float64)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fgclip2_encoders_equal_the_model(fgclip2_folder):
    model, params = load_region_model(fgclip2_folder)
    assert isinstance(model, FGCLIP2)
    tokenizer = load_tokenizer(fgclip2_folder, model)
    assert isinstance(tokenizer, GemmaTokenizer)
    encoders = region_encoders(model, params, tokenizer=tokenizer, max_num_patches=BUDGET, batch_size=8)
    assert encoders.image_size is None and encoders.dense_walk == "box"
    image_fn, text_fn = by_hand(model, params)

    # Dense map: the image's own grid (not square, so rows and columns cannot be confused).
    image = random_image(37, 22)
    inputs = reference_inputs(image, BUDGET)
    rows, cols = (int(v) for v in inputs[2])
    assert (rows, cols) == (5, 9)
    dense = image_fn("get_image_dense_features", inputs)[:rows * cols].reshape(rows, cols, -1)
    ours = encoders.encode_dense(image)
    assert ours.shape == (rows, cols, 64)
    np.testing.assert_allclose(ours, dense, rtol=1e-5, atol=1e-5)  # same fp32 model, inputs rounded differently

    # Regions: x by W then by the grid's columns, y by H then rows; a zero-width box pools to zero.
    boxes = np.array([[0, 0, 37, 22], [3.5, 2, 20, 15], [30, 10, 37, 22], [10, 5, 10, 12], [1, 1, 9, 21]])
    ours = encoders.encode_regions(image, boxes)
    assert ours.shape == (5, 64)
    for box, got in zip(boxes, ours):
        cells = box / np.array([37, 22, 37, 22]) * np.array([cols, rows, cols, rows])
        region = roi_align_1x1(dense, cells)
        if np.linalg.norm(region) == 0:
            np.testing.assert_array_equal(got, 0)
        else:
            np.testing.assert_allclose(got, unit(region), atol=2e-5)  # fp32 pooling vs float64

    # Texts: each walk at its own length (16, 16, 52) with the Gemma tokenizer's padding mask.
    texts = ["A red square on the left.", "the blue ball", "long caption " * 30]
    embeds = {}
    for walk, length in (("short", 16), ("box", 16), ("long", 52)):
        ids, mask = tokenizer.encode(texts, length)
        embeds[walk] = encoders.encode_texts(texts, walk)
        np.testing.assert_allclose(embeds[walk], unit(text_fn(ids, walk, mask)), atol=1e-5)
    assert not np.allclose(embeds["short"], embeds["box"], atol=1e-3)  # the box walk has its own head
    ids_only = region_encoders(model, params, tokenizer=tokenizer, max_num_patches=BUDGET, text_attention_mask=False)
    np.testing.assert_allclose(ids_only.encode_texts(texts, "box"), unit(text_fn(tokenizer(texts, 16), "box", None)),
                               atol=1e-5)
    assert not np.allclose(ids_only.encode_texts(texts, "box"), embeds["box"], atol=1e-3)

    # Images: three shapes in one batch, each as if alone.
    images = [image, random_image(13, 30, 1), random_image(16, 16, 2)]
    want = np.stack([image_fn("get_image_features", reference_inputs(i, BUDGET)) for i in images])
    np.testing.assert_allclose(encoders.encode_images(images), unit(want), atol=1e-5)


def test_dynamic_budget_pads_a_batch_to_its_largest_bucket(fgclip2_folder):
    """Default budget: per image the smallest bucket holding (H // p) * (W // p) patches (FG-CLIP 2's eval)."""
    model, params = load_region_model(fgclip2_folder)
    encoders = region_encoders(model, params, tokenizer=load_tokenizer(fgclip2_folder, model))
    image_fn, _ = by_hand(model, params)
    big, small = random_image(60, 40, 3), random_image(20, 12, 4)  # 15 * 10 = 150 patches -> 256; 15 -> 128
    want = np.stack([image_fn("get_image_features", reference_inputs(big, 256)),
                     image_fn("get_image_features", reference_inputs(small, 128))])
    np.testing.assert_allclose(encoders.encode_images([big, small]), unit(want), atol=1e-5)
    rows, cols = (int(v) for v in reference_inputs(big, 256)[2])
    assert encoders.encode_dense(big).shape == (rows, cols, 64) and rows * cols > 128


def test_dense_command_on_fgclip2_uses_the_box_walk(fgclip2_folder, tmp_path, capsys):
    image = random_image(45, 28, 5)
    image.save(tmp_path / "photo.png")
    out = tmp_path / "heat.png"
    assert main(["dense", "--checkpoint", str(fgclip2_folder), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square", "--out", str(out), "--max-num-patches", str(BUDGET)]) == 0
    rows, cols = (int(v) for v in reference_inputs(image, BUDGET)[2])
    assert f"{rows}x{cols} patches, box walk" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.size == (45, 28) and png.format == "PNG"
        written = np.asarray(png.convert("RGB"))
    model, params = load_region_model(fgclip2_folder)
    encoders = region_encoders(model, params, tokenizer=load_tokenizer(fgclip2_folder, model), max_num_patches=BUDGET)
    draw = lambda walk: np.asarray(render_heatmap(image, similarity_heatmap(
        encoders.encode_dense(image), encoders.encode_texts(["a red square"], walk)[0])))
    np.testing.assert_array_equal(written, draw("box"))
    assert not np.array_equal(written, draw("short"))

    # Tokenizer choices: an explicit folder works; a tokenizer of another vocabulary is refused by name.
    assert main(["dense", "--checkpoint", str(fgclip2_folder), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square", "--out", str(tmp_path / "again.png"), "--max-num-patches", str(BUDGET),
                 "--tokenizer", f"gemma:{fgclip2_folder}"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png").convert("RGB")), written)
    assert main(["dense", "--checkpoint", str(fgclip2_folder), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square", "--tokenizer", "words"]) == 2
    assert f"has 34 ids, the model's text vocabulary {len(WORDS)}" in capsys.readouterr().err


def test_fgclip2_without_tokenizer_files_needs_one(fgclip2_folder, tmp_path):
    model, params = load_region_model(fgclip2_folder)
    converters.save(model, params, tmp_path / "bare", "hf")  # weights and config.json only
    with pytest.raises(ValueError, match="holds no tokenizer files"):
        load_tokenizer(tmp_path / "bare", model)
    with pytest.raises(ValueError, match="no checkpoint folder was given"):
        region_encoders(model, params)
    assert isinstance(load_tokenizer(tmp_path / "bare", model, f"gemma:{fgclip2_folder}"), GemmaTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'"):
        load_tokenizer(tmp_path / "bare", model, "bpe")


def test_fine_grained_command_on_fgclip2(fgclip2_folder, tmp_path):
    data, images = make_fgovd(str(tmp_path))
    model, params = load_region_model(fgclip2_folder)
    encoders = region_encoders(model, params, tokenizer=load_tokenizer(fgclip2_folder, model), max_num_patches=BUDGET)
    expected = fine_grained.fgovd_accuracy(data, images, encoders.encode_regions, encoders.encode_texts)
    parser = argparse.ArgumentParser()
    fine_grained.add_arguments(parser)
    out = tmp_path / "fgovd.json"
    args = parser.parse_args(["--task", "fgovd", "--data", data, "--images", images, "--checkpoint",
                              str(fgclip2_folder), "--max-num-patches", str(BUDGET), "--out", str(out)])
    assert fine_grained.run(args) == 0
    written = json.loads(out.read_text())
    assert written["walk"] == "box"
    assert {s: e["accuracy"] for s, e in written["subsets"].items()} == \
        {s: e["accuracy"] for s, e in expected["subsets"].items()}


def test_workdir_configs_name_the_tokenizer(fgclip2_folder, tmp_path):
    """`auto` reads a run's data.tokenizer (and its path) from config.json; the vocabulary is checked."""
    model = tiny_model()

    def run(data):
        workdir = tmp_path / str(len(list(tmp_path.iterdir())))
        workdir.mkdir()
        (workdir / "model.json").write_text("{}")  # only its presence marks a workdir here
        (workdir / "config.json").write_text(json.dumps({"data": data}))
        return workdir

    gemma = load_tokenizer(run({"name": "finehard", "tokenizer": "gemma", "tokenizer_path": str(fgclip2_folder)}),
                           model)
    assert isinstance(gemma, GemmaTokenizer) and gemma.vocab_size == len(WORDS)
    with pytest.raises(ValueError, match="names no data.tokenizer_path"):
        load_tokenizer(run({"name": "finehard", "tokenizer": "gemma"}), model)
    with pytest.raises(ValueError, match="only known for synthetic_shapes"):
        load_tokenizer(run({"name": "finehard", "tokenizer": "words"}), model)
    with pytest.raises(ValueError, match=r"the words tokenizer from .*config.json \(data.tokenizer\) has 34 ids"):
        load_tokenizer(run({"name": "synthetic_shapes", "tokenizer": "words"}), model)
    with pytest.raises(ValueError, match="the clip tokenizer from .* has 49408 ids"):
        load_tokenizer(run({"name": "finehard", "tokenizer": "clip"}), model)


def test_fgclip2_workdir_takes_its_budget_and_tokenizer_from_its_config(fgclip2_folder, tmp_path, capsys):
    """A run's model.json, config.json and checkpoint, written by the trainer's own writers."""
    model = tiny_model()
    workdir = tmp_path / "run"
    save_model_config(model, workdir)
    (workdir / "config.json").write_text(json.dumps({"data": {
        "name": "finehard", "tokenizer": "gemma", "tokenizer_path": str(fgclip2_folder), "max_num_patches": 24}}))
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(1, {"params": random_params(model)}, None, {})
    checkpointer.close()
    image = random_image(45, 28, 7)
    image.save(tmp_path / "photo.png")
    assert main(["dense", "--checkpoint", str(workdir), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square", "--out", str(tmp_path / "heat.png")]) == 0
    rows, cols = (int(v) for v in reference_inputs(image, 24)[2])
    assert f"{rows}x{cols} patches, box walk" in capsys.readouterr().out
    assert main(["dense", "--checkpoint", str(workdir), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square", "--out", str(tmp_path / "heat.png"), "--max-num-patches", "dynamic"]) == 0
    rows, cols = (int(v) for v in reference_inputs(image, 128)[2])  # (45 // 4) * (28 // 4) = 77 -> 128
    assert f"{rows}x{cols} patches, box walk" in capsys.readouterr().out


@pytest.fixture(scope="module")
def fgclip_run(tmp_path_factory):
    """Two steps of configs/fgclip/shapes.py (FG-CLIP 1, word tokenizer, 48 px, 8 px patches)."""
    workdir = tmp_path_factory.mktemp("run") / "fgclip_shapes"
    assert main(["train", "--config", str(FGCLIP_SHAPES), "--workdir", str(workdir),
                 "--config.train.steps=2", "--config.train.batch_size=8", "--config.train.checkpoint_every=2",
                 "--config.train.eval_every=0", "--config.train.log_every=1", "--config.train.progress_bar=False",
                 "--config.train.async_checkpoints=False", "--config.data.num_heldout=8",
                 "--config.eval.num_heldout=8"]) == 0
    return workdir


def test_workdir_picks_its_word_tokenizer_and_dense_runs(fgclip_run, tmp_path, capsys):
    model, params = load_region_model(fgclip_run)
    assert isinstance(model, FGCLIP)
    tokenizer = load_tokenizer(fgclip_run, model)
    assert isinstance(tokenizer, WordTokenizer) and tokenizer.vocab_size == model.config.text.vocab_size
    image = random_image(40, 30, 6)
    image.save(tmp_path / "photo.png")
    assert main(["dense", "--checkpoint", str(fgclip_run), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square left of a blue circle", "--out", str(tmp_path / "heat.png")]) == 0
    assert "6x6 patches, short walk" in capsys.readouterr().out
    with Image.open(tmp_path / "heat.png") as png:
        assert png.size == (40, 30)
    encoders = region_encoders(model, params, tokenizer=tokenizer)
    np.testing.assert_allclose(encoders.encode_texts(["a red square"], "short"),
                               unit(np.asarray(model.apply({"params": params}, tokenizer(["a red square"], 24),
                                                           "short", method="encode_text"))), atol=1e-5)
    # Another tokenizer, or a NaFlex budget, is refused with the reason.
    assert ClipTokenizer().vocab_size != model.config.text.vocab_size
    for extra, message in ((["--tokenizer", "clip"], "49408 ids"),
                           (["--max-num-patches", "64"], "is for NaFlex models (SigLIP 2, FG-CLIP 2)")):
        assert main(["dense", "--checkpoint", str(fgclip_run), "--image", str(tmp_path / "photo.png"),
                     "--text", "a red square", *extra]) == 2
        assert message in capsys.readouterr().err
