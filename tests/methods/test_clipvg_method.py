"""The CLIP-VG method: a step trains only what the reference trains (fusion, head, CLIP's visual
position embedding), a CLIP checkpoint fills the towers, and the released fully supervised and
unsupervised configs train on split files written here and report Acc@0.5 per reported split."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from PIL import Image

from vlalign_jax import converters
from vlalign_jax.models.clip import CLIP
from vlalign_jax.models.grounding import trainable
from vlalign_jax.train.config import build_config
from vlalign_jax.train.loop import setup_run, train
from vlalign_jax.train.metrics import read_metrics_jsonl

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "clipvg"
SMALL = ("{'clip': {'vision': {'image_size': 32, 'patch_size': 8, 'width': 32, 'layers': 2, 'heads': 2, "
         "'mlp_dim': 64}, 'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64}, "
         "'embed_dim': 16}, 'feature_layers': (0, 1), 'hidden_dim': 32, 'visu_proj_in_dim': 32}")


def small_config(path="shapes.py", **overrides):
    pairs = {"model.overrides": SMALL, "train.batch_size": "16", "eval.batch_size": "16", "eval.num_heldout": "32",
             "data.num_threads": "1", "train.progress_bar": "False", "train.eval_every": "0", "train.log_every": "1"}
    pairs.update({k: str(v) for k, v in overrides.items()})
    return build_config(str(CONFIGS / path), list(pairs.items()))


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}


def test_a_step_trains_only_the_reference_trainable_parameters():
    run = setup_run(small_config())
    state = run.init_state()
    before = flat(state.params)
    batch = next(run.iterator())
    assert batch["pixels"].shape == (16, 32, 32, 3) and batch["pad_mask"].shape == (16, 32, 32)
    assert np.all((batch["box"] >= 0) & (batch["box"] <= 1))
    with run.context():
        state, metrics = run.step_fn(state, run.global_batch(batch))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss/l1"]) and np.isfinite(metrics["loss/giou"])
    after = flat(state.params)
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    # `visu_proj` is trainable but unused (as in the reference): no gradient, so not even decay moves it.
    expected = {k for k in before if trainable(k) and not k.startswith("visu_proj/")}
    assert moved == expected, sorted(moved ^ expected)[:5]
    assert "clip/vision_model/embeddings/position_embedding" in moved
    results = run.method.evaluators["grounding"](state.params, state.extras)
    assert 0.0 <= results["val/acc@0.5"] <= 1.0 and 0.0 <= results["val/miou"] <= 1.0


def test_a_clip_checkpoint_fills_the_towers(tmp_path):
    config = small_config()
    clip_config = setup_run(config).method.model.config.clip
    clip = CLIP(clip_config)
    params = clip.init(jax.random.PRNGKey(5), np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 24), np.int32))
    converters.save(clip, params["params"], tmp_path / "clip.pt", "open_clip")
    run = setup_run(small_config(**{"model.init_from": str(tmp_path / "clip.pt")}))
    got = flat(run.init_state().params)
    for key, value in flat(converters.load(tmp_path / "clip.pt")[1]).items():
        np.testing.assert_array_equal(got[f"clip/{key}"], value)
    fresh = flat(nn.meta.unbox(jax.jit(run.method.init_variables)(jax.random.PRNGKey(config.train.seed))["params"]))
    for key in ("vl_pos_embed", "reg_token", "bbox_embed/layers_2/kernel"):
        np.testing.assert_array_equal(got[key], fresh[key])  # the reference's own initialisation


def write_splits(root: Path, dataset: str, splits: dict[str, int]) -> None:
    """JSON-lines splits of coloured squares on grey, "the red square" -> its box (x1, y1, x2, y2)."""
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours = {"red": (230, 20, 20), "blue": (20, 20, 230)}
    for split, count in splits.items():
        rows = []
        for i in range(count):
            width, height = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            pixels = np.full((height, width, 3), 128, np.uint8)
            name = list(colours)[i % 2]
            x1, y1 = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
            pixels[y1:y1 + 16, x1:x1 + 16] = colours[name]
            Image.fromarray(pixels).save(images / f"{split}_{i}.jpg")
            rows.append({"image_file": f"{split}_{i}.jpg", "box": [x1, y1, x1 + 16, y1 + 16],
                         "expression": f"The {name} square", "dataset": dataset})
        folder = root / "split" / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{dataset}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_released_settings_train_on_split_files_and_report_every_split(tmp_path):
    write_splits(tmp_path, "unc", {"train": 16, "train_pseudo": 24, "val": 8, "testA": 8, "testB": 8})
    data = {"data.split_root": str(tmp_path / "split"), "data.image_root": str(tmp_path / "images"),
            "data.train_scales": "(32, 24)", "data.num_workers": "0", "model.dtype": "float32",
            "model.init_from": "", "train.batch_size": "8", "train.epochs": "1", "train.eval_every": "2",
            "eval.num_heldout": "0"}
    last = train(small_config("fully_supervised.py", **data), tmp_path / "full")
    assert {f"eval/grounding/{split}/acc@0.5" for split in ("val", "testA", "testB")} <= set(last)
    steps = [r["step"] for r in read_metrics_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2] and np.isfinite(last["loss"])  # one epoch of 16 annotated examples
    # The run exports to the released checkpoint layout, which loads back as CLIP-VG with the run's params.
    from vlalign_jax.cli import main
    from vlalign_jax.models.grounding import CLIPVG
    from vlalign_jax.train.checkpoint import load_params

    assert main(["export", str(tmp_path / "full"), str(tmp_path / "best_checkpoint.pth"), "--to", "clipvg"]) == 0
    model, params = converters.load(tmp_path / "best_checkpoint.pth")
    assert isinstance(model, CLIPVG)
    ours = flat(load_params(tmp_path / "full"))
    assert all(np.array_equal(value, ours[key]) for key, value in flat(params).items())
    # Unsupervised: the same recipe on the pseudo-labels (24 here).
    assert small_config("unsupervised.py").data.train_split == "train_pseudo"
    assert len(setup_run(small_config("unsupervised.py", **data)).method.train_data()[0]) == 24
