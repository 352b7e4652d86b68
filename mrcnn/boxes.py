"""Box arithmetic in Matterport's conventions: boxes are (y1, x1, y2, x2).

Normalised boxes use the (H-1) convention: pixel (y1, x1, y2, x2) with exclusive y2, x2 maps to
(y1/(H-1), x1/(W-1), (y2-1)/(H-1), (x2-1)/(W-1)). Everything here keeps the operation order of
the Keras graph, because the port must match it to float32 rounding.
"""
import numpy as np
import torch


def apply_box_deltas(boxes, deltas):
    """Refines boxes[..., 4] by deltas[..., 4] = (dy, dx, log(dh), log(dw)) (apply_box_deltas_graph)."""
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    center_y = boxes[..., 0] + 0.5 * height
    center_x = boxes[..., 1] + 0.5 * width
    center_y = center_y + deltas[..., 0] * height
    center_x = center_x + deltas[..., 1] * width
    height = height * torch.exp(deltas[..., 2])
    width = width * torch.exp(deltas[..., 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return torch.stack([y1, x1, y1 + height, x1 + width], dim=-1)


def clip_boxes(boxes, window):
    """Clips boxes[..., 4] to window[..., 4] = (y1, x1, y2, x2), broadcasting (clip_boxes_graph)."""
    wy1, wx1, wy2, wx2 = window.unbind(-1)
    y1, x1, y2, x2 = boxes.unbind(-1)
    clipped = [
        torch.maximum(torch.minimum(y1, wy2), wy1),
        torch.maximum(torch.minimum(x1, wx2), wx1),
        torch.maximum(torch.minimum(y2, wy2), wy1),
        torch.maximum(torch.minimum(x2, wx2), wx1),
    ]
    return torch.stack(clipped, dim=-1)


def norm_boxes(boxes, image_hw, compute_dtype=torch.float32):
    """Pixel boxes[..., 4] (y2, x2 exclusive) -> normalised float32 boxes.

    (y1, x1, y2 - 1, x2 - 1) / (H - 1, W - 1, H - 1, W - 1) evaluated in `compute_dtype`: float32
    is the graph's norm_boxes_graph, float64 Matterport's numpy utils.norm_boxes.
    boxes: a tensor or a numpy array (the result is of the same kind).
    image_hw: (H, W) as numbers or a tensor[..., 2] broadcastable against boxes.
    """
    tensor = _as_tensor(boxes)
    scale, shift = _pixel_scale_shift(image_hw, compute_dtype, tensor.device)
    return _like(boxes, ((tensor.to(compute_dtype) - shift) / scale).to(torch.float32))


def denorm_boxes(boxes, image_hw, compute_dtype=torch.float32):
    """Normalised boxes[..., 4] -> int32 pixel boxes, rounding half to even (inverse of norm_boxes).

    boxes: a tensor or a numpy array (the result is of the same kind)."""
    tensor = _as_tensor(boxes)
    return _like(boxes, torch.round(pixel_boxes(tensor, image_hw, compute_dtype)).to(torch.int32))


def pixel_boxes(boxes, image_hw, compute_dtype=torch.float32):
    """Normalised boxes[..., 4] -> unrounded pixel boxes in `compute_dtype` (y2, x2 exclusive).

    (y1, x1, y2, x2) * (H - 1, W - 1, H - 1, W - 1) + (0, 0, 1, 1): the box in continuous
    coordinates where pixel (i, j) covers [i, i + 1) x [j, j + 1), the frame of RoIAlign.
    boxes: a tensor or a numpy array (the result is of the same kind).
    """
    tensor = _as_tensor(boxes)
    scale, shift = _pixel_scale_shift(image_hw, compute_dtype, tensor.device)
    return _like(boxes, tensor.to(compute_dtype) * scale + shift)


def _as_tensor(boxes):
    return boxes if torch.is_tensor(boxes) else torch.from_numpy(np.asarray(boxes))


def _like(boxes, result):
    return result if torch.is_tensor(boxes) else result.numpy()


def _pixel_scale_shift(image_hw, dtype, device):
    hw = torch.as_tensor(image_hw, device=device).to(dtype)
    scale = torch.cat([hw, hw], dim=-1) - 1.0
    return scale, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=device)


def box_area(boxes):
    """(y2 - y1) * (x2 - x1) of boxes[..., 4]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """IoU matrix [N, M] of boxes1[N, 4] and boxes2[M, 4] without +1 (Matterport's overlaps)."""
    y1 = torch.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    x1 = torch.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    y2 = torch.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    x2 = torch.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    intersection = (y2 - y1).clamp(min=0) * (x2 - x1).clamp(min=0)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
    return intersection / union
