"""FG-CLIP 1 and 2 losses against float64 torch re-implementations of the released loss code, per
device on an 8-device mesh, and the synchronised ranking threshold against numpy per shard.

The torch references follow 360CVGroup/FG-CLIP step by step: v1.0@0fcea59
`fgclip/model/clip_strc/fgclip.py` (`fgclip.py`) and main@b1af1cd `fgclip2/model/strcs/fgclip2.py`
(`fgclip2.py`): one rank at a time, the global terms against all-gathered features (targets
rank * b + arange(b)), the region terms on the rank's own boxes selected with the `box_nums` mask,
`F.cross_entropy` with the soft `eye` targets, `topk`, the threshold all-reduced and divided by the
world size, then every per-rank loss averaged (DeepSpeed's gradient average). Where the released code
cannot run (a box with fewer than 10 negatives, fewer than 10 boxes for TIC's top-k, an empty rank),
the references extend it the way the JAX losses document: masked candidates get -inf, top-k takes
min(10, K), an empty rank contributes 0 and its current threshold.

Tolerances: JAX runs fp32 (full-precision matmuls, conftest) on the same fp32 inputs the float64
references see; logits are at most ~100 (scale 100 region temperatures) and sums run over at most
64 x 704 entries, so values and gradients agree to ~1e-6 relative: checked at 1e-5 (atol 1e-5 on
gradients). Sharded and unsharded JAX with the same (global) semantics run the same fp32 maths split
across devices: 1e-6 on values.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from vlalign_jax.losses.fgclip import (MAX_RANKING_THRESHOLD, fgclip2_loss, fgclip_loss, hard_negative_block_loss,
                                       hard_negative_loss, long_short_sigmoid_loss, long_short_softmax_loss,
                                       region_text_contrastive_loss, textual_intra_modal_loss)

torch = pytest.importorskip("torch")
F = torch.nn.functional

BATCH, BOXES, DIM, NUM_NEG, DEVICES = 16, 4, 16, 10, 8
LN100 = math.log(100.0)
FLOATS = ("image", "long_text", "short_text", "region", "region_text", "hard_region", "hard_candidates",
          "logit_scale", "logit_bias", "region_logit_scale", "hard_logit_scale")
MASKS = ("box_mask", "hard_box_mask", "negative_mask")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    """16 images x 4 box slots; the per-device shards (2 images each) hold 0..8 valid boxes."""
    rng = np.random.default_rng(seed)
    image = _unit(rng.normal(size=(BATCH, DIM)))
    region = _unit(rng.normal(size=(BATCH, BOXES, DIM)))
    region_text = _unit(region + 1.2 * rng.normal(size=region.shape))
    # near-duplicate box captions (cos > 0.95) inside shard 0 and across shards 1 / 2
    for (i, j), (k, m) in (((1, 1), (0, 0)), ((2, 0), (5, 3))):
        region_text[i, j] = _unit(region_text[k, m] + 0.05 * rng.normal(size=DIM))
    box_mask = rng.random((BATCH, BOXES)) < 0.7
    box_mask[[0, 1, 2, 5], [0, 1, 0, 3]] = True
    box_mask[10:12] = False  # shard 5: no boxes
    box_mask[12] = [True, False, False, False]
    box_mask[13] = False  # shard 6: one box
    hard_region = _unit(rng.normal(size=(BATCH, BOXES, DIM)))
    positives = _unit(hard_region + 0.8 * rng.normal(size=hard_region.shape))
    negatives = _unit(positives[:, :, None] + 0.9 * rng.normal(size=(BATCH, BOXES, NUM_NEG, DIM)))
    hard_box_mask = rng.random((BATCH, BOXES)) < 0.6
    hard_box_mask[0] = True
    hard_box_mask[6:8] = False  # shard 3: no hard boxes
    negative_mask = np.ones((BATCH, BOXES, NUM_NEG), bool)
    negative_mask[0, 1, 7:] = False  # a box with 7 negatives
    negative_mask[3, 2, ::2] = False
    return {"image": image, "long_text": _unit(image + 1.0 * rng.normal(size=image.shape)),
            "short_text": _unit(image + 1.5 * rng.normal(size=image.shape)), "region": region,
            "region_text": region_text, "box_mask": box_mask, "hard_region": hard_region,
            "hard_candidates": np.concatenate([positives[:, :, None], negatives], 2).astype(np.float32),
            "hard_box_mask": hard_box_mask, "negative_mask": negative_mask,
            "logit_scale": np.float32(math.log(1 / 0.07)), "logit_bias": np.float32(-4.0),
            "region_logit_scale": np.float32(math.log(40.0)), "hard_logit_scale": np.float32(math.log(20.0)),
            "ranking_threshold": np.float32(1.5)}


# ---- float64 torch references, one rank at a time (reference line numbers) ----

def _t_scale(log_scale, capped=True):
    return (torch.clamp(log_scale, max=LN100) if capped else log_scale).exp()


def _t_ranks(a, groups):
    """The per-rank views of every batch-leading tensor: contiguous chunks, rank r = device r."""
    return [{k: (v.chunk(groups)[r] if v.dim() and k not in FLOATS[7:] else v) for k, v in a.items()}
            for r in range(groups)]


def _t_select(x, mask):
    """fgclip.py:441-451: the valid box slots, image-major (nonzero of the box_nums mask)."""
    return x.reshape(-1, *x.shape[2:])[mask.reshape(-1)]


def _t_clip_rank(image_all, text_all, rank, b, s):
    """fgclip.py:476-520 for one caption type on one rank: local rows against gathered columns."""
    image, text = image_all[rank * b:(rank + 1) * b], text_all[rank * b:(rank + 1) * b]
    targets = torch.linspace(rank * b, rank * b + b - 1, b).long()
    return (F.cross_entropy(s * image @ text_all.T, targets) + F.cross_entropy(s * (image_all @ text.T).T, targets)) / 2


def _t_softmax(a, groups, capped=True):
    b, s = len(a["image"]) // groups, _t_scale(a["logit_scale"], capped)
    return sum(_t_clip_rank(a["image"], a["long_text"], r, b, s) + _t_clip_rank(a["image"], a["short_text"], r, b, s)
               for r in range(groups)) / groups


def _t_siglip_block(image, text, s, bias, negative_only):
    """fgclip2.py:630-653 `_loss`."""
    labels = -torch.ones(len(image), len(image), dtype=image.dtype)
    if not negative_only:
        labels = labels + 2 * torch.eye(len(image), dtype=image.dtype)
    return -F.logsigmoid(labels * (s * image @ text.T + bias)).sum() / len(image)


def _t_sigmoid(a, groups):
    """fgclip2.py:656-670 (`gather`) for long and short captions, per rank, averaged."""
    s, total = a["logit_scale"].exp(), 0.0
    for key in ("long_text", "short_text"):
        images, texts = a["image"].chunk(groups), a[key].chunk(groups)
        for r in range(groups):
            total = total + _t_siglip_block(images[r], texts[r], s, a["logit_bias"], False)
            total = total + sum(_t_siglip_block(images[r], texts[i], s, a["logit_bias"], True)
                                for i in range(groups) if i != r)
    return total / groups


def _t_region_rank(a, capped=True):
    """fgclip.py:438-452, 523-532 (fgclip2.py:492-503, 555-564): local boxes, soft eye targets."""
    mask = a["box_mask"]
    if not mask.any():
        return 0.0
    image, text = _t_select(a["region"], mask), _t_select(a["region_text"], mask)
    s, labels = _t_scale(a["region_logit_scale"], capped), torch.eye(len(image), dtype=image.dtype)
    return (F.cross_entropy(s * text @ image.T, labels) + F.cross_entropy(s * image @ text.T, labels)) / 2


def _t_tic_rank(a):
    """fgclip2.py:35-43, 566-576 with topk(min(10, K))."""
    mask = a["box_mask"]
    if not mask.any():
        return 0.0
    text = _t_select(a["region_text"], mask)
    k = len(text)
    eyeweights = torch.ones(k, k, dtype=text.dtype) - torch.eye(k, dtype=text.dtype)
    similarity = torch.einsum("bp,bp->bp", eyeweights, text @ text.T)
    similarity = torch.where(similarity > 0.95, torch.zeros_like(similarity), similarity)
    values, _ = similarity.topk(min(10, k), dim=1, largest=True, sorted=True)
    return torch.mean(-1.0 * torch.log(1.0 / torch.sum(values.exp(), dim=1)))


def _t_hard_inputs(a):
    mask = a["hard_box_mask"]
    return (_t_select(a["hard_region"], mask), _t_select(a["hard_candidates"], mask),
            _t_select(a["negative_mask"], mask))


def _t_own_logits(image, text, negative_mask, s):
    """fgclip.py:534-540: einsum against the box's own 11 texts; masked negatives -inf."""
    predict = s * torch.einsum("bp,bdp->bd", image, text)
    valid = torch.cat([torch.ones_like(negative_mask[:, :1]), negative_mask], 1)
    return predict.masked_fill(~valid, float("-inf"))


def _t_hard_negative_rank(a, capped=True):
    if not a["hard_box_mask"].any():
        return 0.0
    image, text, negative_mask = _t_hard_inputs(a)
    predict = _t_own_logits(image, text, negative_mask, _t_scale(a["hard_logit_scale"], capped))
    return F.cross_entropy(predict, torch.zeros(len(image), dtype=torch.long))


def _t_block_rank(a, threshold, capped=True):
    """fgclip2.py:587-628 (`hard_contrastive_total_loss`, `get_cmr_loss`) -> (block, this rank's gap)."""
    if not a["hard_box_mask"].any():
        return 0.0, threshold  # fgclip2.py:523-524
    image, text, negative_mask = _t_hard_inputs(a)
    s, k = _t_scale(a["hard_logit_scale"], capped), len(image)
    gt_text, da_text = text[:, 0], text[:, 1:]
    all_text = torch.cat([gt_text, da_text[negative_mask]])  # all valid: da_text.reshape(-1, D)
    labels = torch.arange(k)
    loss = (F.cross_entropy(s * image @ all_text.T, labels) + F.cross_entropy(s * gt_text @ image.T, labels)) / 2
    pair = F.cross_entropy(_t_own_logits(image, text, negative_mask, s), torch.zeros(k, dtype=torch.long))
    da_logits = s * (da_text @ image.unsqueeze(-1)).squeeze(-1)
    gt_similarity = (s * image @ all_text.T).diag().reshape(-1, 1).expand(da_logits.shape)
    cmr = F.relu(threshold + da_logits - gt_similarity)[negative_mask].mean()
    gap = gt_similarity.mean() - da_logits[negative_mask].mean()
    return 0.6 * loss + 3 * pair + 0.4 * cmr, float(gap.detach())


def _t_block(a, groups, capped=True):
    """Per-rank blocks averaged; threshold: all_reduce(SUM) / world_size, clamp(0, 10) (fgclip2.py:526-530)."""
    results = [_t_block_rank(r, float(a["ranking_threshold"]), capped) for r in _t_ranks(a, groups)]
    loss = sum(block for block, _ in results) / groups
    return loss, min(max(sum(gap for _, gap in results) / groups, 0.0), MAX_RANKING_THRESHOLD)


def _t_fgclip2(a, groups):
    block, threshold = _t_block(a, groups)
    return (_t_sigmoid(a, groups) + 0.2 * _t_mean_over_ranks(_t_region_rank, a, groups)
            + 0.1 * _t_mean_over_ranks(_t_tic_rank, a, groups) + 0.5 * block, threshold)


def _t_mean_over_ranks(fn, a, groups, **kw):
    return sum(fn(r, **kw) for r in _t_ranks(a, groups)) / groups


TORCH = {
    "softmax": lambda a, g: (_t_softmax(a, g), None),
    "sigmoid": lambda a, g: (_t_sigmoid(a, g), None),
    "region": lambda a, g: (_t_mean_over_ranks(_t_region_rank, a, g), None),
    "tic": lambda a, g: (_t_mean_over_ranks(_t_tic_rank, a, g), None),
    "hard_negative": lambda a, g: (_t_mean_over_ranks(_t_hard_negative_rank, a, g), None),
    "hard_block": _t_block,
    "fgclip": lambda a, g: (_t_softmax(a, g) + 0.1 * _t_mean_over_ranks(_t_region_rank, a, g)
                            + 0.5 * _t_mean_over_ranks(_t_hard_negative_rank, a, g), None),
    "fgclip2": lambda a, g: _t_fgclip2(a, g),
}


def _torch_value_and_grads(name, arrays, groups=1):
    tensors = {k: torch.tensor(np.asarray(v, np.float64) if k in FLOATS else np.asarray(v),
                               requires_grad=k in FLOATS) for k, v in arrays.items()}
    loss, threshold = TORCH[name](tensors, groups)
    loss.backward()
    grads = {k: np.zeros(t.shape) if t.grad is None else t.grad.numpy() for k, t in tensors.items() if k in FLOATS}
    return float(loss.detach()), grads, threshold


# ---- the JAX losses as functions of the named inputs ----

def _regions(a):
    return a["region"], a["region_text"], a["box_mask"]


def _hard(a):
    return a["hard_region"], a["hard_candidates"], a["hard_box_mask"]


JAX = {
    "softmax": lambda a, kw: long_short_softmax_loss(a["image"], a["long_text"], a["short_text"], a["logit_scale"]),
    "sigmoid": lambda a, kw: long_short_sigmoid_loss(a["image"], a["long_text"], a["short_text"], a["logit_scale"],
                                                     a["logit_bias"]),
    "region": lambda a, kw: region_text_contrastive_loss(*_regions(a), a["region_logit_scale"], **kw),
    "tic": lambda a, kw: textual_intra_modal_loss(a["region_text"], a["box_mask"], **kw),
    "hard_negative": lambda a, kw: hard_negative_loss(*_hard(a), a["hard_logit_scale"],
                                                      negative_mask=a["negative_mask"], **kw),
    "hard_block": lambda a, kw: hard_negative_block_loss(*_hard(a), a["hard_logit_scale"], a["ranking_threshold"],
                                                         negative_mask=a["negative_mask"], **kw),
    "fgclip": lambda a, kw: fgclip_loss(a["image"], a["long_text"], a["short_text"], *_regions(a), *_hard(a),
                                        a["logit_scale"], a["region_logit_scale"], a["hard_logit_scale"],
                                        hard_negative_mask=a["negative_mask"], **kw),
    "fgclip2": lambda a, kw: fgclip2_loss(a["image"], a["long_text"], a["short_text"], *_regions(a), *_hard(a),
                                          a["logit_scale"], a["logit_bias"], a["region_logit_scale"],
                                          a["hard_logit_scale"], a["ranking_threshold"],
                                          hard_negative_mask=a["negative_mask"], **kw),
}


@functools.cache
def _mesh(shape=(DEVICES,), axes=("data",), axis_type=AxisType.Auto):
    return jax.make_mesh(shape, axes, axis_types=(axis_type,) * len(shape))


def _shardings(mesh, axes=("data",)):
    """Batch-leading inputs split over `axes`, scalars replicated."""
    return lambda k: NamedSharding(mesh, PartitionSpec() if k in FLOATS[7:] + ("ranking_threshold",)
                                   else PartitionSpec(axes))


@functools.cache
def _jax_fn(name, mesh_args=None):
    """jit(value_and_grad) w.r.t. the float inputs; the masks and the threshold are plain arguments.
    mesh_args: (shape, axes[, axis_type]) of the mesh the per-device terms get, or None."""
    kw = {} if mesh_args is None else {"mesh": _mesh(*mesh_args), "axis_names": mesh_args[1]}
    loss_fn = lambda floats, rest: JAX[name]({**floats, **rest}, kw)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def _jax_value_and_grads(name, arrays, mesh_args=None, shardings=None):
    floats = {k: v for k, v in arrays.items() if k in FLOATS}
    rest = {k: v for k, v in arrays.items() if k not in FLOATS}
    if shardings is not None:
        floats, rest = ({k: jax.device_put(v, shardings(k)) for k, v in d.items()} for d in (floats, rest))
    (loss, metrics), grads = _jax_fn(name, mesh_args)(floats, rest)
    return loss, metrics, grads


def _assert_matches(name, got, want, rtol=1e-5, atol=1e-5):
    loss, metrics, grads = got
    want_loss, want_grads, want_threshold = want
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, err_msg=name)
    for key in FLOATS:
        np.testing.assert_allclose(grads[key], want_grads[key], rtol=rtol, atol=atol, err_msg=f"{name} {key}")
    if want_threshold is not None:
        np.testing.assert_allclose(metrics["next_ranking_threshold"], want_threshold, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("name", list(JAX))
def test_matches_torch_reference_one_device(name):
    """mesh=None: the whole batch is one rank's batch (TIC has K >= 10 boxes here)."""
    arrays = _batch()
    _assert_matches(name, _jax_value_and_grads(name, arrays), _torch_value_and_grads(name, arrays))


@pytest.mark.parametrize("name", ["fgclip", "fgclip2"])
def test_per_device_terms_on_8_devices_match_reference_ranks(name):
    """Batch sharded over 8 devices, region terms per device: the reference with 8 ranks (shards with
    0, 1 or up to 8 boxes, TIC with K < 10); the global terms equal the unsharded ones."""
    arrays = _batch(1)
    mesh = _mesh()
    shardings = _shardings(mesh)
    got = _jax_value_and_grads(name, arrays, ((DEVICES,), ("data",)), shardings)
    _assert_matches(name, got, _torch_value_and_grads(name, arrays, groups=DEVICES))
    assert got[2]["region"].sharding.is_equivalent_to(shardings("region"), 3)
    # the global terms do not depend on the sharding
    one_device = _jax_value_and_grads(name, arrays)
    for key in ("loss/itc_long", "loss/itc_short", "loss/sigmoid_long", "loss/sigmoid_short"):
        if key in got[1]:
            np.testing.assert_allclose(got[1][key], one_device[1][key], rtol=1e-6, err_msg=key)
    assert abs(float(got[1]["loss/region"]) - float(one_device[1]["loss/region"])) > 1e-2  # per device != global


@pytest.mark.parametrize("name", ["softmax", "fgclip2"])
def test_global_semantics_do_not_depend_on_the_sharding(name):
    """mesh=None (everything one group) on a batch sharded over 8 devices: the unsharded values and
    gradients (XLA gathers what it needs)."""
    arrays = _batch(1)
    mesh = _mesh()
    shardings = _shardings(mesh)
    one_device = _jax_value_and_grads(name, arrays)
    sharded = _jax_value_and_grads(name, arrays, shardings=shardings)
    np.testing.assert_allclose(sharded[0], one_device[0], rtol=1e-6)
    for key in FLOATS:
        np.testing.assert_allclose(sharded[2][key], one_device[2][key], atol=1e-6, err_msg=key)
    for key in one_device[1]:
        np.testing.assert_allclose(sharded[1][key], one_device[1][key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("name, axis_type", [("hard_block", AxisType.Auto), ("region", AxisType.Explicit)])
def test_two_batch_axes(name, axis_type):
    """Batch split over ("data", "fsdp") = 2 x 4 devices: 8 ranks in mesh order. Explicit axes only for
    the per-device terms: the global terms, like `contrastive.py`'s dense losses, expect Auto axes."""
    arrays = _batch(2)
    shape, axes = (2, 4), ("data", "fsdp")
    mesh = _mesh(shape, axes, axis_type)
    shardings = _shardings(mesh, axes)
    got = _jax_value_and_grads(name, arrays, (shape, axes, axis_type), shardings)
    _assert_matches(name, got, _torch_value_and_grads(name, arrays, groups=DEVICES))


def _numpy_gaps(arrays, threshold):
    """Per shard: mean positive logit - mean valid negative logit, or the current threshold if empty."""
    s = math.exp(float(arrays["hard_logit_scale"]))
    gaps = []
    for shard in range(DEVICES):
        rows = slice(2 * shard, 2 * shard + 2)
        valid = arrays["hard_box_mask"][rows].reshape(-1)
        if not valid.any():
            gaps.append(threshold)
            continue
        region = arrays["hard_region"][rows].reshape(-1, DIM)[valid].astype(np.float64)
        candidates = arrays["hard_candidates"][rows].reshape(-1, 1 + NUM_NEG, DIM)[valid].astype(np.float64)
        logits = s * np.einsum("kd,kjd->kj", region, candidates)
        negative_mask = arrays["negative_mask"][rows].reshape(-1, NUM_NEG)[valid]
        gaps.append(logits[:, 0].mean() - logits[:, 1:][negative_mask].mean())
    return np.array(gaps)


def test_ranking_threshold_is_the_mean_of_per_device_gaps_and_the_same_on_every_device():
    """Two steps from tau = 0 on 8 devices: next tau = clip(mean over shards of (mean positive logit -
    mean negative logit), 0, 10), a shard without hard boxes contributing the current tau."""
    arrays = _batch(3)
    arrays["hard_box_mask"][2:4] = True  # shard 1: 8 hard boxes, shard 2: 1, shard 3: none (_batch)
    arrays["hard_box_mask"][4:6] = [[True, False, False, False], [False] * 4]
    mesh = _mesh()
    shardings = _shardings(mesh)
    carried = 0.0  # the train state's initial threshold; the next step uses the returned one
    for _ in range(2):
        arrays["ranking_threshold"] = np.float32(carried)
        gaps = _numpy_gaps(arrays, carried)
        assert gaps[3] == carried  # shard 3 has no hard boxes: it contributes the current threshold
        assert np.all(gaps[[0, 1, 2, 4, 5, 6, 7]] > 0) and 0 < gaps.mean() < MAX_RANKING_THRESHOLD  # no clipping
        _, metrics, _ = _jax_value_and_grads("hard_block", arrays, ((DEVICES,), ("data",)), shardings)
        want = float(np.clip(gaps.mean(), 0.0, MAX_RANKING_THRESHOLD))
        np.testing.assert_allclose(metrics["next_ranking_threshold"], want, rtol=1e-5)
        np.testing.assert_allclose(metrics["ranking_threshold"], carried)
        # each device's own buffer of the replicated result holds the same value
        values = [np.asarray(shard.data) for shard in metrics["next_ranking_threshold"].addressable_shards]
        assert len(values) == DEVICES and all(v == values[0] for v in values)
        # per device, not the global mean gap over all hard boxes
        assert abs(want - float(np.clip(_global_gap(arrays), 0, MAX_RANKING_THRESHOLD))) > 1e-2
        carried = float(metrics["next_ranking_threshold"])
    # the per-device gaps themselves, read back per device through shard_map
    per_device = jax.jit(jax.shard_map(
        lambda r, c, m, n: hard_negative_block_loss(r, c, m, arrays["hard_logit_scale"], carried, negative_mask=n,
                                                    max_ranking_threshold=1e9)[1]["next_ranking_threshold"][None],
        mesh=mesh, in_specs=(PartitionSpec("data"),) * 4, out_specs=PartitionSpec("data")))
    got = per_device(*_hard(arrays), arrays["negative_mask"])
    np.testing.assert_allclose(got, np.maximum(_numpy_gaps(arrays, carried), 0.0), rtol=1e-5)


def _global_gap(arrays):
    s = math.exp(float(arrays["hard_logit_scale"]))
    valid = arrays["hard_box_mask"].reshape(-1)
    region = arrays["hard_region"].reshape(-1, DIM)[valid].astype(np.float64)
    candidates = arrays["hard_candidates"].reshape(-1, 1 + NUM_NEG, DIM)[valid].astype(np.float64)
    logits = s * np.einsum("kd,kjd->kj", region, candidates)
    return logits[:, 0].mean() - logits[:, 1:][arrays["negative_mask"].reshape(-1, NUM_NEG)[valid]].mean()


def _run(name, arrays, mesh_args=None):
    """(loss, metrics, grads): unsharded with mesh_args=None, else batch sharded over 8 devices with
    per-device terms (the compiled functions of the tests above)."""
    shardings = None if mesh_args is None else _shardings(_mesh(*mesh_args))
    return _jax_value_and_grads(name, arrays, mesh_args, shardings)


@pytest.mark.parametrize("name", ["fgclip", "fgclip2"])
def test_masked_entries_contribute_nothing(name):
    """Masked boxes and negatives set to NaN or 1e6: same value and metrics, zero gradient there (one
    group, and per device on 8 devices)."""
    arrays = _batch(4)
    for fill in (np.nan, 1e6):
        changed = {k: v.copy() for k, v in arrays.items()}
        changed["region"][~arrays["box_mask"]] = fill
        changed["region_text"][~arrays["box_mask"]] = fill
        changed["hard_region"][~arrays["hard_box_mask"]] = fill
        changed["hard_candidates"][~arrays["hard_box_mask"]] = fill
        changed["hard_candidates"][:, :, 1:][~arrays["negative_mask"]] = fill
        for mesh_args in (None, ((DEVICES,), ("data",))):
            loss, metrics, grads = _run(name, arrays, mesh_args)
            got_loss, got_metrics, got_grads = _run(name, changed, mesh_args)
            np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
            for key in metrics:
                np.testing.assert_allclose(got_metrics[key], metrics[key], rtol=1e-6, err_msg=key)
            for key, mask in (("region", arrays["box_mask"]), ("region_text", arrays["box_mask"]),
                              ("hard_region", arrays["hard_box_mask"])):
                assert not np.any(got_grads[key][~mask]), key
                np.testing.assert_allclose(got_grads[key], grads[key], atol=1e-6, err_msg=key)
            candidates_valid = arrays["hard_box_mask"][..., None] & np.concatenate(
                [np.ones_like(arrays["negative_mask"][..., :1]), arrays["negative_mask"]], -1)
            assert not np.any(got_grads["hard_candidates"][~candidates_valid])
            np.testing.assert_allclose(got_grads["hard_candidates"], grads["hard_candidates"], atol=1e-6)


def test_no_boxes_and_no_long_captions():
    """No boxes (a Chinese batch): region terms are 0 with zero gradient, the threshold stays (clipped
    to [0, 10]), the total is the global terms alone. No long captions: only the short term."""
    arrays = _batch(5)
    for key in MASKS:
        arrays[key] = np.zeros_like(arrays[key])
    arrays["ranking_threshold"] = np.float32(12.0)
    loss, metrics, grads = _run("fgclip2", arrays, ((DEVICES,), ("data",)))
    for key in ("loss/region", "loss/tic", "loss/hard_block", "loss/hard_itc", "loss/hard_pair", "loss/hard_rank"):
        assert float(metrics[key]) == 0.0, key
    assert float(metrics["next_ranking_threshold"]) == MAX_RANKING_THRESHOLD
    for key in ("region", "region_text", "hard_region", "hard_candidates", "region_logit_scale", "hard_logit_scale"):
        assert not np.any(grads[key]), key
    np.testing.assert_allclose(loss, metrics["loss/sigmoid_long"] + metrics["loss/sigmoid_short"], rtol=1e-6)
    # no long captions: that term is dropped (the reference's early return) and logged as 0
    for fn, args in ((long_short_softmax_loss, ()), (long_short_sigmoid_loss, (arrays["logit_bias"],))):
        (short_only, short_metrics), (both, both_metrics) = jax.jit(lambda a, fn=fn, args=args: (
            fn(a["image"], None, a["short_text"], a["logit_scale"], *args),
            fn(a["image"], a["long_text"], a["short_text"], a["logit_scale"], *args)))(arrays)
        long_key, short_key = (k for k in both_metrics if k.startswith("loss/"))
        np.testing.assert_allclose(short_only, both_metrics[short_key], rtol=1e-6)
        np.testing.assert_allclose(both, both_metrics[long_key] + both_metrics[short_key], rtol=1e-6)
        assert float(short_metrics[long_key]) == 0.0


def test_logit_scale_cap_and_released_no_cap():
    """The released scales start at 4.6052 > ln 100: capped by default (no gradient), uncapped with
    max_logit_scale=None exactly as the reference."""
    arrays = {**_batch(6), "region_logit_scale": np.float32(4.6052)}
    floats = {k: v for k, v in arrays.items() if k in ("region", "region_text", "region_logit_scale")}

    @jax.jit
    def losses(f):
        loss = lambda f, **kw: region_text_contrastive_loss(  # noqa: E731
            f["region"], f["region_text"], arrays["box_mask"], f["region_logit_scale"], **kw)[0]
        at_cap = loss({**f, "region_logit_scale": jnp.float32(LN100)})
        return jax.value_and_grad(loss)(f), at_cap, jax.value_and_grad(lambda f: loss(f, max_logit_scale=None))(f)

    (capped, capped_grads), at_cap, (loss, grads) = losses(floats)
    np.testing.assert_allclose(capped, at_cap, rtol=1e-6)
    assert float(capped_grads["region_logit_scale"]) == 0.0
    tensors = {k: torch.tensor(np.asarray(v, np.float64) if k in FLOATS else v, requires_grad=k in FLOATS)
               for k, v in arrays.items()}
    want = _t_region_rank(tensors, capped=False)
    want.backward()
    np.testing.assert_allclose(loss, float(want.detach()), rtol=1e-5)
    for key in floats:
        np.testing.assert_allclose(grads[key], tensors[key].grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


def test_bad_shapes_raise_naming_the_argument():
    a = _batch()
    region, text, mask = _regions(a)
    hard_region, candidates, hard_mask = _hard(a)
    cases = [
        ("region_text_embeds", lambda: region_text_contrastive_loss(region, text[:, :3], mask, 1.0)),
        ("box_mask", lambda: region_text_contrastive_loss(region, text, mask[:, :2], 1.0)),
        ("region_embeds", lambda: region_text_contrastive_loss(region[0], text, mask, 1.0)),
        ("box_mask", lambda: textual_intra_modal_loss(text, mask[:8])),
        ("candidate_embeds", lambda: hard_negative_loss(hard_region, candidates[:, :, 0], hard_mask, 1.0)),
        ("candidate_embeds", lambda: hard_negative_loss(hard_region, candidates[..., :8], hard_mask, 1.0)),
        ("negative_mask", lambda: hard_negative_block_loss(hard_region, candidates, hard_mask, 1.0, 0.0,
                                                           negative_mask=a["negative_mask"][..., :9])),
        ("ranking_threshold", lambda: hard_negative_block_loss(hard_region, candidates, hard_mask, 1.0, [0.0, 1.0])),
        ("short_text_embeds", lambda: long_short_softmax_loss(a["image"], None, a["short_text"][:4], 1.0)),
        ("long_text_embeds", lambda: long_short_sigmoid_loss(a["image"], a["long_text"][:, :4], a["short_text"],
                                                             1.0, 0.0)),
        ("divisible", lambda: region_text_contrastive_loss(region[:12], text[:12], mask[:12], 1.0, mesh=_mesh(),
                                                           axis_names="data")),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()
