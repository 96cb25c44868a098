"""The optimizer chain: masked weight decay, freezing, per-module learning rates, schedule, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlalign_jax.train.optim import learning_rate_schedule, make_optimizer, param_labels

PARAMS = {
    "vision_model": {"encoder": {"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}},
                     "embeddings": {"position_embedding": jnp.ones((5, 3))}},
    "text_model": {"fc": {"kernel": jnp.ones((3, 3))}},
    "logit_scale": jnp.asarray(1.0),
}
BASE = dict(lr=1e-2, warmup_steps=0, weight_decay=0.5, b1=0.9, b2=0.99, eps=1e-8, max_grad_norm=0.0)


def _one_update(optim, grads=None, steps=10):
    tx = make_optimizer(optim, steps, PARAMS)
    grads = jax.tree.map(jnp.zeros_like, PARAMS) if grads is None else grads
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return updates


def test_weight_decay_only_on_matrices():
    # zero gradients: the only update is decoupled weight decay, lr * wd * param
    updates = _one_update(BASE)
    np.testing.assert_allclose(updates["vision_model"]["encoder"]["fc"]["kernel"], -1e-2 * 0.5)
    for leaf in (updates["vision_model"]["encoder"]["fc"]["bias"],
                 updates["vision_model"]["embeddings"]["position_embedding"], updates["logit_scale"]):
        np.testing.assert_array_equal(leaf, 0.0)


def test_freezing_and_lr_multipliers():
    optim = {**BASE, "freeze": ("text_model/.*",), "lr_multipliers": {"vision_model/.*": 0.1}}
    updates = _one_update(optim)
    np.testing.assert_array_equal(updates["text_model"]["fc"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["vision_model"]["encoder"]["fc"]["kernel"], -1e-2 * 0.1 * 0.5, rtol=1e-6)
    labels = param_labels(PARAMS, {"vision_model/.*": 0.1}, ("text_model/.*",))
    assert labels["text_model"]["fc"]["kernel"] == "frozen" and labels["logit_scale"] == "lr_x1.0"


def test_frozen_gradients_do_not_count_in_clipping():
    grads = jax.tree.map(jnp.zeros_like, PARAMS)
    grads["text_model"]["fc"]["kernel"] = jnp.full((3, 3), 1e6)  # frozen: must not shrink the others
    grads["logit_scale"] = jnp.asarray(0.5)
    optim = {**BASE, "weight_decay": 0.0, "max_grad_norm": 1.0, "freeze": ("text_model/.*",)}
    clipped = _one_update(optim, grads)
    unclipped = _one_update({**optim, "max_grad_norm": 0.0}, grads)
    np.testing.assert_allclose(clipped["logit_scale"], unclipped["logit_scale"], rtol=1e-6)


def test_warmup_then_cosine():
    schedule = learning_rate_schedule(1.0, warmup_steps=10, total_steps=110, final_lr_fraction=0.1)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(schedule(60), 0.1 + 0.9 * 0.5, rtol=1e-5)  # half way down the cosine
    np.testing.assert_allclose(schedule(110), 0.1, rtol=1e-5)


def test_matches_optax_adamw_without_groups():
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), PARAMS)
    ours = make_optimizer(BASE, 10, PARAMS)
    mask = {"vision_model": {"encoder": {"fc": {"kernel": True, "bias": False}},
                             "embeddings": {"position_embedding": False}},
            "text_model": {"fc": {"kernel": True}}, "logit_scale": False}
    ref = optax.adamw(optax.cosine_decay_schedule(1e-2, 10), b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.5,
                      mask=mask)
    s_ours, s_ref, p = ours.init(PARAMS), ref.init(PARAMS), PARAMS
    for _ in range(3):
        u_ours, s_ours = ours.update(grads, s_ours, p)
        u_ref, s_ref = ref.update(grads, s_ref, p)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_ours, u_ref)
        p = optax.apply_updates(p, u_ref)


def test_hugging_face_trainer_decay_rule():
    """FG-CLIP's released rule: all but LayerNorm parameters and names containing "bias"."""
    params = {"layer_norm1": {"scale": jnp.ones(3), "bias": jnp.ones(3)},
              "fc": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)},
              "embeddings": {"position_embedding": jnp.ones((5, 3)), "class_embedding": jnp.ones(3)},
              "logit_scale": jnp.asarray(1.0), "logit_bias": jnp.asarray(1.0)}
    optim = {**BASE, "decay_rule": "all_but_norms_and_biases"}
    tx = make_optimizer(optim, 10, params)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    decayed = jax.tree.map(lambda u: bool(np.all(np.asarray(u) != 0.0)), updates)
    assert decayed == {"layer_norm1": {"scale": False, "bias": False}, "fc": {"kernel": True, "bias": False},
                       "embeddings": {"position_embedding": True, "class_embedding": True},
                       "logit_scale": True, "logit_bias": False}


def test_warmup_fraction_rounds_up_as_hugging_face():
    from vlalign_jax.train.optim import schedule_from_config

    schedule = schedule_from_config({"lr": 1.0, "warmup_steps": 0, "warmup_fraction": 0.03}, 1000)
    np.testing.assert_allclose([schedule(15), schedule(30)], [0.5, 1.0], rtol=1e-6)  # ceil(0.03 * 1000) = 30
    assert float(schedule(31)) < 1.0
