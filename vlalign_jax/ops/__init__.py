"""Pure array functions shared by models, losses and evals (no parameters, no config)."""

from vlalign_jax.ops.boxes import (box_area, box_cxcywh_to_xyxy, box_iou, box_xywh_to_xyxy, box_xyxy_to_cxcywh,
                                   box_xyxy_to_xywh, generalized_box_iou, generalized_box_iou_pairs, iou_pairs)
from vlalign_jax.ops.roi_align import roi_align, roi_align_tokens

__all__ = ["box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xywh_to_xyxy", "box_xyxy_to_cxcywh", "box_xyxy_to_xywh",
           "generalized_box_iou", "generalized_box_iou_pairs", "iou_pairs", "roi_align", "roi_align_tokens"]
