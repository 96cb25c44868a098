"""DeGLA (Hu et al. 2025, "Decoupled Global-Local Alignment for Improving Compositional
Understanding"): CLIP fine-tuned with a NegCLIP-style global loss over LLM-made hard negatives, the
local Image- and Text-Grounded Contrast losses, and self-distillation to an EMA teacher.

The teacher is the run's EMA (`train.ema_decay`, 0.9996 in the released recipe), initialised from the
starting weights (`model.init_from`) and updated after every optimizer step, so at step t it is the
EMA before this step's update (reference `train.py` L143-144). It lives in the train state
(`extras["ema_params"]`): checkpoints keep it and a resume is exact; `vlalign export` writes the
student alone. Losses and their reference lines: `losses/degla.py`. Weights and the TGC variant come
from `config.degla`; with `distill_weight = tgc_weight = 0` no teacher is run (NegCLIP when
`igc_weight = 0` too).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from vlalign_jax.data.image_text import image_text_data
from vlalign_jax.losses.degla import TGC_VARIANTS, degla_loss
from vlalign_jax.methods.clip import DTYPES, MAX_LOGIT_SCALE, model_config
from vlalign_jax.methods.image_text_evals import image_text_evaluators
from vlalign_jax.methods.method import Method
from vlalign_jax.models.clip import CLIP


def _weights(config: ml_collections.ConfigDict) -> dict:
    d = config.degla
    if d.tgc_variant not in TGC_VARIANTS:
        raise ValueError(f"degla.tgc_variant must be one of {TGC_VARIANTS}, got {d.tgc_variant!r}")
    return dict(global_weight=d.global_weight, distill_weight=d.distill_weight, igc_weight=d.igc_weight,
                tgc_weight=d.tgc_weight, tgc_scale=d.tgc_scale, tgc_variant=d.tgc_variant)


def make(config: ml_collections.ConfigDict) -> Method:
    weights = _weights(config)
    uses_teacher = weights["distill_weight"] > 0 or weights["tgc_weight"] > 0
    if uses_teacher and not config.train.get("ema_decay", 0.0):
        raise ValueError("DeGLA's distillation and TGC terms need the EMA teacher: set train.ema_decay "
                         "(0.9996 in the released recipe), or set degla.distill_weight = degla.tgc_weight = 0")
    num_negatives = config.degla.num_negatives
    mc = model_config(config)
    data = image_text_data(config.data, mc.vision.image_size, mc.text.context_length, num_negatives)
    mc = dataclasses.replace(mc, text=dataclasses.replace(mc.text, vocab_size=data.vocab_size))
    model = CLIP(mc, dtype=DTYPES[config.model.get("dtype", "float32")], remat=config.model.get("remat", "none"))

    def init_variables(rng):
        pixels = jnp.zeros((1, mc.vision.image_size, mc.vision.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, mc.text.context_length), jnp.int32)
        return model.init(rng, pixels, tokens)

    def forward(params, batch):
        """Normalised image [b, D], caption [b, D] and negative [b, K, D] embeddings."""
        tokens = jnp.concatenate([batch["tokens"][:, None], batch["negative_tokens"]], axis=1)  # [b, 1+K, L]
        b, captions, length = tokens.shape
        image, text, _ = model.apply({"params": params}, batch["pixels"], tokens.reshape(b * captions, length))
        text = text.reshape(b, captions, -1)
        return image, text[:, 0], text[:, 1:]

    def embed(params, extras, batch, rng):
        image, text, negatives = forward(params, batch)
        if uses_teacher:
            teacher = jax.lax.stop_gradient(forward(extras["ema_params"], batch))
        else:  # unused (weights 0): the student's own embeddings, without gradient
            teacher = jax.lax.stop_gradient((image, text, negatives))
        return {"image": image, "text": text, "negatives": negatives,
                "teacher_image": teacher[0], "teacher_text": teacher[1], "teacher_negatives": teacher[2]}

    def loss(params, extras, features, rng):
        return degla_loss(features["image"], features["text"], features["negatives"], features["teacher_image"],
                          features["teacher_text"], features["teacher_negatives"], params["logit_scale"],
                          **weights)

    def constrain_params(params):
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}

    return Method(name="degla", model=model, batch_fields=("pixels", "tokens", "negative_tokens"),
                  init_variables=init_variables, embed=embed, loss=loss,
                  train_data=lambda: (data.train, data.train_preprocess), constrain_params=constrain_params,
                  evaluators=image_text_evaluators(model, data, config))
