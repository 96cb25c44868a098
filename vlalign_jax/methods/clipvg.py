"""CLIP-VG (Xiao et al. 2023, "CLIP-VG: Self-paced Curriculum Adapting of CLIP for Visual Grounding"):
a frozen CLIP with a trainable fusion encoder and box head, trained with L1 + GIoU on one box per
referring expression (research/clipvg.md sections 1-3, 5).

The model is `models/grounding.CLIPVG` named by `config.model.name` (`GROUNDING_CONFIGS`), with
`config.model.overrides` ({"clip": {"vision": {...}, "text": {...}}, "hidden_dim": ..., ...}).
`model.init_from` is usually a CLIP checkpoint (any converter family, or a CLIP run's workdir): its
weights fill `clip/`, the rest starts as the reference initialises it; a CLIP-VG checkpoint loads
whole. What trains is set by `config.optim.freeze` (`models.grounding.FREEZE`: all of CLIP except the
visual position embedding, as released). Fully supervised and unsupervised (pseudo-label) training
differ only in the split read (`data.train_split` `train` or `train_pseudo`).

Held-out evaluation: Acc@0.5 on every `data.eval_splits` split (IoU of the predicted box, clamped to
the canvas, with the target >= 0.5, in the padded-canvas frame as the reference computes it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlalign_jax.data.grounding import GroundingData, grounding_data
from vlalign_jax.data.pipeline import iter_eval_batches
from vlalign_jax.eval.grounding import box_predictor, predict
from vlalign_jax.losses.grounding import grounding_box_loss
from vlalign_jax.methods.clip import DTYPES
from vlalign_jax.methods.method import Method
from vlalign_jax.models.config_overrides import with_overrides
from vlalign_jax.models.grounding import CLIPVG, GROUNDING_CONFIGS, GroundingConfig

FIELDS = ("pixels", "pad_mask", "tokens", "box")


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> GroundingConfig:
    """The named architecture with `config.model.overrides`; `vocab_size` replaces the text vocabulary."""
    name = config.model.name
    if name not in GROUNDING_CONFIGS:
        raise KeyError(f"unknown grounding model {name!r}; known: {sorted(GROUNDING_CONFIGS)}")
    mc = with_overrides(GROUNDING_CONFIGS[name], config.model.get("overrides", {}))
    if vocab_size is not None:
        text = dataclasses.replace(mc.clip.text, vocab_size=vocab_size)
        mc = dataclasses.replace(mc, clip=dataclasses.replace(mc.clip, text=text))
    return mc


def grounding_evaluators(model: nn.Module, data: GroundingData, config: ml_collections.ConfigDict
                         ) -> dict[str, Callable[[Any, dict], dict]]:
    """{"grounding": fn(params, extras) -> {"<split>/acc@0.5", "<split>/miou"}} over `data.evaluation`."""
    if not data.evaluation:
        return {}
    predictor = box_predictor(model)
    batch_size, limit = config.eval.batch_size, config.eval.get("num_heldout") or None

    def batches(split: str):  # streamed: a whole split at 224 px would take gigabytes
        return iter_eval_batches(data.evaluation[split], data.eval_preprocess, batch_size, limit,
                                 config.data.get("num_threads", 4))

    def grounding(params, extras) -> dict[str, float]:
        return {f"{split}/{name}": value for split in data.evaluation
                for name, value in predict(predictor, params, batches(split)).metrics().items()}

    return {"grounding": grounding}


def make(config: ml_collections.ConfigDict) -> Method:
    probe = model_config(config)
    data = grounding_data(config.data, probe.clip.vision.image_size, probe.clip.text.context_length)
    mc = model_config(config, data.vocab_size)
    model = CLIPVG(mc, dtype=DTYPES[config.model.get("dtype", "float32")], remat=config.model.get("remat", "none"))
    size, length = mc.clip.vision.image_size, mc.clip.text.context_length

    def init_variables(rng):
        return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, length), jnp.int32),
                          jnp.zeros((1, size, size), bool))

    def embed(params, extras, batch, rng):
        boxes = model.apply({"params": params}, batch["pixels"], batch["tokens"], batch["pad_mask"],
                            deterministic=False, rngs={"dropout": rng})
        return {"predicted": boxes, "target": batch["box"]}

    def loss(params, extras, features, rng):
        return grounding_box_loss(features["predicted"], features["target"])

    def adapt_initial_params(params: dict) -> dict:
        if "vl_transformer" in params:  # a CLIP-VG checkpoint or run
            return params
        # CLIP weights: they fill `clip/`; everything else is the reference's initialisation.
        fresh = nn.meta.unbox(jax.jit(init_variables)(jax.random.PRNGKey(config.train.seed))["params"])
        return {**jax.device_get(fresh), "clip": params}

    return Method(name="clipvg", model=model, batch_fields=FIELDS, init_variables=init_variables, embed=embed,
                  loss=loss, train_data=lambda: (data.train, data.train_preprocess),
                  evaluators=grounding_evaluators(model, data, config), adapt_initial_params=adapt_initial_params)
