"""Training methods. `config.method = "clip"` imports `vlalign_jax.methods.clip` and calls `make`."""

from __future__ import annotations

import importlib

from vlalign_jax.methods.method import Method

__all__ = ["Method", "make_method"]


def make_method(config) -> Method:
    """Import `vlalign_jax.methods.<config.method>` and build its Method from the config."""
    name = config.method
    try:
        module = importlib.import_module(f"vlalign_jax.methods.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"vlalign_jax.methods.{name}":
            raise
        raise ValueError(f"unknown method {name!r}: no module vlalign_jax.methods.{name}") from e
    return module.make(config)
