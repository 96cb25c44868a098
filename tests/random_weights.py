"""Random parameters at scales where a tiny model's outputs move with its inputs, built in numpy: a
jitted `init` of even a tiny model costs seconds of compilation on the test machine."""

import numpy as np
from flax import traverse_util


def scaled_random_params(abstract, seed: int):
    """A params tree shaped like `abstract` (ShapeDtypeStructs or arrays): norm scales near 1, biases
    and 1-D tables small, embeddings 0.5, matrices scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        values = rng.standard_normal(leaf.shape).astype(np.float32)
        if path.endswith("scale"):
            return 1 + 0.1 * values
        if path.endswith("bias") or len(leaf.shape) < 2:
            return 0.1 * values
        return 0.5 * values if "embedding" in path else values / np.sqrt(np.prod(leaf.shape[:-1]))

    flat = traverse_util.flatten_dict(abstract, sep="/")
    return traverse_util.unflatten_dict({k: fill(k, v) for k, v in flat.items()}, sep="/")
