"""ONNX translations (onnxscript, standard operators only) of the operators the ONNX exporter
cannot translate by itself: the project's NMS and RoIAlign (torch.ops.mrcnn.nms, roi_align) and
the stable sort. (crop_and_resize is decomposed into plain torch operations before translating.)

Each keeps the exact semantics of the op it replaces, as onnxruntime's CPU kernels run them:

- `nms`: ONNX NonMaxSuppression with center_point_box=0 reads boxes as (y1, x1, y2, x2), either
  corner first, and computes TensorFlow's IoU with the same float32 operations (intersection
  over area_a + area_b - intersection, 0 for boxes of zero area) and the same test (IoU >
  threshold suppresses). What it does not promise is TensorFlow's order among equal scores (its
  candidate queue is a heap), so the boxes are handed to it scored by their rank in TF's order
  (descending score, then ascending index): all distinct, same order. Groups (batched_nms's
  idxs) become NonMaxSuppression's classes.
- `roi_align` (POOLER "roi_align"): ONNX RoiAlign, whose half_pixel mode is torchvision's
  aligned=True and output_half_pixel its aligned=False.
- `sort_stable`: ONNX TopK, whose specification breaks ties by the lower index.
"""
import math

import torch
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op

from mrcnn.ops import _ext  # noqa: F401  (registers torch.ops.mrcnn)


def _ints(*values):
    return op.Constant(value_ints=list(values))


def _int(value):
    return op.Constant(value_int=value)


def nms(boxes, scores, idxs, iou_threshold, max_output_size, score_threshold):
    """mrcnn::nms: boxes [N, 4], scores [N] float32, idxs [N] int64 or None -> kept indices [K]
    int64 by descending score, ties by ascending index (see mrcnn.ops.nms)."""
    count = op.Shape(scores)
    positions = op.Range(_int(0), op.Squeeze(count), _int(1))
    # rank[i]: box i's place in the visiting order (TopK puts equal scores lower index first).
    _, order = op.TopK(scores, count, axis=0, largest=1, sorted=1)
    rank = op.ScatterElements(positions, order, positions, axis=0)
    # The largest score goes to rank 0; any score beats -N, the threshold below.
    rank_scores = op.Neg(op.Cast(rank, to=FLOAT.dtype))
    candidate = op.Greater(scores, op.CastLike(op.Constant(value_float=score_threshold), scores))
    if idxs is None:
        idxs = op.Mul(positions, _int(0))
    # Groups 0 .. max(idxs); the -1 keeps the count at 0 when there are no boxes.
    group_count = op.Add(op.ReduceMax(op.Concat(idxs, _ints(-1), axis=0), keepdims=0), _int(1))
    groups = op.Range(_int(0), group_count, _int(1))
    member = op.And(op.Equal(op.Unsqueeze(groups, _ints(1)), op.Unsqueeze(idxs, _ints(0))),
                    op.Unsqueeze(candidate, _ints(0)))
    group_scores = op.Where(member, op.Unsqueeze(rank_scores, _ints(0)),
                            op.Constant(value_float=-math.inf))
    # NonMaxSuppression reads 0 as "keep none", so "no limit" is every box.
    limit = count if max_output_size < 0 else _ints(max_output_size)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, _ints(0)), op.Unsqueeze(group_scores, _ints(0)), limit,
        op.Constant(value_floats=[iou_threshold]), op.Neg(op.Cast(count, to=FLOAT.dtype)),
        center_point_box=0)
    kept = op.Squeeze(op.Slice(selected, _ints(2), _ints(3), _ints(1)), _ints(1))
    # NonMaxSuppression lists group after group; merge them into the visiting order.
    _, by_rank = op.TopK(op.Gather(rank, kept, axis=0), op.Shape(kept), axis=0, largest=0,
                         sorted=1)
    return op.Gather(kept, by_rank, axis=0)


def sort_stable(self, stable=None, dim=-1, descending=False):
    """aten::sort.stable -> (values, indices), equal values in index order."""
    axis_size = op.Shape(self, start=dim, end=None if dim == -1 else dim + 1)
    return op.TopK(self, axis_size, axis=dim, largest=int(descending), sorted=1)


def roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    """mrcnn::roi_align (torchvision's semantics): input [N, C, H, W], rois [K, 5] (image, x1,
    y1, x2, y2) -> [K, C, pooled_height, pooled_width], as ONNX RoiAlign (average pooling)."""
    boxes = op.Slice(rois, _ints(1), _ints(5), _ints(1))
    images = op.Cast(op.Squeeze(op.Slice(rois, _ints(0), _ints(1), _ints(1)), _ints(1)),
                     to=INT64.dtype)
    return op.RoiAlign(input, boxes, images, mode="avg", output_height=pooled_height,
                       output_width=pooled_width, sampling_ratio=max(sampling_ratio, 0),
                       spatial_scale=spatial_scale,
                       coordinate_transformation_mode="half_pixel" if aligned
                       else "output_half_pixel")


def translations():
    """{torch operator: its translation}, for torch.onnx.export's custom_translation_table."""
    return {torch.ops.mrcnn.nms.default: nms, torch.ops.mrcnn.roi_align.default: roi_align,
            torch.ops.aten.sort.stable: sort_stable}
