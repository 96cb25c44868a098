"""`model.overrides` reach nested configs field by field and name an unknown field by its path."""

import dataclasses

import ml_collections
import pytest

from vlalign_jax.models.clip_configs import get_clip_config
from vlalign_jax.models.config_overrides import with_overrides
from vlalign_jax.models.grounding import GROUNDING_CONFIGS


def test_nested_overrides_change_only_the_named_fields():
    base = GROUNDING_CONFIGS["tiny"]
    overrides = ml_collections.ConfigDict({"clip": {"vision": {"patch_size": 8}, "embed_dim": 16},
                                           "feature_layers": [0, 1], "hidden_dim": 64})
    got = with_overrides(base, overrides)
    want = dataclasses.replace(
        base, feature_layers=(0, 1), hidden_dim=64,
        clip=dataclasses.replace(base.clip, embed_dim=16, vision=dataclasses.replace(base.clip.vision, patch_size=8)))
    assert got == want and isinstance(got.feature_layers, tuple)
    assert got.clip.text == base.clip.text


def test_an_unknown_field_is_named_by_its_path():
    with pytest.raises(KeyError, match=r"model\.overrides\.vision\.widht"):
        with_overrides(get_clip_config("tiny"), {"vision": {"widht": 64}})
