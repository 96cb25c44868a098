"""FG-CLIP 2 (Xie et al. 2025, arXiv 2510.10921), stage 2: SigLIP 2 NaFlex with long and short captions
under the sigmoid loss, region-text contrast on each image's own patch grid, textual intra-modal
contrast between box descriptions, and the hard-negative block with the dynamic-margin ranking loss
(research/fgclip.md sections 2 and 3.4-3.7).

The model is FG-CLIP 2 (`models/fgclip2.py`) on the SigLIP 2 architecture `config.model.name`
(`models/siglip_configs.py`) with `config.model.overrides`. `model.init_from` may be a SigLIP 2
checkpoint (the long tables, box/long text heads and dense head are then grown from it, as the
reference's `--from_siglip2`) or an FG-CLIP 2 one.

The ranking threshold is method state (`extras["ranking_threshold"]`, 0 at the start, as the
reference's `:85`): each step's loss returns the next one, the mean over devices of each device's
mean positive minus mean negative hard logit, clipped to [0, 10], and `update_extras` stores it, so
it is checkpointed and the same on every device. Images are NaFlex patches at one fixed bucket,
`data.max_num_patches` (the reference picks a bucket per batch; here that would compile one step per
bucket).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from vlalign_jax.data.region_text import region_text_data
from vlalign_jax.losses.fgclip import fgclip2_loss
from vlalign_jax.methods.clip import DTYPES, MAX_LOGIT_SCALE
from vlalign_jax.methods.method import Method
from vlalign_jax.methods.region_evals import region_evaluators
from vlalign_jax.models.config_overrides import with_overrides
from vlalign_jax.models.fgclip2 import FGCLIP2, Fgclip2Config, fgclip2_config_from_siglip, fgclip2_params_from_siglip
from vlalign_jax.models.siglip_configs import get_siglip_config
from vlalign_jax.ops.region_pooling import masked_l2_normalize, pool_token_regions
from vlalign_jax.parallel.rules import BATCH_AXES

FINE_GRAINED_SCALES = ("logit_scale_fine_grained", "logit_scale_hard_negative")
FIELDS = ("pixel_values", "pixel_attention_mask", "spatial_shapes", "short_tokens", "long_tokens",
          "region_tokens", "negative_tokens", "negative_mask", "boxes", "box_mask")


def _normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> Fgclip2Config:
    """The named SigLIP 2 architecture with `config.model.overrides`, grown to FG-CLIP 2 (long tables
    of 4L - 3 * keep_len rows); `vocab_size` replaces the text vocabulary (the tokenizer's)."""
    siglip = with_overrides(get_siglip_config(config.model.name), config.model.get("overrides", {}))
    if vocab_size is not None:
        siglip = dataclasses.replace(siglip, text=dataclasses.replace(siglip.text, vocab_size=vocab_size))
    return fgclip2_config_from_siglip(siglip)


def _init_grid(max_num_patches: int) -> tuple[int, int]:
    """A patch grid (rows, cols) that fits the bucket, for tracing `init`."""
    side = math.isqrt(max_num_patches)
    return side, max_num_patches // side


def make(config: ml_collections.ConfigDict) -> Method:
    probe = model_config(config)
    max_num_patches = config.data.max_num_patches
    data = region_text_data(config.data, "naflex", 0, probe.vision.patch_size, max_num_patches,
                            probe.text.context_length, probe.long_context_length)
    mc = model_config(config, data.vocab_size)
    model = FGCLIP2(mc, dtype=DTYPES[config.model.get("dtype", "float32")], remat=config.model.get("remat", "none"))
    w = config.fgclip2
    released_scales = not w.get("clamp_logit_scales", True)
    max_grid = w.get("max_grid") or None  # static bound on each image's patch grid (None: max_num_patches)

    def init_variables(rng):
        grid = jnp.asarray([_init_grid(max_num_patches)], jnp.int32)
        return model.init(rng, jnp.zeros((1, max_num_patches, mc.vision.patch_dim), jnp.float32),
                          jnp.ones((1, max_num_patches), jnp.int32), grid,
                          jnp.zeros((1, mc.text.context_length), jnp.int32),
                          jnp.zeros((1, mc.long_context_length), jnp.int32))

    def embed(params, extras, batch, rng):
        apply = lambda *args, **kw: model.apply({"params": params}, *args, **kw)  # noqa: E731
        spatial_shapes = batch["spatial_shapes"]
        image, dense = apply(batch["pixel_values"], batch["pixel_attention_mask"], spatial_shapes,
                             method="get_image_features_and_dense")
        b, m, k, length = batch["negative_tokens"].shape
        # Box descriptions and their negatives in one pass on the box walk (boxtext_head).
        box_texts = jnp.concatenate([batch["region_tokens"].reshape(b * m, length),
                                     batch["negative_tokens"].reshape(b * m * k, length)])
        boxes_text, negatives = jnp.split(_normalize(apply(box_texts, "box", method="get_text_features")), [b * m])
        box_mask = batch["box_mask"]
        region_text = masked_l2_normalize(boxes_text.reshape(b, m, -1), box_mask)
        candidates = jnp.concatenate([region_text[:, :, None], negatives.reshape(b, m, k, -1)], axis=2)
        return {"image": _normalize(image),
                "short": _normalize(apply(batch["short_tokens"], "short", method="get_text_features")),
                "long": _normalize(apply(batch["long_tokens"], "long", method="get_text_features")),
                "regions": pool_token_regions(dense, spatial_shapes, batch["boxes"], box_mask, max_grid),
                "region_text": region_text, "candidates": candidates, "box_mask": box_mask,
                "negative_mask": batch["negative_mask"]}

    def loss(params, extras, features, rng):
        negative_mask = features["negative_mask"] & features["box_mask"][..., None]
        return fgclip2_loss(
            features["image"], features["long"], features["short"], features["regions"], features["region_text"],
            features["box_mask"], features["regions"], features["candidates"], negative_mask.any(-1),
            params["logit_scale"], params["logit_bias"], params["logit_scale_fine_grained"],
            params["logit_scale_hard_negative"], extras["ranking_threshold"], hard_negative_mask=negative_mask,
            long_weight=w.long_weight, short_weight=w.short_weight, region_weight=w.region_weight,
            tic_weight=w.tic_weight, hard_weight=w.hard_weight, hard_itc_weight=w.hard_itc_weight,
            hard_pair_weight=w.hard_pair_weight, hard_rank_weight=w.hard_rank_weight,
            duplicate_threshold=w.duplicate_threshold, tic_num_negatives=w.tic_num_negatives,
            max_ranking_threshold=w.max_ranking_threshold, mesh=jax.sharding.get_abstract_mesh(),
            axis_names=BATCH_AXES, max_logit_scale=None if released_scales else MAX_LOGIT_SCALE)

    def init_extras(params):
        return {"ranking_threshold": jnp.zeros((), jnp.float32)}

    def update_extras(extras, params, step, metrics):
        return {**extras, "ranking_threshold": metrics["next_ranking_threshold"]}

    def constrain_params(params):
        if released_scales:
            return params
        return {**params, **{name: jnp.clip(params[name], 0.0, MAX_LOGIT_SCALE) for name in FINE_GRAINED_SCALES}}

    def adapt_initial_params(params: dict) -> dict:
        if "position_embedding_ori" in params.get("text_model", {}):
            return params
        return fgclip2_params_from_siglip(params, mc.keep_len)  # grown from SigLIP 2, as --from_siglip2

    return Method(name="fgclip2", model=model, batch_fields=FIELDS, init_variables=init_variables, embed=embed,
                  loss=loss, train_data=lambda: (data.train, data.train_preprocess), init_extras=init_extras,
                  update_extras=update_extras, constrain_params=constrain_params,
                  evaluators=region_evaluators(model, data, config, embed),
                  adapt_initial_params=adapt_initial_params)
