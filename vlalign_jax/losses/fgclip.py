"""FG-CLIP (arXiv 2505.05071, ICML 2025) and FG-CLIP 2 (arXiv 2510.10921) training losses.

Reference: github.com/360CVGroup/FG-CLIP, v1 at `v1.0@0fcea59` `fgclip/model/clip_strc/fgclip.py`
(`fgclip.py` below) and v2 at `main@b1af1cd` `fgclip2/model/strcs/fgclip2.py` (`fgclip2.py`). Notes:
/work/shared/research/fgclip.md section 3. Terms and their weights in the released stage-2 recipes:

    v1: itc(long) + itc(short) + 0.1 region + 0.5 hard_negative                       (`fgclip_loss`)
    v2: sigmoid(long) + sigmoid(short) + 0.2 region + 0.1 tic
        + 0.5 (0.6 hard_itc + 3 hard_pair + 0.4 hard_rank)                            (`fgclip2_loss`)

Inputs. Every embedding is L2-normalised by the caller (the model; for RoIAlign-pooled boxes use a
safe norm, zero-area padding boxes have no norm) and is cast to fp32 here; logits, softmax/sigmoid,
top-k and reductions run in fp32. Global terms take `[B, D]` arrays. Region terms take per-image box
slots: `region_embeds [B, M, D]` (pooled box features), `region_text_embeds [B, M, D]`,
`box_mask [B, M]` (True/1 = a real box), and for hard negatives `candidate_embeds [B, M, 1 + N, D]`
(candidate 0 the box's positive caption, 1..N its hard negatives; N = 10 in the data) with an
optional `negative_mask [B, M, N]`. Masked slots and candidates may hold anything, NaN included:
they are replaced by zeros before use, take part in no softmax, top-k or mean, and get zero
gradient. The reference instead gathers the valid boxes with `nonzero` (v1 `fgclip.py:441-451`,
v2 `fgclip2.py:492-520`); order within the set does not change any term.

Temperatures are learned *log* scales: `logit_scale` (global), and in both versions separate
`region_logit_scale` (`logit_scale_finegraind`) and `hard_logit_scale` (`logit_scale_hardneg`), each
used as exp(min(x, max_logit_scale)). `max_logit_scale` defaults to ln 100, CLIP's cap and our house
style (see `contrastive.softmax_contrastive_loss`: same value and gradient below the cap, zero
gradient above it); the released code never clamps (HF CLIP forward, no clamp in either trainer) and
initialises the extra scales to 4.6052 > ln 100, so pass `max_logit_scale=None` to reproduce it. The
v2 sigmoid terms are never clamped (SigLIP does not).

Cross-device behaviour. The global terms (softmax and sigmoid over long and short captions) take no axis
argument: pass the global batch; under `jax.jit` with batch-sharded inputs they are the global-batch
losses, the mean over ranks of the reference's per-rank losses (like `contrastive.py`'s dense losses
they expect Auto mesh axes; Explicit-axis inputs would need resharding first). Every region term is
computed by the reference on each rank's *local* boxes only (negatives are the other boxes on the same
GPU, across its images; no gather) and the ranks' losses are averaged by DeepSpeed. These terms take
`mesh` and `axis_names`: with a mesh, each device computes the term on its own shard of the batch and
the results are averaged over the batch axes (`parallel.collectives.mean_over_batch_shards`, a plain
mean over devices; a device with no valid box contributes 0, as a reference rank that skips the term
does); the gradient is then the reference's DDP-averaged gradient. With `mesh=None` the given arrays are
one group: contrast over every box of the batch passed (the reference on one GPU; with the global batch,
more negatives than the reference's per-GPU ones). Callers reproducing the released training pass the
mesh.

Where the reference crashes or silently drops terms (v1: NaN for K = 0 and an exception for K = 1 valid
boxes on a rank; v2's `try/except: pass` around everything fine-grained, `fgclip2.py:485-533`, e.g.
fewer than 10 boxes for TIC's top-k, a single box squeezed to 1-d, or a box without exactly 10
negatives), these functions compute the term on whatever is valid and never skip it; wrong input shapes
raise ValueError naming the argument.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from vlalign_jax.losses.contrastive import MAX_LOGIT_SCALE, sigmoid_contrastive_loss
from vlalign_jax.parallel.collectives import mean_over_batch_shards

Metrics = dict[str, jax.Array]
AxisNames = str | Sequence[str]
BATCH_AXES = ("data", "fsdp")
MAX_RANKING_THRESHOLD = 10.0  # fgclip2.py:529


# ---- shared helpers ----

def _scale(logit_scale: jax.Array | float, max_logit_scale: float | None) -> jax.Array:
    """exp(min(logit_scale, max_logit_scale)) (no cap if None) as an fp32 0-d array; `()` or `(1,)` in."""
    log_scale = jnp.reshape(jnp.asarray(logit_scale, jnp.float32), ())
    return jnp.exp(log_scale if max_logit_scale is None else jnp.minimum(log_scale, max_logit_scale))


def _check(name: str, x: jax.Array, shape: tuple[int | None, ...]) -> None:
    """Raise ValueError naming `name` unless x.shape matches `shape` (None = any size)."""
    if x.ndim != len(shape) or any(want is not None and got != want for got, want in zip(x.shape, shape)):
        raise ValueError(f"{name} must have shape {tuple('*' if s is None else s for s in shape)}, got {x.shape}")


def _masked(x: jax.Array, valid: jax.Array) -> jax.Array:
    """x in fp32 with invalid rows (valid: x.shape[:-1]) set to 0, so NaN/inf there never propagate."""
    return jnp.where(valid[..., None], x.astype(jnp.float32), 0.0)


def _cross_entropy(logits: jax.Array, allowed: jax.Array, target: jax.Array, row_valid: jax.Array) -> jax.Array:
    """Mean over valid rows of logsumexp(logits[allowed]) - target; 0 if no row is valid.

    logits, allowed: [rows, cols]; target, row_valid: [rows]. Invalid rows may use every column, so
    no row's logsumexp is over an empty set (a finite value whose cotangent is 0, not a NaN gradient).
    """
    allowed = allowed | ~row_valid[:, None]
    per_row = jax.nn.logsumexp(jnp.where(allowed, logits, -jnp.inf), axis=-1) - target
    return jnp.sum(jnp.where(row_valid, per_row, 0.0)) / jnp.maximum(jnp.sum(row_valid), 1)


def _symmetric_cross_entropy(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """(CE(logits, diag) + CE(logits.T, diag)) / 2 over the valid rows and columns of a square matrix."""
    target = jnp.diagonal(logits)
    return 0.5 * (_cross_entropy(logits, valid[None, :], target, valid)
                  + _cross_entropy(logits.T, valid[None, :], target, valid))


def _box_arrays(region_embeds, text_embeds, box_mask, text_name: str) -> None:
    """Check regions [B, M, D], their texts [B, M, D] (or candidates [B, M, 1 + N, D]) and box_mask [B, M]."""
    _check("region_embeds", region_embeds, (None, None, None))
    batch, boxes, dim = region_embeds.shape
    _check(text_name, text_embeds, (batch, boxes) + (None,) * (text_embeds.ndim - 3) + (dim,))
    _check("box_mask", box_mask, (batch, boxes))


def _negative_mask(region_embeds, candidate_embeds, box_mask, negative_mask) -> jax.Array:
    """Check the hard-negative inputs; return the negative mask as bool [B, M, N] (all valid when None)."""
    if candidate_embeds.ndim != 4 or candidate_embeds.shape[2] < 2:
        raise ValueError(f"candidate_embeds must have shape (B, M, 1 + N, D) with N >= 1, "
                         f"got {candidate_embeds.shape}")
    _box_arrays(region_embeds, candidate_embeds, box_mask, "candidate_embeds")
    batch, boxes, num_candidates, _ = candidate_embeds.shape
    if negative_mask is None:
        return jnp.ones((batch, boxes, num_candidates - 1), bool)
    _check("negative_mask", negative_mask, (batch, boxes, num_candidates - 1))
    return negative_mask.astype(bool)


# ---- global terms ----

def _symmetric_infonce(image: jax.Array, text: jax.Array, scale: jax.Array) -> jax.Array:
    logits = scale * image.astype(jnp.float32) @ text.astype(jnp.float32).T  # [B (image), B (text)]
    return _symmetric_cross_entropy(logits, jnp.ones(logits.shape[0], bool))


def long_short_softmax_loss(image_embeds: jax.Array, long_text_embeds: jax.Array | None,
                            short_text_embeds: jax.Array, logit_scale: jax.Array, *, long_weight: float = 1.0,
                            short_weight: float = 1.0, max_logit_scale: float | None = MAX_LOGIT_SCALE
                            ) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 1 global loss (fgclip.md 3.1; `fgclip.py:371-376, 476-520`).

    image_embeds, long_text_embeds, short_text_embeds: [B, D], the global batch. One shared scale
    s = exp(min(logit_scale, max_logit_scale)). For each caption type, the symmetric CLIP loss
    itc(T) = (CE(s I T^T, arange B) + CE(s T I^T, arange B)) / 2 (CE = mean over rows), which is the
    mean over ranks of the reference's per-rank loss against all-gathered features.
    loss = long_weight * itc(long) + short_weight * itc(short); `long_text_embeds=None` (no long
    captions) drops that term, as the reference does (`loss_itcl is None`), and logs it as 0.
    Metrics: `loss/itc_long`, `loss/itc_short`, `logit_scale` (s).
    """
    _check("image_embeds", image_embeds, (None, None))
    _check("short_text_embeds", short_text_embeds, image_embeds.shape)
    scale = _scale(logit_scale, max_logit_scale)
    short = _symmetric_infonce(image_embeds, short_text_embeds, scale)
    long = jnp.zeros((), jnp.float32)
    if long_text_embeds is not None:
        _check("long_text_embeds", long_text_embeds, image_embeds.shape)
        long = _symmetric_infonce(image_embeds, long_text_embeds, scale)
    loss = long_weight * long + short_weight * short
    return loss, {"loss/itc_long": long, "loss/itc_short": short, "logit_scale": scale}


def long_short_sigmoid_loss(image_embeds: jax.Array, long_text_embeds: jax.Array | None,
                            short_text_embeds: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array, *,
                            long_weight: float = 1.0, short_weight: float = 1.0) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 2 global loss (fgclip.md 3.4; `fgclip2.py:462-482, 630-693`).

    [B, D] global arrays. For each caption type the SigLIP loss of `contrastive.sigmoid_contrastive_loss`:
    -sum over all B x B pairs of log_sigmoid(z * (exp(logit_scale) <I, T> + logit_bias)) / B, z = +1
    on the diagonal, -1 elsewhere (the mean over ranks of the reference's "reduce"/"gather" per-rank
    losses). No cap on the scale. loss = long_weight * sig(long) + short_weight * sig(short);
    `long_text_embeds=None` drops the long term (the reference's early return) and logs it as 0.
    Metrics: `loss/sigmoid_long`, `loss/sigmoid_short`, `logit_scale`, `logit_bias`.
    """
    _check("image_embeds", image_embeds, (None, None))
    _check("short_text_embeds", short_text_embeds, image_embeds.shape)
    short, metrics = sigmoid_contrastive_loss(image_embeds, short_text_embeds, logit_scale, logit_bias)
    long = jnp.zeros((), jnp.float32)
    if long_text_embeds is not None:
        _check("long_text_embeds", long_text_embeds, image_embeds.shape)
        long = sigmoid_contrastive_loss(image_embeds, long_text_embeds, logit_scale, logit_bias)[0]
    loss = long_weight * long + short_weight * short
    return loss, {"loss/sigmoid_long": long, "loss/sigmoid_short": short,
                  "logit_scale": metrics["logit_scale"], "logit_bias": metrics["logit_bias"]}


# ---- region terms: per-shard bodies (arrays are one device's [b, M, ...] slice) ----

def _region_shard(region, text, box_mask, scale):
    valid = box_mask.reshape(-1).astype(bool)  # [b*M] box rows
    region = _masked(region.reshape(valid.shape[0], -1), valid)
    text = _masked(text.reshape(valid.shape[0], -1), valid)
    return _symmetric_cross_entropy(scale * region @ text.T, valid)  # [b*M (region), b*M (text)]


def _tic_shard(text, box_mask, duplicate_threshold, num_negatives):
    valid = box_mask.reshape(-1).astype(bool)
    text = _masked(text.reshape(valid.shape[0], -1), valid)
    similarity = text @ text.T  # raw cosine, no temperature
    # fgclip2.py:569-572: the diagonal and near-duplicates are set to 0 (kept as constant candidates)
    similarity = jnp.where(jnp.eye(valid.shape[0], dtype=bool), 0.0, similarity)
    similarity = jnp.where(similarity > duplicate_threshold, 0.0, similarity)
    # boxes that do not exist are no candidates; invalid rows keep finite values and are dropped below
    similarity = jnp.where(valid[None, :] | ~valid[:, None], similarity, -jnp.inf)
    top, _ = jax.lax.top_k(similarity, min(num_negatives, valid.shape[0]))  # [b*M, k]
    per_row = jax.nn.logsumexp(top, axis=-1)  # PNTextLoss: -log(1 / sum exp)
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _own_candidate_logits(region, candidates, box_mask, negative_mask, scale):
    """Flattened box rows: logits [K, 1 + N] of each box against its own candidates, and masks."""
    valid = box_mask.reshape(-1).astype(bool)  # [K] (K = b*M slots)
    negatives_valid = negative_mask.reshape(valid.shape[0], -1) & valid[:, None]  # [K, N]
    candidates_valid = jnp.concatenate([valid[:, None], negatives_valid], axis=1)  # [K, 1 + N]
    region = _masked(region.reshape(valid.shape[0], -1), valid)
    candidates = _masked(candidates.reshape(candidates_valid.shape + (-1,)), candidates_valid)
    logits = scale * jnp.einsum("kd,kjd->kj", region, candidates)
    return region, candidates, logits, valid, negatives_valid, candidates_valid


def _hard_negative_shard(region, candidates, box_mask, negative_mask, scale):
    _, _, logits, valid, _, candidates_valid = _own_candidate_logits(region, candidates, box_mask,
                                                                     negative_mask, scale)
    return _cross_entropy(logits, candidates_valid, logits[:, 0], valid)


def _hard_block_shard(region, candidates, box_mask, negative_mask, scale, threshold, weights):
    region, candidates, own, valid, negatives_valid, candidates_valid = _own_candidate_logits(
        region, candidates, box_mask, negative_mask, scale)
    dim = candidates.shape[-1]
    # (a) cross-box contrast, fgclip2.py:591-606: each box against every box's positive and negatives
    positives = candidates[:, 0]  # [K, D]
    to_positives = scale * region @ positives.T  # [K (box), K (positive)]
    to_negatives = scale * region @ candidates[:, 1:].reshape(-1, dim).T  # [K, K*N]
    logits = jnp.concatenate([to_positives, to_negatives], axis=1)
    columns_valid = jnp.concatenate([valid, negatives_valid.reshape(-1)])
    target = jnp.diagonal(to_positives)
    itc = 0.5 * (_cross_entropy(logits, columns_valid[None, :], target, valid)
                 + _cross_entropy(to_positives.T, valid[None, :], target, valid))
    # (b) own candidates, fgclip2.py:578-584 (= v1's hard_negative_loss)
    pair = _cross_entropy(own, candidates_valid, own[:, 0], valid)
    # (c) ranking with last step's margin, fgclip2.py:620-628
    positive, negative = own[:, :1], own[:, 1:]  # [K, 1], [K, N]
    num_negatives = jnp.sum(negatives_valid)
    hinge = jax.nn.relu(threshold + negative - positive)
    rank = jnp.sum(jnp.where(negatives_valid, hinge, 0.0)) / jnp.maximum(num_negatives, 1)
    # this device's margin estimate: mean positive logit - mean valid negative logit (fgclip2.py:625-627)
    num_valid = jnp.sum(valid)
    gap = (jnp.sum(jnp.where(valid, positive[:, 0], 0.0)) / jnp.maximum(num_valid, 1)
           - jnp.sum(jnp.where(negatives_valid, negative, 0.0)) / jnp.maximum(num_negatives, 1))
    # a rank without hard boxes all-reduces its current threshold (fgclip2.py:523-524)
    gap = jax.lax.stop_gradient(jnp.where((num_valid > 0) & (num_negatives > 0), gap, threshold))
    itc_weight, pair_weight, rank_weight = weights
    block = itc_weight * itc + pair_weight * pair + rank_weight * rank
    return block, {"loss/hard_itc": itc, "loss/hard_pair": pair, "loss/hard_rank": rank, "gap": gap}


# ---- region terms: public functions ----

def region_text_contrastive_loss(region_embeds: jax.Array, region_text_embeds: jax.Array, box_mask: jax.Array,
                                 logit_scale: jax.Array, *, mesh: Mesh | None = None,
                                 axis_names: AxisNames = BATCH_AXES,
                                 max_logit_scale: float | None = MAX_LOGIT_SCALE) -> tuple[jax.Array, Metrics]:
    """Region-text contrast (fgclip.md 3.2, 3.5; v1 `fgclip.py:438-453, 523-532`, v2 `fgclip2.py:486-505, 555-564`).

    region_embeds, region_text_embeds: [B, M, D]; box_mask: [B, M]. s = exp(min(logit_scale, cap)),
    the region temperature (v1 and v2 alike). Within a group, with the K valid boxes as rows r_k, t_k:

        loss = (CE(s R T^T, arange K) + CE(s T R^T, arange K)) / 2

    so every valid box is contrasted with every valid box text of the group, boxes of the same image
    included. The group is one device's shard with `mesh` (the reference: local boxes per GPU, no
    gather), averaged over devices; with `mesh=None` it is everything passed. A group with no valid
    box gives 0 (one valid box gives 0 too). Metrics: `loss/region`, `region_logit_scale`.
    """
    _box_arrays(region_embeds, region_text_embeds, box_mask, "region_text_embeds")
    scale = _scale(logit_scale, max_logit_scale)
    loss = mean_over_batch_shards(_region_shard, (region_embeds, region_text_embeds, box_mask), (scale,),
                                  mesh, axis_names)
    return loss, {"loss/region": loss, "region_logit_scale": scale}


def textual_intra_modal_loss(region_text_embeds: jax.Array, box_mask: jax.Array, *,
                             duplicate_threshold: float = 0.95, num_negatives: int = 10,
                             mesh: Mesh | None = None, axis_names: AxisNames = BATCH_AXES
                             ) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 2 Textual Intra-modal Contrast, TIC (fgclip.md 3.6; `fgclip2.py:35-43, 504, 566-576`).

    region_text_embeds: [B, M, D] (the region captions of `region_text_contrastive_loss`); box_mask
    [B, M]. Within a group of K valid box texts (one device's shard with `mesh`, averaged over devices;
    everything with `mesh=None`): S = T T^T (cosine, no temperature); the diagonal and every entry
    > duplicate_threshold are set to 0 (constants with no gradient, near-duplicate captions are not
    pushed apart); per row the `num_negatives` largest entries V are taken and

        loss = mean_k log sum_m exp(V_km)

    This follows the code exactly: the zeroed entries stay candidates with value 0, so they enter a
    row's top-k (adding exp(0) = 1) when fewer than k other captions have a positive cosine. Columns
    of invalid boxes are no candidates at all; with fewer than `num_negatives` valid columns (the
    reference's top-k raises there and drops the whole fine-grained block) a row uses all of them
    (its own zeroed diagonal included). A group with no valid box gives 0. Metrics: `loss/tic`.
    """
    _check("region_text_embeds", region_text_embeds, (None, None, None))
    _check("box_mask", box_mask, region_text_embeds.shape[:2])
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    loss = mean_over_batch_shards(lambda t, m: _tic_shard(t, m, duplicate_threshold, num_negatives),
                                  (region_text_embeds, box_mask), (), mesh, axis_names)
    return loss, {"loss/tic": loss}


def hard_negative_loss(region_embeds: jax.Array, candidate_embeds: jax.Array, box_mask: jax.Array,
                       logit_scale: jax.Array, *, negative_mask: jax.Array | None = None,
                       mesh: Mesh | None = None, axis_names: AxisNames = BATCH_AXES,
                       max_logit_scale: float | None = MAX_LOGIT_SCALE) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 1 hard-negative loss (fgclip.md 3.3; `fgclip.py:455-468, 534-540`).

    region_embeds [B, M, D] (the boxes that have hard negatives), candidate_embeds [B, M, 1 + N, D]
    (candidate 0 the positive), box_mask [B, M], negative_mask [B, M, N] (default: all valid; the
    reference requires exactly 10 per box). s = exp(min(logit_scale, cap)), the hard-negative
    temperature. Per valid box a softmax over its own valid candidates, label 0:

        loss = mean_k (logsumexp_j s <r_k, c_kj> - s <r_k, c_k0>)

    The mean is over the valid boxes of a group (one device's shard with `mesh`, then averaged over
    devices, as the reference's per-rank mean; everything with `mesh=None`); 0 for a group without
    one. Metrics: `loss/hard_negative`, `hard_logit_scale`.
    """
    negative_mask = _negative_mask(region_embeds, candidate_embeds, box_mask, negative_mask)
    scale = _scale(logit_scale, max_logit_scale)
    loss = mean_over_batch_shards(_hard_negative_shard, (region_embeds, candidate_embeds, box_mask, negative_mask),
                                  (scale,), mesh, axis_names)
    return loss, {"loss/hard_negative": loss, "hard_logit_scale": scale}


def hard_negative_block_loss(region_embeds: jax.Array, candidate_embeds: jax.Array, box_mask: jax.Array,
                             logit_scale: jax.Array, ranking_threshold: jax.Array | float, *,
                             negative_mask: jax.Array | None = None, itc_weight: float = 0.6,
                             pair_weight: float = 3.0, rank_weight: float = 0.4,
                             max_ranking_threshold: float = MAX_RANKING_THRESHOLD, mesh: Mesh | None = None,
                             axis_names: AxisNames = BATCH_AXES,
                             max_logit_scale: float | None = MAX_LOGIT_SCALE) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 2 hard-negative block with the dynamic-margin ranking loss (fgclip.md 3.7;
    `fgclip2.py:509-530, 540-553, 578-628`).

    Inputs as `hard_negative_loss`; s = exp(min(logit_scale, cap)) (the hard-negative temperature);
    ranking_threshold: the scalar margin tau carried in the train state (0 at the start, `:85`).
    Within a group (one device's shard with `mesh`; everything with `mesh=None`) of K valid boxes r_k
    with positives g_k and valid negatives n_kd:

    - hard_itc = (CE over [s r_k g_j (all j), s r_k n_jd (all valid j, d)], label g_k
                  + CE over s g_k r_j (all j), label r_k) / 2                       (`:591-606`)
    - hard_pair = mean_k CE over s r_k [g_k, n_k1..n_kN], label 0             (`hard_contrastive_loss`)
    - hard_rank = mean over valid (k, d) of relu(tau + q_kd - p_k), p_k = s <r_k, g_k>,
      q_kd = s <r_k, n_kd>; tau is a constant (no gradient)                          (`get_cmr_loss`)
    - block = itc_weight * hard_itc + pair_weight * hard_pair + rank_weight * hard_rank
      (0.6, 3, 0.4 as released, `:613-617`); groups are averaged, one without boxes gives 0.

    The threshold for the *next* step (`:526-530`): each group's gap = mean_k p_k - mean_{valid k,d}
    q_kd (scaled logits; the reference's `!= 0` mask stands for validity here), or the current tau if
    the group has no valid box or negative; then

        next = clip(mean over groups of gap, 0, max_ranking_threshold)

    with `mesh` a plain average over the devices of the batch axes (each device weighted equally,
    not by its number of boxes: it differs from the global mean gap when shards hold different
    numbers of boxes), computed by `pmean` so every device holds the same value; `stop_gradient`.
    It is returned as `metrics["next_ranking_threshold"]`: store it in the train state and pass it
    as `ranking_threshold` at the next step.

    Metrics: `loss/hard_block` (the weighted block), `loss/hard_itc`, `loss/hard_pair`,
    `loss/hard_rank` (unweighted), `ranking_threshold` (tau used), `next_ranking_threshold`,
    `hard_logit_scale`.
    """
    negative_mask = _negative_mask(region_embeds, candidate_embeds, box_mask, negative_mask)
    threshold = jnp.asarray(ranking_threshold, jnp.float32)
    if threshold.size != 1:
        raise ValueError(f"ranking_threshold must be a scalar, got shape {threshold.shape}")
    threshold = jax.lax.stop_gradient(threshold.reshape(()))
    scale = _scale(logit_scale, max_logit_scale)
    weights = (itc_weight, pair_weight, rank_weight)
    block, metrics = mean_over_batch_shards(
        lambda r, c, m, n, s, t: _hard_block_shard(r, c, m, n, s, t, weights),
        (region_embeds, candidate_embeds, box_mask, negative_mask), (scale, threshold), mesh, axis_names)
    next_threshold = jnp.clip(metrics.pop("gap"), 0.0, max_ranking_threshold)
    return block, {"loss/hard_block": block, **metrics, "ranking_threshold": threshold,
                   "next_ranking_threshold": next_threshold, "hard_logit_scale": scale}


# ---- totals ----

def fgclip_loss(image_embeds: jax.Array, long_text_embeds: jax.Array | None, short_text_embeds: jax.Array,
                region_embeds: jax.Array, region_text_embeds: jax.Array, box_mask: jax.Array,
                hard_region_embeds: jax.Array, hard_candidate_embeds: jax.Array, hard_box_mask: jax.Array,
                logit_scale: jax.Array, region_logit_scale: jax.Array, hard_logit_scale: jax.Array, *,
                hard_negative_mask: jax.Array | None = None, long_weight: float = 1.0, short_weight: float = 1.0,
                region_weight: float = 0.1, hard_negative_weight: float = 0.5, mesh: Mesh | None = None,
                axis_names: AxisNames = BATCH_AXES, max_logit_scale: float | None = MAX_LOGIT_SCALE
                ) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 1 stage-2 loss (fgclip.md 3.1-3.3; `fgclip.py:371-376, 438-468`):

        loss = long_weight * itc_long + short_weight * itc_short
               + region_weight * region + hard_negative_weight * hard_negative

    with the released weights 1, 1, 0.1, 0.5 as defaults. Arguments go to
    `long_short_softmax_loss`, `region_text_contrastive_loss` (region_*, box_mask, region_logit_scale)
    and `hard_negative_loss` (hard_*, hard_logit_scale); `mesh`/`axis_names` apply to the region terms
    and `max_logit_scale` to all three temperatures. Stage 1 is the same with all-False box masks.
    Metrics: `loss/itc_long`, `loss/itc_short`, `loss/region`, `loss/hard_negative` (unweighted) and
    the temperatures.
    """
    shards = {"mesh": mesh, "axis_names": axis_names, "max_logit_scale": max_logit_scale}
    global_loss, metrics = long_short_softmax_loss(image_embeds, long_text_embeds, short_text_embeds, logit_scale,
                                                   long_weight=long_weight, short_weight=short_weight,
                                                   max_logit_scale=max_logit_scale)
    region, region_metrics = region_text_contrastive_loss(region_embeds, region_text_embeds, box_mask,
                                                          region_logit_scale, **shards)
    hard, hard_metrics = hard_negative_loss(hard_region_embeds, hard_candidate_embeds, hard_box_mask,
                                            hard_logit_scale, negative_mask=hard_negative_mask, **shards)
    loss = global_loss + region_weight * region + hard_negative_weight * hard
    return loss, {**metrics, **region_metrics, **hard_metrics}


def fgclip2_loss(image_embeds: jax.Array, long_text_embeds: jax.Array | None, short_text_embeds: jax.Array,
                 region_embeds: jax.Array, region_text_embeds: jax.Array, box_mask: jax.Array,
                 hard_region_embeds: jax.Array, hard_candidate_embeds: jax.Array, hard_box_mask: jax.Array,
                 logit_scale: jax.Array, logit_bias: jax.Array, region_logit_scale: jax.Array,
                 hard_logit_scale: jax.Array, ranking_threshold: jax.Array | float, *,
                 hard_negative_mask: jax.Array | None = None, long_weight: float = 1.0, short_weight: float = 1.0,
                 region_weight: float = 0.2, tic_weight: float = 0.1, hard_weight: float = 0.5,
                 hard_itc_weight: float = 0.6, hard_pair_weight: float = 3.0, hard_rank_weight: float = 0.4,
                 duplicate_threshold: float = 0.95, tic_num_negatives: int = 10,
                 max_ranking_threshold: float = MAX_RANKING_THRESHOLD, mesh: Mesh | None = None,
                 axis_names: AxisNames = BATCH_AXES, max_logit_scale: float | None = MAX_LOGIT_SCALE
                 ) -> tuple[jax.Array, Metrics]:
    """FG-CLIP 2 stage-2 loss (fgclip.md 3.4-3.7; `fgclip2.py:462-530`):

        loss = long_weight * sigmoid_long + short_weight * sigmoid_short + region_weight * region
               + tic_weight * tic + hard_weight * (hard_itc_weight * hard_itc
               + hard_pair_weight * hard_pair + hard_rank_weight * hard_rank)

    with the released weights (1, 1, 0.2, 0.1, 0.5; 0.6, 3, 0.4) as defaults. Arguments go to
    `long_short_sigmoid_loss` (logit_scale, logit_bias; never clamped), `region_text_contrastive_loss`
    and `textual_intra_modal_loss` (region_*, box_mask) and `hard_negative_block_loss` (hard_*,
    ranking_threshold); `mesh`/`axis_names` apply to the region terms, `max_logit_scale` to the
    region and hard temperatures. Chinese batches (no boxes) pass all-False masks and
    `long_text_embeds=None`: the region terms are 0 and the threshold stays (clipped) as it is.
    Metrics: every term's `loss/<term>` (unweighted; `loss/hard_block` is the weighted block),
    `ranking_threshold`, `next_ranking_threshold` (carry it to the next step) and the temperatures.
    """
    shards = {"mesh": mesh, "axis_names": axis_names}
    global_loss, metrics = long_short_sigmoid_loss(image_embeds, long_text_embeds, short_text_embeds, logit_scale,
                                                   logit_bias, long_weight=long_weight, short_weight=short_weight)
    region, region_metrics = region_text_contrastive_loss(region_embeds, region_text_embeds, box_mask,
                                                          region_logit_scale, max_logit_scale=max_logit_scale,
                                                          **shards)
    tic, tic_metrics = textual_intra_modal_loss(region_text_embeds, box_mask, duplicate_threshold=duplicate_threshold,
                                                num_negatives=tic_num_negatives, **shards)
    block, hard_metrics = hard_negative_block_loss(
        hard_region_embeds, hard_candidate_embeds, hard_box_mask, hard_logit_scale, ranking_threshold,
        negative_mask=hard_negative_mask, itc_weight=hard_itc_weight, pair_weight=hard_pair_weight,
        rank_weight=hard_rank_weight, max_ranking_threshold=max_ranking_threshold,
        max_logit_scale=max_logit_scale, **shards)
    loss = global_loss + region_weight * region + tic_weight * tic + hard_weight * block
    return loss, {**metrics, **region_metrics, **tic_metrics, **hard_metrics}
