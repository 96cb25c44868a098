"""FG-CLIP (Xie et al. 2025, "FG-CLIP: Fine-Grained Visual and Textual Alignment"), stage 2: CLIP with
long and short captions, region-text contrast on RoIAlign-pooled dense features and per-box hard
negatives (research/fgclip.md sections 1 and 3.1-3.3).

The model is FG-CLIP 1 (`models/fgclip.py`); `model.init_from` may be a CLIP checkpoint (the
long-text tables are then grown from its 77 positions and `text_filip_projection` copied from
`text_projection`, as the reference's `--from_openai`) or an FG-CLIP one. Loss weights come from
`config.fgclip`. Region terms are computed per device over the batch axes of the mesh and averaged,
as the released multi-GPU training does (`losses/fgclip.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from vlalign_jax.data.region_text import region_text_data
from vlalign_jax.losses.fgclip import fgclip_loss
from vlalign_jax.methods.clip import DTYPES, MAX_LOGIT_SCALE, model_config
from vlalign_jax.methods.method import Method
from vlalign_jax.methods.region_evals import region_evaluators
from vlalign_jax.models.fgclip import FGCLIP, fgclip_config_from_clip, fgclip_params_from_clip
from vlalign_jax.ops.region_pooling import masked_l2_normalize, pool_regions
from vlalign_jax.parallel.rules import BATCH_AXES

SCALES = ("logit_scale", "logit_scale_fine_grained", "logit_scale_hard_negative")


def _normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def make(config: ml_collections.ConfigDict) -> Method:
    clip_config = model_config(config)
    probe = fgclip_config_from_clip(clip_config)
    data = region_text_data(config.data, "square", clip_config.vision.image_size, 0, 0,
                            clip_config.text.context_length, probe.long_context_length)
    text = dataclasses.replace(clip_config.text, vocab_size=data.vocab_size)
    mc = fgclip_config_from_clip(dataclasses.replace(clip_config, text=text))
    # Pool at the tokenizer's end token (49407 for CLIP's BPE; the synthetic word vocabulary's own).
    mc = dataclasses.replace(mc, text=dataclasses.replace(mc.text, eos_token_id=data.short_tokenizer.eot_token_id))
    model = FGCLIP(mc, dtype=DTYPES[config.model.get("dtype", "float32")], remat=config.model.get("remat", "none"))
    w = config.fgclip
    released_scales = not w.get("clamp_logit_scales", True)

    def init_variables(rng):
        size = mc.vision.image_size
        return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32),
                          jnp.zeros((1, mc.text.context_length), jnp.int32),
                          jnp.zeros((1, mc.long_context_length), jnp.int32))

    def embed(params, extras, batch, rng):
        apply = lambda *args, **kw: model.apply({"params": params}, *args, **kw)  # noqa: E731
        image, dense_map = apply(batch["pixels"], method="encode_image_and_dense")
        b, m, k, length = batch["negative_tokens"].shape
        # Every short text in one pass: captions, box descriptions, then each box's negatives.
        texts = jnp.concatenate([batch["short_tokens"], batch["region_tokens"].reshape(b * m, length),
                                 batch["negative_tokens"].reshape(b * m * k, length)])
        short = _normalize(apply(texts, "short", method="encode_text"))
        captions, boxes, negatives = jnp.split(short, [b, b + b * m])
        box_mask = batch["box_mask"]
        region_text = masked_l2_normalize(boxes.reshape(b, m, -1), box_mask)
        candidates = jnp.concatenate([region_text[:, :, None], negatives.reshape(b, m, k, -1)], axis=2)
        return {"image": _normalize(image), "short": captions,
                "long": _normalize(apply(batch["long_tokens"], "long", method="encode_text")),
                "regions": pool_regions(dense_map, batch["boxes"], box_mask), "region_text": region_text,
                "candidates": candidates, "box_mask": box_mask, "negative_mask": batch["negative_mask"]}

    def loss(params, extras, features, rng):
        negative_mask = features["negative_mask"] & features["box_mask"][..., None]
        return fgclip_loss(
            features["image"], features["long"], features["short"], features["regions"], features["region_text"],
            features["box_mask"], features["regions"], features["candidates"], negative_mask.any(-1),
            params["logit_scale"], params["logit_scale_fine_grained"], params["logit_scale_hard_negative"],
            hard_negative_mask=negative_mask, long_weight=w.long_weight, short_weight=w.short_weight,
            region_weight=w.region_weight, hard_negative_weight=w.hard_negative_weight,
            mesh=jax.sharding.get_abstract_mesh(), axis_names=BATCH_AXES,
            max_logit_scale=None if released_scales else MAX_LOGIT_SCALE)

    def constrain_params(params):
        if released_scales:
            return params
        return {**params, **{name: jnp.clip(params[name], 0.0, MAX_LOGIT_SCALE) for name in SCALES}}

    def adapt_initial_params(params: dict) -> dict:
        if "position_embedding_ori" in params.get("text_model", {}):
            return params
        return fgclip_params_from_clip(params)  # grown from CLIP, as the reference's --from_openai

    fields = ("pixels", "short_tokens", "long_tokens", "region_tokens", "negative_tokens", "negative_mask",
              "boxes", "box_mask")
    return Method(name="fgclip", model=model, batch_fields=fields, init_variables=init_variables, embed=embed,
                  loss=loss, train_data=lambda: (data.train, data.train_preprocess),
                  constrain_params=constrain_params, evaluators=region_evaluators(model, data, config, embed),
                  adapt_initial_params=adapt_initial_params)
