"""CLIP (Radford et al. 2021): image-text contrastive training of the dual encoder.

`config.model.name` picks an architecture from `models/clip_configs.py`; `config.model.overrides`
changes any of its fields (the text vocabulary always follows the tokenizer). `config.loss` is
`softmax` (InfoNCE), `sigmoid` (SigLIP, dense over the global batch) or `sigmoid_chunked` (the same
loss computed as a ring over the mesh's batch axes, O(b^2) memory per device); both sigmoid losses
add a learned logit bias to the model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from vlalign_jax.data.image_text import image_text_data
from vlalign_jax.losses.contrastive import (chunked_sigmoid_contrastive_loss, sigmoid_contrastive_loss,
                                            softmax_contrastive_loss)
from vlalign_jax.methods.image_text_evals import image_text_evaluators
from vlalign_jax.methods.method import Method
from vlalign_jax.models.clip import CLIP, ClipConfig
from vlalign_jax.models.clip_configs import get_clip_config
from vlalign_jax.models.config_overrides import with_overrides
from vlalign_jax.parallel.rules import BATCH_AXES

MAX_LOGIT_SCALE = math.log(100.0)  # OpenAI clamps the temperature at 100
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LOSSES = ("softmax", "sigmoid", "sigmoid_chunked")


def model_config(config: ml_collections.ConfigDict) -> ClipConfig:
    """The named architecture with `config.model.overrides` applied (`vision.width`, `act`, ...)."""
    return with_overrides(get_clip_config(config.model.name), config.model.get("overrides", {}))


def make(config: ml_collections.ConfigDict) -> Method:
    loss_name = config.get("loss", "softmax")
    if loss_name not in LOSSES:
        raise ValueError(f"config.loss must be one of {LOSSES}, got {loss_name!r}")
    mc = model_config(config)
    data = image_text_data(config.data, mc.vision.image_size, mc.text.context_length)
    # The text tower's vocabulary is the tokenizer's (the synthetic word vocabulary is tiny).
    mc = dataclasses.replace(mc, text=dataclasses.replace(mc.text, vocab_size=data.vocab_size))
    if loss_name != "softmax" and mc.logit_bias_init is None:
        # SigLIP's initialisation: temperature 10, bias -10 (Zhai et al. 2023, section 3.2).
        mc = dataclasses.replace(mc, logit_scale_init=math.log(10.0), logit_bias_init=-10.0)
    model = CLIP(mc, dtype=DTYPES[config.model.get("dtype", "float32")], remat=config.model.get("remat", "none"))

    def init_variables(rng):
        pixels = jnp.zeros((1, mc.vision.image_size, mc.vision.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, mc.text.context_length), jnp.int32)
        return model.init(rng, pixels, tokens)

    def embed(params, extras, batch, rng):
        image, text, _ = model.apply({"params": params}, batch["pixels"], batch["tokens"])
        return {"image": image, "text": text}

    def loss(params, extras, features, rng):
        if loss_name == "softmax":
            return softmax_contrastive_loss(features["image"], features["text"], params["logit_scale"])
        if loss_name == "sigmoid":
            return sigmoid_contrastive_loss(features["image"], features["text"], params["logit_scale"],
                                            params["logit_bias"])
        # The ring runs over the batch axes of the mesh the step is traced under (Run.context()).
        return chunked_sigmoid_contrastive_loss(features["image"], features["text"], params["logit_scale"],
                                                params["logit_bias"], jax.sharding.get_abstract_mesh(),
                                                BATCH_AXES)

    def constrain_params(params):
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}

    return Method(name="clip", model=model, batch_fields=("pixels", "tokens"), init_variables=init_variables,
                  embed=embed, loss=loss, train_data=lambda: (data.train, data.train_preprocess),
                  constrain_params=constrain_params, evaluators=image_text_evaluators(model, data, config))
