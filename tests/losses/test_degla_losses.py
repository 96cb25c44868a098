"""DeGLA losses against a float64 torch re-implementation of the released loss code, and sharded
against unsharded.

The torch references follow xiaoxing2001/DeGLA@1c5e960 `src/open_clip/loss.py` L102-175 step by step
(captions laid out as [positives; negatives flattened image-major], full logit matrices, the additive
-inf masks built with `repeat` / `repeat_interleave`, `F.cross_entropy`, `F.mse_loss(reduction='sum')`),
plus an explicit per-anchor loop for the paper's TGC. Teacher tensors carry no gradient there, as under
the reference's `no_grad`.

Tolerances: the references run in float64 on the same fp32 inputs, so the JAX-vs-torch difference is
JAX's fp32 rounding (full-precision matmuls, conftest) of sums of at most B * (1 + K) = 24 logits of size
<= 15, or of B * (2 + K) * D = 480 squared differences for the distillation sum: ~1e-6 relative,
checked at 1e-5. Sharded vs unsharded run the same fp32 maths with reductions possibly split across
devices, so they agree to a few fp32 ulps: 1e-6.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from vlalign_jax.losses.degla import (degla_loss, image_grounded_contrast, negclip_loss, self_distillation_loss,
                                      text_grounded_contrast)

torch = pytest.importorskip("torch")
F = torch.nn.functional

BATCH, NUM_NEG, DIM = 6, 3, 16
LOG_SCALE = np.float32(math.log(1 / 0.07))  # CLIP's initial temperature: s ~ 14.3
STUDENT = ("image", "text", "negatives")
TEACHER = ("teacher_image", "teacher_text", "teacher_negatives")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _batch(seed: int = 0, batch: int = BATCH, num_neg: int = NUM_NEG, dim: int = DIM) -> dict[str, np.ndarray]:
    """Unit embeddings: captions near their image, hard negatives near their positive, teacher near student."""
    rng = np.random.default_rng(seed)
    image = _unit(rng.normal(size=(batch, dim)))
    text = _unit(image + 1.5 * rng.normal(size=(batch, dim)))
    negatives = _unit(text[:, None] + 0.8 * rng.normal(size=(batch, num_neg, dim)))
    student = {"image": image, "text": text, "negatives": negatives}
    teacher = {"teacher_" + k: _unit(v + 0.3 * rng.normal(size=v.shape)) for k, v in student.items()}
    return {**student, **teacher, "logit_scale": LOG_SCALE}


# ---- float64 torch references (loss.py line numbers) ----

def _t_captions(text, negatives):
    """train.py L115-116 / loss.py L227: [positives; negatives.view(-1, D)] -> [N + N*K, D]."""
    return torch.cat([text, negatives.reshape(-1, negatives.shape[-1])])


def _t_mask(n, k, tiled):
    """loss.py L154-157 (tiled, `repeat`) and L166-169 (`repeat_interleave`)."""
    mask_0 = torch.full((n, n), float("-inf"), dtype=torch.float64)
    mask_0.fill_diagonal_(0)
    mask_1 = mask_0.repeat(1, k) if tiled else mask_0.repeat_interleave(k, dim=1)
    return torch.cat([mask_0, mask_1], dim=1)


def _t_scale(log_scale):
    return torch.clamp(log_scale, max=math.log(100)).exp()  # model returns exp(logit_scale)


def _t_negclip(image, text, negatives, logit_scale, **_):
    """loss.py L114-115, L135-138."""
    captions, s = _t_captions(text, negatives), _t_scale(logit_scale)
    logits_per_image, logits_per_text = s * image @ captions.T, s * captions @ image.T
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text[:len(image)], labels)) / 2


def _t_distill(image, text, negatives, teacher_image, teacher_text, teacher_negatives, **_):
    """loss.py L173-175 on all captions."""
    return (F.mse_loss(image, teacher_image, reduction="sum")
            + F.mse_loss(_t_captions(text, negatives), _t_captions(teacher_text, teacher_negatives), reduction="sum"))


def _t_igc(image, text, negatives, logit_scale, **_):
    """loss.py L161-172."""
    logits = _t_scale(logit_scale) * image @ _t_captions(text, negatives).T
    return F.cross_entropy(logits + _t_mask(len(image), negatives.shape[1], tiled=False), torch.arange(len(image)))


def _t_tgc_code(text, negatives, teacher_text, tiled, **_):
    """loss.py L146-160 (tiled=True is the released mask; False the older repeat_interleave one)."""
    text_features = _t_captions(text, negatives)
    gt_text, da_text = text_features[:len(teacher_text)], text_features[len(teacher_text):]
    contrast = 10.0 * gt_text @ torch.cat([teacher_text, da_text]).T
    return F.cross_entropy(contrast + _t_mask(len(text), negatives.shape[1], tiled), torch.arange(len(text)))


def _t_tgc_own_loop(text, negatives, teacher_text, **_):
    """The paper's TGC, one anchor at a time: positive = teacher's caption, negatives = its own K."""
    total = 0.0
    for i in range(len(text)):
        logits = 10.0 * torch.cat([(text[i] @ teacher_text[i])[None], negatives[i] @ text[i]])
        total = total - torch.log_softmax(logits, 0)[0]
    return total / len(text)


def _t_degla(tiled, **a):
    tgc = _t_tgc_code(tiled=tiled, **a)
    return _t_negclip(**a) + 0.005 * _t_distill(**a) + 0.1 * _t_igc(**a) + 0.1 * tgc


def _torch_value_and_grads(fn, arrays: dict[str, np.ndarray]):
    """fn(**float64 tensors); gradients w.r.t. the student embeddings and logit_scale, none for the teacher."""
    tensors = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=not k.startswith("teacher"))
               for k, v in arrays.items()}
    loss = fn(**tensors)
    loss.backward()
    return float(loss.detach()), {k: np.zeros(t.shape) if t.grad is None else t.grad.numpy()  # unused input: 0
                                  for k, t in tensors.items() if t.requires_grad}


# ---- JAX losses as functions of the named inputs ----

JAX_LOSSES = {
    "negclip": lambda a: negclip_loss(a["image"], a["text"], a["negatives"], a["logit_scale"]),
    "distill": lambda a: self_distillation_loss(
        a["image"], a["teacher_image"], jnp.concatenate([a["text"][:, None], a["negatives"]], 1),
        jnp.concatenate([a["teacher_text"][:, None], a["teacher_negatives"]], 1)),
    "igc": lambda a: image_grounded_contrast(a["image"], a["text"], a["negatives"], a["logit_scale"]),
    "tgc_paper": lambda a: text_grounded_contrast(a["text"], a["teacher_text"], a["negatives"], variant="paper"),
    "tgc_released": lambda a: text_grounded_contrast(a["text"], a["teacher_text"], a["negatives"],
                                                     variant="released_code"),
    "degla_paper": lambda a: degla_loss(*(a[k] for k in STUDENT + TEACHER), a["logit_scale"]),
    "degla_released": lambda a: degla_loss(*(a[k] for k in STUDENT + TEACHER), a["logit_scale"],
                                           tgc_variant="released_code"),
}

REFERENCES = [
    pytest.param("negclip", _t_negclip, id="negclip"),
    pytest.param("distill", _t_distill, id="distill"),
    pytest.param("igc", _t_igc, id="igc"),
    pytest.param("tgc_paper", _t_tgc_own_loop, id="tgc_paper-vs-loop"),
    pytest.param("tgc_paper", lambda **a: _t_tgc_code(tiled=False, **a), id="tgc_paper-vs-repeat_interleave-mask"),
    pytest.param("tgc_released", lambda **a: _t_tgc_code(tiled=True, **a), id="tgc_released-vs-released-mask"),
    pytest.param("degla_paper", lambda **a: _t_degla(tiled=False, **a), id="degla_paper"),
    pytest.param("degla_released", lambda **a: _t_degla(tiled=True, **a), id="degla_released"),
]


def _jax_value_and_grads(name: str, arrays: dict):
    """Value and gradients w.r.t. every input (teacher included: they must be exactly zero)."""
    return jax.value_and_grad(lambda a: JAX_LOSSES[name](a)[0])(arrays)


@pytest.mark.parametrize("name, reference", REFERENCES)
def test_loss_matches_torch_reference(name, reference):
    arrays = _batch()
    loss, grads = _jax_value_and_grads(name, arrays)
    want_loss, want_grads = _torch_value_and_grads(reference, arrays)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for key in STUDENT + ("logit_scale",):
        np.testing.assert_allclose(grads[key], want_grads[key], atol=1e-5, rtol=1e-5, err_msg=key)
    for key in TEACHER:  # stop_gradient on every teacher input
        assert not np.any(np.asarray(grads[key])), key


def test_tgc_variants_differ_except_when_they_coincide():
    arrays = _batch(1)
    paper, paper_grads = _jax_value_and_grads("tgc_paper", arrays)
    released, released_grads = _jax_value_and_grads("tgc_released", arrays)
    assert abs(float(paper) - float(released)) > 1e-3
    assert np.abs(paper_grads["negatives"] - released_grads["negatives"]).max() > 1e-3
    # with one negative per image (or one image) the tiled and interleaved masks are the same
    for batch, num_neg in ((BATCH, 1), (1, NUM_NEG)):
        arrays = _batch(2, batch=batch, num_neg=num_neg)
        np.testing.assert_allclose(_jax_value_and_grads("tgc_paper", arrays)[0],
                                   _jax_value_and_grads("tgc_released", arrays)[0], rtol=1e-6)


@pytest.mark.parametrize("variant, expected", [
    ("paper", {(1, 0), (1, 1), (1, 2), (1, 3)}),
    ("released_code", {(0, 1), (2, 1), (4, 1), (6, 1)}),  # degla.md 1.5, checked there for N=8, K=4
])
def test_tgc_negatives_of_one_anchor(variant, expected):
    """Which negatives anchor 1 is contrasted with: with every other anchor zero, only they get gradient."""
    arrays = _batch(3, batch=8, num_neg=4)
    text = np.zeros_like(arrays["text"])
    text[1] = arrays["text"][1]
    grad = jax.grad(lambda n: text_grounded_contrast(text, arrays["teacher_text"], n, variant=variant)[0])(
        arrays["negatives"])
    assert set(zip(*np.nonzero(np.abs(grad).sum(-1)))) == expected


def test_metrics_and_logit_scale_cap():
    arrays = _batch(4)
    _, metrics = JAX_LOSSES["degla_released"](arrays)
    assert {"loss/negclip", "loss/distill", "loss/igc", "loss/tgc"} <= set(metrics)
    image, text, negatives = (arrays[k].astype(np.float64) for k in STUDENT)
    own = np.concatenate([np.einsum("bd,bd->b", image, text)[:, None], np.einsum("bd,bkd->bk", image, negatives)], 1)
    np.testing.assert_allclose(metrics["accuracy/igc"], np.mean(own.argmax(1) == 0), rtol=1e-6)
    captions = np.concatenate([text, negatives.reshape(-1, DIM)])
    np.testing.assert_allclose(metrics["accuracy/i2t"], np.mean((image @ captions.T).argmax(1) == np.arange(BATCH)),
                               rtol=1e-6)
    np.testing.assert_allclose(metrics["logit_scale"], math.exp(LOG_SCALE), rtol=1e-6)
    for name in ("negclip", "igc"):  # above ln 100: scale capped at 100, no gradient, as in contrastive.py
        above = {**arrays, "logit_scale": np.float32(5.0)}
        np.testing.assert_allclose(JAX_LOSSES[name]({**arrays, "logit_scale": np.float32(math.log(100))})[0],
                                   JAX_LOSSES[name](above)[0], rtol=1e-6)
        assert float(_jax_value_and_grads(name, above)[1]["logit_scale"]) == 0.0


def test_bf16_inputs_are_computed_in_fp32():
    arrays = {k: jnp.asarray(v, jnp.bfloat16) for k, v in _batch(5).items()}
    loss, grads = _jax_value_and_grads("degla_released", arrays)
    want = _jax_value_and_grads("degla_released", {k: jnp.float32(v) for k, v in arrays.items()})[0]
    assert loss.dtype == jnp.float32 and grads["image"].dtype == jnp.bfloat16
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_bad_arguments_raise():
    arrays = _batch()
    with pytest.raises(ValueError, match="variant"):
        text_grounded_contrast(arrays["text"], arrays["teacher_text"], arrays["negatives"], variant="tiled")
    with pytest.raises(ValueError, match="negatives"):
        negclip_loss(arrays["image"], arrays["text"], arrays["negatives"][:, :, :4], arrays["logit_scale"])


@pytest.mark.parametrize("shape, axes", [pytest.param((8,), ("data",), id="8"),
                                         pytest.param((2, 4), ("data", "fsdp"), id="2x4")])
def test_sharded_batch_matches_unsharded(shape, axes):
    """Under jit with every batch-leading input split over 8 devices: the same global-batch loss."""
    mesh = jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(shape))
    arrays = _batch(6, batch=16)
    batch_sharding, replicated = NamedSharding(mesh, PartitionSpec(axes)), NamedSharding(mesh, PartitionSpec())
    sharded = {k: jax.device_put(v, replicated if k == "logit_scale" else batch_sharding) for k, v in arrays.items()}
    assert len(sharded["negatives"].addressable_shards) == 8
    for name in JAX_LOSSES:
        want_loss, want_grads = _jax_value_and_grads(name, arrays)
        loss, grads = jax.jit(lambda a, name=name: _jax_value_and_grads(name, a))(sharded)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=name)
        for key in want_grads:
            np.testing.assert_allclose(grads[key], want_grads[key], atol=1e-6, err_msg=f"{name} {key}")
        assert grads["text"].sharding.is_equivalent_to(batch_sharding, 2), name  # every loss uses text
