"""The FG-CLIP 2 method on the synthetic shapes: one step trains every term; the ranking threshold the
loss computes (mean over the 8 devices of each device's positive-minus-negative hard logit gap,
clipped) is recomputed here in numpy from the step's own features, carried to the next step and
restored exactly on resume; and a SigLIP 2 checkpoint grows into FG-CLIP 2's tree."""

import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np

from vlalign_jax import converters
from vlalign_jax.models.fgclip import extend_text_positions
from vlalign_jax.models.siglip import SigLIP, SiglipConfig
from vlalign_jax.train.checkpoint import load_params
from vlalign_jax.train.config import build_config
from vlalign_jax.train.loop import setup_run, train

CONFIG = str(Path(__file__).resolve().parents[2] / "configs/fgclip2/shapes.py")
SMALL = ("{'vision': {'patch_size': 8, 'num_patches': 36, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64}, "
         "'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64, "
         "'projection_dim': 32}}")
MAX_LOG_SCALE = np.log(100.0)


def small_config(**overrides):
    pairs = {"model.overrides": SMALL, "train.batch_size": "16", "eval.batch_size": "16", "eval.num_heldout": "32",
             "data.num_threads": "1", "optim.warmup_steps": "0", "optim.lr": "1e-3", "train.progress_bar": "False",
             "train.eval_every": "0", "train.log_every": "1"}
    pairs.update({k: str(v) for k, v in overrides.items()})
    return build_config(CONFIG, list(pairs.items()))


def numpy_next_threshold(features: dict, hard_log_scale: float, tau: float, devices: int) -> float:
    """clip(mean over batch shards of (mean_k p_k - mean_{k,d} q_kd), 0, 10); a shard without a hard
    box or negative contributes tau (fgclip.md 3.7)."""
    scale = np.exp(min(hard_log_scale, MAX_LOG_SCALE))
    gaps = []
    for part in np.array_split(np.arange(len(features["box_mask"])), devices):
        regions, candidates = features["regions"][part], features["candidates"][part]
        negatives = features["negative_mask"][part] & features["box_mask"][part][..., None]
        hard = negatives.any(-1)
        logits = scale * np.einsum("bmd,bmjd->bmj", regions, candidates)
        if not hard.any():
            gaps.append(tau)
            continue
        gaps.append(logits[..., 0][hard].mean() - logits[..., 1:][negatives].mean())
    return float(np.clip(np.mean(gaps), 0.0, 10.0))


def test_steps_train_every_term_and_carry_the_synchronised_threshold():
    run = setup_run(small_config())
    state = run.init_state()
    assert float(state.extras["ranking_threshold"]) == 0.0  # the reference starts at 0
    iterator = run.iterator()
    taus = []
    for step in range(2):
        batch = run.global_batch(next(iterator))
        with run.context():
            features = jax.device_get(jax.jit(run.method.embed)(state.params, state.extras, batch,
                                                                jax.random.key(0)))
            hard_log_scale = float(state.params["logit_scale_hard_negative"])
            tau = float(state.extras["ranking_threshold"])
            state, metrics = run.step_fn(state, batch)  # donates the old state
        metrics = jax.device_get(metrics)
        for term in ("loss/sigmoid_long", "loss/sigmoid_short", "loss/region", "loss/tic", "loss/hard_itc",
                     "loss/hard_pair", "loss/hard_rank"):
            assert np.isfinite(metrics[term]) and metrics[term] > 0, term
        assert metrics["ranking_threshold"] == tau
        expected = numpy_next_threshold(features, hard_log_scale, tau, jax.device_count())
        np.testing.assert_allclose(metrics["next_ranking_threshold"], expected, rtol=1e-5, atol=1e-5)
        assert float(state.extras["ranking_threshold"]) == metrics["next_ranking_threshold"]
        taus.append(float(metrics["next_ranking_threshold"]))
    assert taus[0] > 0.0, "the positive gap of the first step becomes the second step's margin"
    assert state.extras["ranking_threshold"].sharding.is_fully_replicated  # every device holds one value
    results = run.method.evaluators["regions"](state.params, state.extras)
    assert 0.0 <= results["hard_negative_accuracy"] <= 1.0 and results["boxes"] > 0


def test_resume_restores_the_threshold_exactly(tmp_path):
    # A constant learning rate, so a 2-step run is the first half of the 4-step one (as a run killed at
    # step 2 would be; with a decaying schedule the total step count changes the first steps).
    config = {"train.steps": "4", "train.checkpoint_every": "2", "optim.final_lr_fraction": "1.0"}
    straight = train(small_config(**config), tmp_path / "straight")
    # The run as if killed after step 2's checkpoint: its folder without step 4.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    resumed = train(small_config(**config), tmp_path / "resumed")  # continues from step 2
    assert resumed["ranking_threshold"] == straight["ranking_threshold"] > 0.0
    assert resumed["loss/hard_rank"] == straight["loss/hard_rank"]
    for a, b in zip(jax.tree.leaves(load_params(tmp_path / "straight")),
                    jax.tree.leaves(load_params(tmp_path / "resumed"))):
        np.testing.assert_array_equal(a, b)


def test_a_siglip2_checkpoint_grows_into_fgclip2(tmp_path):
    fg_config = setup_run(small_config()).method.model.config
    siglip_config = SiglipConfig(**{f.name: getattr(fg_config, f.name) for f in dataclasses.fields(SiglipConfig)})
    siglip = SigLIP(siglip_config)
    n = siglip_config.vision.num_patches
    params = siglip.init(jax.random.PRNGKey(3), np.zeros((1, n, siglip_config.vision.patch_dim), np.float32),
                         np.ones((1, n), np.int32), np.asarray([[6, 6]], np.int32), np.zeros((1, 24), np.int32))
    converters.save(siglip, params["params"], tmp_path / "siglip2", "hf")
    state = setup_run(small_config(**{"model.init_from": str(tmp_path / "siglip2")})).init_state()
    loaded = converters.load(tmp_path / "siglip2")[1]
    got = jax.device_get(state.params)
    table = loaded["text_model"]["embeddings"]["position_embedding"]["embedding"]
    np.testing.assert_array_equal(got["text_model"]["position_embedding_ori"], extend_text_positions(table))
    for a, b in zip(jax.tree.leaves(got["boxtext_head"]), jax.tree.leaves(loaded["text_model"]["head"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(got["dense_feature_head"]), jax.tree.leaves(loaded["vision_model"]["head"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got["logit_scale_hard_negative"], MAX_LOG_SCALE, rtol=1e-6)
