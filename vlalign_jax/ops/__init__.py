"""Pure array functions shared by models, losses and evals (no parameters, no config)."""

from vlalign_jax.ops.roi_align import roi_align, roi_align_tokens

__all__ = ["roi_align", "roi_align_tokens"]
