"""DeGLA's training losses (Hu et al. 2025, "Decoupled Global-Local Alignment", arXiv 2504.16801).

Four terms, each a pure function, and `degla_loss`, their weighted sum:

- `negclip_loss`: global image-text contrast whose image->text side also sees every hard negative.
- `self_distillation_loss`: squared L2 between student and EMA-teacher embeddings.
- `image_grounded_contrast` (IGC): each image against its positive and its own K negatives.
- `text_grounded_contrast` (TGC): each positive caption pulled to the teacher's embedding of it and
  pushed from negative captions. Two variants, the paper's and the released code's (which differ).

Reference: github.com/xiaoxing2001/DeGLA at 1c5e960, `src/open_clip/loss.py` (class `CLIPloss_DeGLA`,
L71-175; gather L176-229) and `src/training/train.py` L112-123. Notes: /work/shared/research/degla.md 1.1-1.6.

Layout (degla.md 1.1). B images, each with one positive caption and K hard-negative captions:
image_embeds [B, D], text_embeds [B, D] (row i is image i's positive), negative_embeds [B, K, D]
(negative k of image i). The reference flattens negatives image-major (row i*K + k, train.py L115) and
puts them after all positives (train.py L116, loss.py L227); `_flat_negatives` does the same.

Every embedding must already be L2-normalised (the model normalises, as for `contrastive.py`; the
reference normalises in the model too, model.py L239-241). Inputs are cast to fp32; logits,
log-softmax and reductions run in fp32. `logit_scale` is the learned *log* inverse temperature, used
as `exp(min(logit_scale, ln 100))` exactly as `contrastive.softmax_contrastive_loss` does (the
reference clamps the parameter to [0, ln 100] after each step, train.py L153-154).

Cross-device behaviour: no axis argument. Every function is the loss of the arrays it is given, so
pass the *global* batch (under `jax.jit` with batch-sharded inputs XLA gathers what it needs); this
is what the reference computes on each rank after its all-gather (loss.py L104-113). The released
TGC variant in particular depends on the global batch size (see `text_grounded_contrast`). The
reference's DDP then averages gradients over W ranks, i.e. its parameter gradient is (1/W) times the
gradient of these losses (degla.md 1.6); scale outside the loss if bit-level parity matters.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from vlalign_jax.losses.contrastive import MAX_LOGIT_SCALE

TGC_VARIANTS = ("paper", "released_code")
Metrics = dict[str, jax.Array]


def _learned_scale(logit_scale: jax.Array | float) -> jax.Array:
    """exp(min(logit_scale, ln 100)) as an fp32 0-d array (the parameter may be `()` or `(1,)`)."""
    return jnp.exp(jnp.minimum(jnp.reshape(jnp.asarray(logit_scale, jnp.float32), ()), MAX_LOGIT_SCALE))


def _check_layout(anchors: jax.Array, positives: jax.Array, negatives: jax.Array) -> None:
    if anchors.ndim != 2 or positives.shape != anchors.shape:
        raise ValueError(f"expected two [batch, dim] arrays, got {anchors.shape} and {positives.shape}")
    if negatives.ndim != 3 or negatives.shape[::2] != anchors.shape:
        raise ValueError(f"negatives must be [batch, num_negatives, dim] = [{anchors.shape[0]}, K, "
                         f"{anchors.shape[1]}], got {negatives.shape}")


def _flat_negatives(negative_embeds: jax.Array) -> jax.Array:
    """[B, K, D] -> [B*K, D], image-major: row i*K + k is negative k of image i (train.py L115)."""
    batch, num_negatives, dim = negative_embeds.shape
    return negative_embeds.reshape(batch * num_negatives, dim)


def _all_captions(text_embeds: jax.Array, negative_embeds: jax.Array) -> jax.Array:
    """[B, D] positives and [B, K, D] negatives -> [B, 1 + K, D], every caption of each image."""
    return jnp.concatenate([text_embeds[:, None], negative_embeds.astype(text_embeds.dtype)], axis=1)


def _cross_entropy_first(logits: jax.Array) -> jax.Array:
    """Mean over rows of -log_softmax(logits)[:, 0]: the positive is column 0. logits: [rows, 1 + K]."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def negclip_loss(image_embeds: jax.Array, text_embeds: jax.Array, negative_embeds: jax.Array,
                 logit_scale: jax.Array) -> tuple[jax.Array, Metrics]:
    """NegCLIP-style global contrast with hard negatives (degla.md 1.2; loss.py L114-115, L125-138).

    image_embeds [B, D], text_embeds [B, D], negative_embeds [B, K, D] (all L2-normalised),
    logit_scale: log inverse temperature, s = exp(min(logit_scale, ln 100)). With the caption matrix
    T = concat([text_embeds, negatives flattened image-major]) of shape [B + B*K, D]:

        i2t = CE(s * image @ T.T, arange(B))           # [B, B + B*K]: every caption in the batch
        t2i = CE(s * text @ image.T, arange(B))        # [B, B]: positives only; negatives never query
        loss = (i2t + t2i) / 2                         # CE = mean over rows

    Metrics: `loss/negclip`, `logit_scale` (s), `accuracy/i2t` (over all B + B*K captions),
    `accuracy/t2i`.
    """
    _check_layout(image_embeds, text_embeds, negative_embeds)
    image = image_embeds.astype(jnp.float32)
    text = text_embeds.astype(jnp.float32)
    captions = jnp.concatenate([text, _flat_negatives(negative_embeds.astype(jnp.float32))])  # [B + B*K, D]
    scale = _learned_scale(logit_scale)
    batch = image.shape[0]
    labels = jnp.arange(batch)
    logits_i2t = scale * image @ captions.T  # [B, B + B*K]
    logits_t2i = scale * text @ image.T  # [B, B]
    i2t = jnp.mean(jax.nn.logsumexp(logits_i2t, axis=1) - jnp.diagonal(logits_i2t[:, :batch]))
    t2i = jnp.mean(jax.nn.logsumexp(logits_t2i, axis=1) - jnp.diagonal(logits_t2i))
    loss = 0.5 * (i2t + t2i)
    metrics = {
        "loss/negclip": loss,
        "logit_scale": scale,
        "accuracy/i2t": jnp.mean(jnp.argmax(logits_i2t, axis=1) == labels),
        "accuracy/t2i": jnp.mean(jnp.argmax(logits_t2i, axis=1) == labels),
    }
    return loss, metrics


def self_distillation_loss(student_image: jax.Array, teacher_image: jax.Array, student_text: jax.Array,
                           teacher_text: jax.Array) -> tuple[jax.Array, Metrics]:
    """Squared-L2 self-distillation to the EMA teacher (degla.md 1.3; loss.py L173-175).

    student_image, teacher_image: [B, D]; student_text, teacher_text: [..., D] holding *every* caption,
    positives and negatives (e.g. [B, 1 + K, D] or [B + B*K, D]; the layout does not matter as long as
    student and teacher agree). All L2-normalised. The reference's reduction is `reduction='sum'`:

        loss = sum((student_image - teacher_image)**2) + sum((student_text - teacher_text)**2)

    a sum over all B * (2 + K) vectors and all D dims, not a mean (so the term grows with the global
    batch; for unit vectors each vector contributes 2 * (1 - cos)). The teacher is under
    `stop_gradient`: its gradients are zero. Metrics: `loss/distill`, and the two sums as
    `distill/image` and `distill/text`.
    """
    if student_image.shape != teacher_image.shape or student_text.shape != teacher_text.shape:
        raise ValueError(f"student and teacher shapes differ: {student_image.shape} vs {teacher_image.shape}, "
                         f"{student_text.shape} vs {teacher_text.shape}")
    teacher_image = jax.lax.stop_gradient(teacher_image.astype(jnp.float32))
    teacher_text = jax.lax.stop_gradient(teacher_text.astype(jnp.float32))
    image_term = jnp.sum(jnp.square(student_image.astype(jnp.float32) - teacher_image))
    text_term = jnp.sum(jnp.square(student_text.astype(jnp.float32) - teacher_text))
    loss = image_term + text_term
    return loss, {"loss/distill": loss, "distill/image": image_term, "distill/text": text_term}


def image_grounded_contrast(image_embeds: jax.Array, text_embeds: jax.Array, negative_embeds: jax.Array,
                            logit_scale: jax.Array) -> tuple[jax.Array, Metrics]:
    """Image-Grounded Contrast, IGC (degla.md 1.4; loss.py L161-172, `get_image_local_loss`).

    image_embeds [B, D], text_embeds [B, D], negative_embeds [B, K, D] (L2-normalised); s as in
    `negclip_loss` (the learned scale). For each image a (1 + K)-way softmax over its own positive
    and its own K negatives, label 0:

        logits[i] = s * [<v_i, t_i>, <v_i, n_i1>, ..., <v_i, n_iK>]      # [B, 1 + K]
        loss = mean_i (logsumexp(logits[i]) - logits[i, 0])

    The reference computes the full [B, B + B*K] matrix and adds a -inf mask that is 0 on the diagonal
    of the positive block and, via `repeat_interleave(K, dim=1)`, on columns B + i*K .. B + i*K + K - 1
    of row i, i.e. exactly image i's own negatives; the value and gradients are the same.
    Metrics: `loss/igc`, `accuracy/igc` (positive scored above all own negatives).
    """
    _check_layout(image_embeds, text_embeds, negative_embeds)
    image = image_embeds.astype(jnp.float32)
    positive = jnp.sum(image * text_embeds.astype(jnp.float32), axis=-1)  # [B]
    negative = jnp.einsum("bd,bkd->bk", image, negative_embeds.astype(jnp.float32))  # [B, K]
    logits = _learned_scale(logit_scale) * jnp.concatenate([positive[:, None], negative], axis=1)
    loss = _cross_entropy_first(logits)
    return loss, {"loss/igc": loss, "accuracy/igc": jnp.mean(jnp.argmax(logits, axis=1) == 0)}


def text_grounded_contrast(student_text: jax.Array, teacher_text: jax.Array, student_negatives: jax.Array,
                           scale: jax.Array | float = 10.0,
                           variant: Literal["paper", "released_code"] = "paper") -> tuple[jax.Array, Metrics]:
    """Text-Grounded Contrast, TGC (degla.md 1.5; loss.py L146-160, `get_text_local_loss`).

    student_text [B, D] (the student's positive captions, the anchors), teacher_text [B, D] (the EMA
    teacher's embedding of the same captions; `stop_gradient`, zero gradient), student_negatives
    [B, K, D] (the student's negative captions, image-major; they receive gradients). All
    L2-normalised, B the global batch. `scale` is a fixed multiplier, *not* a log: the reference
    hard-codes 10.0 (L147, tau = 0.1) and ignores the learned scale. Per anchor a (1 + K)-way softmax,
    positive = the teacher's embedding (label 0):

        logits[i] = scale * [<t_i, t*_i>, <t_i, m_i1>, ..., <t_i, m_iK>]      # [B, 1 + K]
        loss = mean_i (logsumexp(logits[i]) - logits[i, 0])

    where the K "negatives" m_i depend on `variant`:

    - "paper": m_ik = student_negatives[i, k], the anchor's own K negatives, as the paper's framework
      figure draws it (t_i repelled from its own negatives) and as the authors' older
      `ClipLoss_my_com_clip` built the mask (`repeat_interleave`, research commit 4e66c08).
    - "released_code": the released mask (L154-157) is `cat([M, M.repeat(1, K)], 1)` with M the
      [B, B] matrix of -inf and a zero diagonal. `repeat(1, K)` *tiles* M along the columns, so row i
      of the negative block is unmasked at flat negative rows i + m*B, m = 0..K-1. With the image-major
      flattening (row j = negative j % K of image j // K) those are negative (i + m*B) % K of image
      (i + m*B) // K: with B > K mostly other images' negatives, and the anchor's own only by
      coincidence. Equivalently, m_i = flat.reshape(K, B, D)[:, i]: the B*K flat rows read as K blocks
      of B rows, row i of each block. Use this variant to reproduce the released weights; note it
      needs B to be the global batch the reference gathered (8 x 32 = 256 in its script).

    Both variants coincide when K == 1 or B == 1. Metrics: `loss/tgc`, `accuracy/tgc`.
    """
    _check_layout(student_text, teacher_text, student_negatives)
    text = student_text.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher_text.astype(jnp.float32))
    negatives = student_negatives.astype(jnp.float32)
    if variant == "released_code":
        batch, num_negatives, dim = negatives.shape
        # negatives[i, m] = flat[m * B + i]: the columns the tiled mask leaves open in row i
        negatives = _flat_negatives(negatives).reshape(num_negatives, batch, dim).transpose(1, 0, 2)
    elif variant != "paper":
        raise ValueError(f"variant must be one of {TGC_VARIANTS}, got {variant!r}")
    positive = jnp.sum(text * teacher, axis=-1)  # [B]
    negative = jnp.einsum("bd,bkd->bk", text, negatives)  # [B, K]
    logits = jnp.asarray(scale, jnp.float32) * jnp.concatenate([positive[:, None], negative], axis=1)
    loss = _cross_entropy_first(logits)
    return loss, {"loss/tgc": loss, "accuracy/tgc": jnp.mean(jnp.argmax(logits, axis=1) == 0)}


def degla_loss(image_embeds: jax.Array, text_embeds: jax.Array, negative_embeds: jax.Array,
               teacher_image_embeds: jax.Array, teacher_text_embeds: jax.Array,
               teacher_negative_embeds: jax.Array, logit_scale: jax.Array, *,
               global_weight: float = 1.0, distill_weight: float = 0.005, igc_weight: float = 0.1,
               tgc_weight: float = 0.1, tgc_scale: float = 10.0,
               tgc_variant: Literal["paper", "released_code"] = "paper") -> tuple[jax.Array, Metrics]:
    """DeGLA's total loss (degla.md 1.6; loss.py L135-145):

        loss = global_weight * negclip + distill_weight * distill + igc_weight * igc + tgc_weight * tgc

    Student image_embeds [B, D], text_embeds [B, D], negative_embeds [B, K, D]; the EMA teacher's
    embeddings of the same images and captions in the same shapes (the teacher sees the same batch,
    negatives included, train.py L121-122; it gets zero gradient). All L2-normalised, B global.
    Default weights are the released recipe's (`--distill_weight 0.005`, `--image_local_weight 0.1`,
    `--text_local_weight 0.1`). The distillation term covers the images and all 1 + K captions per
    image. Every term is always computed (the reference skips a term whose weight is 0; here its
    contribution is just 0). `tgc_variant` is passed to `text_grounded_contrast`: "released_code"
    reproduces the released training run, "paper" the method as described.

    Metrics: every term's metrics, including the unweighted terms `loss/negclip`, `loss/distill`,
    `loss/igc`, `loss/tgc` (the reference logs unweighted terms too, train.py L164-178).
    """
    negclip, negclip_metrics = negclip_loss(image_embeds, text_embeds, negative_embeds, logit_scale)
    distill, distill_metrics = self_distillation_loss(
        image_embeds, teacher_image_embeds, _all_captions(text_embeds, negative_embeds),
        _all_captions(teacher_text_embeds, teacher_negative_embeds))
    igc, igc_metrics = image_grounded_contrast(image_embeds, text_embeds, negative_embeds, logit_scale)
    tgc, tgc_metrics = text_grounded_contrast(text_embeds, teacher_text_embeds, negative_embeds,
                                              scale=tgc_scale, variant=tgc_variant)
    loss = global_weight * negclip + distill_weight * distill + igc_weight * igc + tgc_weight * tgc
    return loss, {**negclip_metrics, **distill_metrics, **igc_metrics, **tgc_metrics}
