"""Matterport's DetectionLayer (refine_detections_graph), batched over images."""
from typing import NamedTuple

import torch
from torch import nn

from mrcnn.boxes import apply_box_deltas, clip_boxes
from mrcnn.layers import pad_per_image
from mrcnn.ops import batched_nms


class Detections(NamedTuple):
    """The DetectionLayer's output and, for inspection, each RoI's refinement before filtering.

    detections [B, max_instances, 6] (see DetectionLayer.forward); roi_scores [B, N],
    roi_class_ids [B, N] int64 and refined_rois [B, N, 4]: each RoI's best class (background
    included), that class's probability and the RoI refined by its deltas, clipped to the window.
    """
    detections: torch.Tensor
    roi_scores: torch.Tensor
    roi_class_ids: torch.Tensor
    refined_rois: torch.Tensor


class DetectionLayer(nn.Module):
    """Refines RoIs with their best class's deltas, filters, NMSes per class and keeps the top ones."""

    def __init__(self, bbox_std_dev, min_confidence, nms_threshold, max_instances):
        super().__init__()
        self.min_confidence = min_confidence
        self.nms_threshold = nms_threshold
        self.max_instances = max_instances
        self.register_buffer("bbox_std_dev", torch.tensor(bbox_std_dev, dtype=torch.float32),
                             persistent=False)

    def forward(self, rois, probs, deltas, windows):
        """rois [B, N, 4], probs [B, N, K], deltas [B, N, K, 4], windows [B, 4] (all normalised) ->
        detections [B, max_instances, 6] = (y1, x1, y2, x2, class_id, score), by descending score
        (ties by RoI index), zero-padded."""
        return self.detect(rois, probs, deltas, windows).detections

    def detect(self, rois, probs, deltas, windows):
        """As forward, with each RoI's refinement before filtering: Detections."""
        batch, count, num_classes = probs.shape
        scores, class_ids, refined = self.refine(rois, probs, deltas, windows)
        keep = class_ids > 0
        if self.min_confidence:
            keep &= scores >= self.min_confidence
        image_index, roi_index = torch.nonzero(keep, as_tuple=True)
        groups = image_index * num_classes + class_ids[keep]
        kept = batched_nms(refined[keep], scores[keep], groups, self.nms_threshold,
                           max_output_size=self.max_instances)
        image_index, roi_index = image_index[kept], roi_index[kept]
        rows = torch.cat([refined[image_index, roi_index],
                          class_ids[image_index, roi_index, None].to(refined.dtype),
                          scores[image_index, roi_index, None]], dim=1)
        return Detections(pad_per_image(rows, image_index, batch, self.max_instances),
                          scores, class_ids, refined)

    def refine(self, rois, probs, deltas, windows):
        """Each RoI's best class and its box refined by that class's deltas, before filtering ->
        (scores [B, N], class_ids [B, N] int64, refined boxes [B, N, 4] clipped to windows)."""
        scores, class_ids = probs.max(dim=-1)
        # torch.max picks the first maximum, like tf.argmax.
        class_deltas = deltas.gather(2, class_ids[..., None, None].expand(-1, -1, 1, 4))
        refined = apply_box_deltas(rois, class_deltas.squeeze(2) * self.bbox_std_dev)
        return scores, class_ids, clip_boxes(refined, windows[:, None, :])
