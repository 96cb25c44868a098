"""`vlalign eval --suite grounding`: Acc@0.5 and mIoU per split of a CLIP-VG checkpoint equal a brute-force
numpy scoring of the model's own boxes; results are written per split; a missing split file is named;
the PNG grid has its tiles with the ground truth outlined in green where the box is."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from random_weights import scaled_random_params

from vlalign_jax import converters
from vlalign_jax.cli import main
from vlalign_jax.data.grounding_transforms import grounding_eval_transform
from vlalign_jax.data.tokenizers import ClipTokenizer
from vlalign_jax.eval.grounding_suite import (GT_COLOR, LINE_WIDTH, TILE_GAP, TILE_SIZE, canvas_to_image, grid_shape,
                                              tile_height)
from vlalign_jax.models.grounding import CLIPVG, GROUNDING_CONFIGS, abstract_params

SPLITS = ("val", "testA", "testB")
PER_SPLIT = 8
IMAGE_WIDTH = 64  # every test image is 64 wide and at most as high: a tile scales it by TILE_SIZE / 64


def write_unc_splits(root):
    """JSON-lines RefCOCO-layout splits: boxes of many sizes around the image centre, so a random model's
    central box hits some and misses others."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "split" / "unc").mkdir(parents=True)
    for split in SPLITS:
        rows = []
        for i in range(PER_SPLIT):
            height = int(rng.choice([40, 48, 56, 64]))
            pixels = rng.integers(0, 200, (height, IMAGE_WIDTH, 3), dtype=np.uint8)
            name = f"{split}_{i}.png"
            Image.fromarray(pixels).save(root / "images" / name)
            fraction = rng.uniform(0.2, 1.0)
            w, h = fraction * IMAGE_WIDTH, rng.uniform(0.2, 1.0) * height
            x1, y1 = (IMAGE_WIDTH - w) / 2 + rng.uniform(-4, 4), (height - h) / 2 + rng.uniform(-4, 4)
            box = [max(0.0, x1), max(0.0, y1), min(IMAGE_WIDTH, x1 + w), min(height, y1 + h)]
            rows.append({"image_file": name, "box": box, "expression": f"The Thing number {i}", "dataset": "unc"})
        (root / "split" / "unc" / f"unc_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def random_params(config, seed=3):
    """Random weights at scales where the boxes move with the image, the text and the padding."""
    return scaled_random_params(abstract_params(config), seed)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny random CLIP-VG as a reference `.pth`, evaluated once on three splits with a grid."""
    root = tmp_path_factory.mktemp("grounding")
    write_unc_splits(root)
    model = CLIPVG(GROUNDING_CONFIGS["tiny"])  # 32 px, text context 16: CLIP BPE ids at 16 positions
    converters.save(model, random_params(model.config), root / "tiny_clipvg.pth", "clipvg")
    out, grid = root / "results" / "grounding.json", root / "grid.png"
    args = ["eval", "--suite", "grounding", "--dataset", "unc", "--data", str(root / "split"), "--image-root",
            str(root / "images"), "--checkpoint", str(root / "tiny_clipvg.pth"), "--out", str(out),
            "--batch-size", "3", "--grid", str(grid), "--grid-samples", "4"]  # batches of 3, 3 and 2 per split
    assert main(args) == 0
    return {"root": root, "args": args, "results": json.loads(out.read_text()), "out": out, "grid": grid}


def brute_force(root):
    """{split: IoUs} of the saved model applied here example by example: eval transform, CLIP BPE, boxes
    clamped to the canvas, numpy IoU."""
    model, params = converters.load(root / "tiny_clipvg.pth", "clipvg")
    size = model.config.clip.vision.image_size
    tokenizer = ClipTokenizer(context_length=model.config.clip.text.context_length)
    apply = jax.jit(lambda pixels, tokens, pad_mask: model.apply({"params": params}, pixels, tokens, pad_mask))
    ious = {}
    for split in SPLITS:
        for line in (root / "split" / "unc" / f"unc_{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            with Image.open(root / "images" / record["image_file"]) as image:
                x = grounding_eval_transform(image.convert("RGB"), record["box"], record["expression"].lower(), size)
            cx, cy, w, h = np.asarray(apply(x["pixels"][None], tokenizer([x["expression"]]), x["pad_mask"][None]),
                                      np.float64)[0]
            predicted = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0.0, 1.0)
            target = x["box_xyxy"].astype(np.float64) / size
            corners = np.minimum(predicted[2:], target[2:]) - np.maximum(predicted[:2], target[:2])
            inter = np.prod(np.clip(corners, 0, None))
            union = np.prod(predicted[2:] - predicted[:2]) + np.prod(target[2:] - target[:2]) - inter
            ious.setdefault(split, []).append(inter / union)
    return {split: np.array(values) for split, values in ious.items()}


def test_accuracy_and_miou_equal_a_brute_force_scoring(evaluated):
    results = evaluated["results"]
    hit_rates = []
    for split, ious in brute_force(evaluated["root"]).items():
        accuracy, miou = float(np.mean(ious >= 0.5)), float(np.mean(ious))
        got = results["splits"][split]
        assert got["examples"] == PER_SPLIT
        # No brute-force IoU sits within 1e-4 of the threshold, so fp32 vs fp64 cannot flip a hit.
        assert np.abs(ious - 0.5).min() > 1e-4
        assert got["acc@0.5"] == accuracy, split
        assert got["miou"] == pytest.approx(miou, abs=1e-5), split  # fp32 boxes vs fp64 IoU here
        hit_rates.append(accuracy)
    assert 0 < np.mean(hit_rates) < 1  # the data makes the random model hit some boxes and miss others


def test_results_json_and_markdown_have_one_row_per_split(evaluated):
    results, out = evaluated["results"], evaluated["out"]
    assert results["suite"] == "grounding" and results["dataset"] == "unc"
    assert list(results["splits"]) == list(SPLITS)  # the reported RefCOCO splits, in order
    rows = out.with_suffix(".md").read_text().strip().splitlines()
    assert rows[0].startswith("| grounding: unc |") and len(rows) == 2 + len(SPLITS)
    for split, row in zip(SPLITS, rows[2:]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == split
        assert float(cells[1]) == pytest.approx(100 * results["splits"][split]["acc@0.5"], abs=0.005)
        assert float(cells[2]) == pytest.approx(100 * results["splits"][split]["miou"], abs=0.005)
        assert cells[3] == str(PER_SPLIT)


def test_a_dataset_alias_evaluates_the_same_splits(evaluated, tmp_path):
    out = tmp_path / "alias.json"
    args = [a if a != str(evaluated["out"]) else str(out) for a in evaluated["args"]]
    args = [a if a != "unc" else "refcoco" for a in args]
    args = args[:args.index("--grid")] + args[args.index("--grid") + 4:]  # no grid this time
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert results["dataset"] == "unc" and results["splits"] == evaluated["results"]["splits"]


def test_a_missing_split_file_is_named(evaluated, capsys):
    root = evaluated["root"]
    args = [a if a != str(evaluated["out"]) else str(root / "unused.json") for a in evaluated["args"]]
    assert main(args + ["--splits", "val", "testC"]) == 2  # testC is no RefCOCO split
    assert "no split 'testC'" in capsys.readouterr().err
    (root / "split" / "unc" / "unc_testB.jsonl").rename(root / "split" / "unc" / "moved.jsonl")
    try:
        assert main(args) == 2
    finally:
        (root / "split" / "unc" / "moved.jsonl").rename(root / "split" / "unc" / "unc_testB.jsonl")
    err = capsys.readouterr().err
    missing = root / "split" / "unc" / "unc_testB"
    assert f"{missing}.jsonl" in err and f"{missing}.pth" in err
    assert not (root / "unused.json").exists()


def test_grid_has_a_tile_per_sample_with_the_ground_truth_outlined_in_green(evaluated):
    root = evaluated["root"]
    with Image.open(evaluated["grid"]) as image:
        grid = np.asarray(image.convert("RGB"))
    rows, columns = grid_shape(4)
    assert (rows, columns) == (2, 2)
    tile_width, tile_rows = TILE_SIZE + TILE_GAP, tile_height() + TILE_GAP  # tiles and the gaps between them
    assert grid.shape == (rows * tile_rows - TILE_GAP, columns * tile_width - TILE_GAP, 3)
    # Tile 0 is the split's first example, drawn at TILE_SIZE / 64 and centred vertically in its square.
    record = json.loads((root / "split" / "unc" / "unc_val.jsonl").read_text().splitlines()[0])
    with Image.open(root / "images" / record["image_file"]) as image:
        height = image.height
    scale = TILE_SIZE / IMAGE_WIDTH
    top = (TILE_SIZE - round(height * scale)) // 2
    x1, y1, x2, y2 = (round(v * scale) for v in record["box"])
    x2, y2 = min(x2 - 1, TILE_SIZE - 1), min(y2 - 1, round(height * scale) - 1)
    outline = ([(x, top + y1) for x in range(x1, x2 + 1)] + [(x, top + y2) for x in range(x1, x2 + 1)]
               + [(x1, top + y) for y in range(y1, y2 + 1)] + [(x2, top + y) for y in range(y1, y2 + 1)])
    assert all(tuple(grid[y, x]) == GT_COLOR for x, y in outline)
    inside = grid[top + y1 + LINE_WIDTH + 1: top + y2 - LINE_WIDTH, x1 + LINE_WIDTH + 1: x2 - LINE_WIDTH]
    assert inside.size and not np.all(inside == np.array(GT_COLOR, np.uint8))  # an outline, not a filled box
    assert np.any(np.all(grid == (255, 0, 0), axis=-1))  # predictions are drawn in red
    # Every tile holds an image: its square is not blank.
    for i in range(4):
        r, c = divmod(i, columns)
        square = grid[r * tile_rows:r * tile_rows + TILE_SIZE, c * tile_width:c * tile_width + TILE_SIZE]
        assert square.std() > 10


def test_canvas_boxes_map_back_to_the_original_image():
    """The eval transform's box in canvas pixels, mapped back, is the original box (a 50 x 20 image at 32)."""
    box = np.array([3.0, 2.5, 41.0, 17.0])
    x = grounding_eval_transform(np.zeros((20, 50, 3), np.uint8), box, "a thing", 32)
    np.testing.assert_allclose(canvas_to_image(x["box_xyxy"] / 32, 50, 20, 32), box, atol=1e-4)


SMALL = ("{'clip': {'vision': {'image_size': 32, 'patch_size': 8, 'width': 32, 'layers': 2, 'heads': 2, "
         "'mlp_dim': 64}, 'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64}, "
         "'embed_dim': 16}, 'feature_layers': (0, 1), 'hidden_dim': 32, 'visu_proj_in_dim': 32}")


def test_a_synthetic_shapes_run_scores_as_its_own_evaluation(tmp_path, capsys):
    """A workdir of configs/clipvg/shapes.py (word tokenizer, 24 text positions): the suite rebuilds the
    model, tokenizer and held-out data from its config.json and gives the numbers the run logs."""
    from vlalign_jax.methods.clipvg import make
    from vlalign_jax.train.checkpoint import Checkpointer
    from vlalign_jax.train.config import build_config, save_config

    overrides = {"model.overrides": SMALL, "data.num_heldout": "24", "eval.num_heldout": "16",
                 "eval.batch_size": "16"}
    config = build_config(str(Path(__file__).resolve().parents[2] / "configs" / "clipvg" / "shapes.py"),
                          list(overrides.items()))
    method = make(config)
    params = random_params(method.model.config, seed=5)
    save_config(config, tmp_path)
    checkpointer = Checkpointer(tmp_path, async_save=False)
    checkpointer.save(7, {"params": params}, None, config.to_dict())
    checkpointer.wait()
    checkpointer.close()

    out = tmp_path / "shapes.json"
    assert main(["eval", "--suite", "grounding", "--dataset", "synthetic_shapes", "--checkpoint", str(tmp_path),
                 "--batch-size", "16", "--out", str(out), "--grid", str(tmp_path / "shapes.png")]) == 0
    results = json.loads(out.read_text())["splits"]
    logged = method.evaluators["grounding"](params, None)
    assert list(results) == ["val"] and results["val"]["examples"] == 16  # eval.num_heldout of the run
    assert results["val"]["acc@0.5"] == logged["val/acc@0.5"]
    assert results["val"]["miou"] == pytest.approx(logged["val/miou"], abs=1e-6)
    capsys.readouterr()
    # A checkpoint file has no data config to rebuild the synthetic data from.
    assert main(["eval", "--suite", "grounding", "--dataset", "synthetic_shapes", "--checkpoint",
                 str(tmp_path / "tiny_clipvg.pth")]) == 2
    assert "is not a training workdir" in capsys.readouterr().err


def test_a_vocabulary_other_than_clip_bpe_is_an_error(evaluated, tmp_path, capsys):
    config = GROUNDING_CONFIGS["tiny"]
    config = dataclasses.replace(config, clip=dataclasses.replace(
        config.clip, text=dataclasses.replace(config.clip.text, vocab_size=100)))
    converters.save(CLIPVG(config), random_params(config), tmp_path / "words.pth", "clipvg")
    args = [a if a != str(evaluated["root"] / "tiny_clipvg.pth") else str(tmp_path / "words.pth")
            for a in evaluated["args"]]
    assert main([a if a != str(evaluated["out"]) else str(tmp_path / "x.json") for a in args]) == 2
    assert "the model's text vocabulary has 100 entries, CLIP's BPE tokenizer 49408" in capsys.readouterr().err
