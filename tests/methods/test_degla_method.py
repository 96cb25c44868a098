"""The DeGLA method: batches carry K negative captions, the EMA teacher starts at the initial weights
and follows the student after each step, it is checkpointed (a resume is exact), and the teacher-free
NegCLIP setting needs no EMA."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from demo_runs import SMALL_MODEL
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.config import build_config
from vlalign_jax.train.loop import setup_run, train
from vlalign_jax.train.metrics import read_metrics_jsonl
from vlalign_jax.train.optim import decays

SHAPES = str(Path(__file__).resolve().parents[2] / "configs/degla/shapes.py")


def small_config(**overrides):
    pairs = {"model.init_from": "", "model.overrides": SMALL_MODEL, "train.batch_size": "16", "train.steps": "4",
             "train.progress_bar": "False", "train.eval_every": "0", "train.log_every": "1",
             "train.checkpoint_every": "2", "train.ema_decay": "0.5", "data.num_threads": "1",
             "optim.warmup_steps": "1", "optim.lr": "1e-3"}
    pairs.update({k: str(v) for k, v in overrides.items()})
    return build_config(SHAPES, list(pairs.items()))


def test_batches_carry_negatives_and_the_teacher_follows_the_student():
    run = setup_run(small_config())
    state = run.init_state()
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.extras["ema_params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the teacher starts as the student
    batch = next(run.iterator())
    assert batch["negative_tokens"].shape == (16, 3, 24)
    assert not np.array_equal(batch["negative_tokens"][:, 0], batch["tokens"])
    before = jax.tree.map(np.asarray, state.params)
    with run.context():
        state, metrics = run.step_fn(state, run.global_batch(batch))
    metrics = jax.device_get(metrics)
    for name in ("loss/negclip", "loss/distill", "loss/igc", "loss/tgc"):
        assert np.isfinite(metrics[name]), name
    # The teacher saw the initial weights: student and teacher were equal, so distillation was 0.
    assert metrics["loss/distill"] == pytest.approx(0.0, abs=1e-10)
    expected = jax.tree.map(lambda p0, p1: 0.5 * p0 + 0.5 * np.asarray(p1), before, state.params)
    for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(state.extras["ema_params"])):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)


def test_resume_restores_the_teacher_exactly(tmp_path):
    straight = train(small_config(), tmp_path / "straight")
    # The run as if killed after step 2's checkpoint: its folder without step 4 and the rows after 2.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in read_metrics_jsonl(metrics) if r["step"] <= 2))
    resumed = train(small_config(), tmp_path / "resumed")  # continues from step 2
    assert resumed["loss/distill"] == straight["loss/distill"] != 0.0
    for a, b in zip(jax.tree.leaves(load_params(tmp_path / "straight")),
                    jax.tree.leaves(load_params(tmp_path / "resumed"))):
        np.testing.assert_array_equal(a, b)
    rows = read_metrics_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r][-2:] == [3, 4]


def test_negclip_needs_no_teacher_and_degla_asks_for_one():
    negclip = {"degla.distill_weight": "0.0", "degla.tgc_weight": "0.0", "degla.igc_weight": "0.0",
               "train.ema_decay": "0.0"}
    run = setup_run(small_config(**negclip))
    assert "ema_params" not in run.init_state().extras
    with pytest.raises(ValueError, match="need the EMA teacher: set train.ema_decay"):
        setup_run(small_config(**{"train.ema_decay": "0.0"}))


def test_weight_decay_rule_for_position_embeddings():
    name = "vision_model/embeddings/position_embedding/embedding"
    assert not decays(name, 2) and decays(name, 2, position_embeddings=True)
    assert not decays("vision_model/embeddings/class_embedding", 1, position_embeddings=True)
    assert decays("text_projection/kernel", 2)
