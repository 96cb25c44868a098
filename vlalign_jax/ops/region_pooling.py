"""Region embeddings from a dense feature map: RoIAlign to one vector per box, then a masked L2
normalisation (FG-CLIP 1 and 2, research/fgclip.md 1.3 and 3.9).

Boxes come normalised to [0, 1] (x by width, y by height) and are scaled to feature-map cells, as the
reference's `_denormalize_boxes` (FG-CLIP 2: to each image's own NaFlex patch grid, `pool_token_regions`); pooling is `roi_align(output_size=1, spatial_scale=1,
sampling_ratio=-1, aligned=True)`. Padding boxes would pool zeros and normalise to NaN; here they give
zero vectors with zero gradient (a double `where`), so masked slots never poison a loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlalign_jax.ops.roi_align import roi_align, roi_align_tokens


def masked_l2_normalize(x: jax.Array, mask: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / |x| over the last axis where `mask` (x.shape[:-1]) is True, else 0, with finite gradients."""
    x = x.astype(jnp.float32)
    safe = jnp.where(mask[..., None], x, 1.0)
    normalized = safe / jnp.maximum(jnp.linalg.norm(safe, axis=-1, keepdims=True), eps)
    return jnp.where(mask[..., None], normalized, 0.0)


def pool_regions(feature_map: jax.Array, normalized_boxes: jax.Array, box_mask: jax.Array) -> jax.Array:
    """feature_map [B, h, w, D], boxes [B, M, 4] xyxy in [0, 1], mask [B, M] -> unit vectors [B, M, D]."""
    height, width = feature_map.shape[1:3]
    cells = normalized_boxes.astype(jnp.float32) * jnp.asarray([width, height, width, height], jnp.float32)
    pooled = roi_align(feature_map.astype(jnp.float32), cells, 1, box_mask=box_mask)[:, :, 0, 0]
    return masked_l2_normalize(pooled, box_mask)


def pool_token_regions(tokens: jax.Array, spatial_shapes: jax.Array, normalized_boxes: jax.Array,
                       box_mask: jax.Array, max_grid: int | tuple[int, int] | None = None) -> jax.Array:
    """FG-CLIP 2's region features: dense tokens [B, N, D] whose first h*w rows are image b's (h, w)
    patch grid (`spatial_shapes` [B, 2]), boxes [B, M, 4] xyxy in [0, 1] (x scaled by w, y by h, as
    the reference's `fgclip2.py:182-239`) -> unit vectors [B, M, D]. `max_grid`: `roi_align_tokens`."""
    grid = spatial_shapes.astype(jnp.float32)
    cells = normalized_boxes.astype(jnp.float32) * jnp.stack([grid[:, 1], grid[:, 0]] * 2, axis=-1)[:, None, :]
    pooled = roi_align_tokens(tokens.astype(jnp.float32), spatial_shapes, cells, 1, box_mask=box_mask,
                              max_grid=max_grid)[:, :, 0, 0]
    return masked_l2_normalize(pooled, box_mask)
