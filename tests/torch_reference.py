"""Plain-PyTorch implementations of mrcnn.ops, independent of the C++/CUDA kernels.

They are the references of the op tests and the baseline of benchmarks/ops.py: vectorised tensor
code only, the same on the CPU and on CUDA, differentiable in the image where the op is. They are
written for clarity and memory-hungry by design (they materialise every sample), so keep the
inputs moderate.
"""
import math

import torch
import torch.nn.functional as F

from mrcnn.ops import crop_and_resize_decomposed

__all__ = ["crop_and_resize", "nms", "roi_align"]


def nms(boxes, scores, iou_threshold, max_output_size=None, score_threshold=None):
    """Greedy NMS with ``tf.image.non_max_suppression``'s semantics (those of mrcnn.ops.nms).

    Candidates (score > score_threshold; NaN never) are visited by descending score, equal
    scores by ascending index. Each step keeps the best remaining candidate and drops every
    remaining one whose IoU with it exceeds ``iou_threshold``; the loop runs once per kept box.

    Args:
        boxes (Tensor[N, 4]): ``(y1, x1, y2, x2)``, either corner first; float32 or float64.
        scores (Tensor[N]): same dtype and device.
        iou_threshold (float): suppress IoU > iou_threshold, compared in the boxes' dtype.
        max_output_size (int, optional): stop after this many kept boxes.
        score_threshold (float, optional): candidates need score > score_threshold.

    Returns:
        Tensor[K] int64: indices of the kept boxes in selection order.
    """
    # TF's default threshold is -inf; NaN scores fail the comparison.
    threshold = -math.inf if score_threshold is None else score_threshold
    candidates = torch.nonzero(scores > threshold).squeeze(1)
    # + 0 turns -0.0 into +0.0: equal scores for TF, but not for CUDA's radix sort.
    order = torch.sort(scores[candidates] + 0, descending=True, stable=True).indices
    remaining = candidates[order]
    corners = boxes[remaining]
    low = torch.minimum(corners[:, :2], corners[:, 2:])
    high = torch.maximum(corners[:, :2], corners[:, 2:])
    area = (high[:, 0] - low[:, 0]) * (high[:, 1] - low[:, 1])
    limit = len(remaining) if max_output_size is None else max_output_size
    kept = []
    while len(remaining) > 0 and len(kept) < limit:
        kept.append(remaining[:1])
        extent = torch.minimum(high[:1], high[1:]) - torch.maximum(low[:1], low[1:])
        extent = extent.clamp(min=0)
        intersection = extent[:, 0] * extent[:, 1]
        iou = intersection / (area[:1] + area[1:] - intersection)
        # TF counts the IoU as 0 when either area is <= 0: such boxes never suppress.
        survivors = ~(iou > iou_threshold) | (area[:1] <= 0) | (area[1:] <= 0)
        remaining, low, high, area = (t[1:][survivors] for t in (remaining, low, high, area))
    return torch.cat(kept) if kept else boxes.new_empty(0, dtype=torch.int64)


def crop_and_resize(image, boxes, box_ind, crop_size, extrapolation_value=0.0):
    """``tf.image.crop_and_resize`` (bilinear) in NCHW from gathers, in TF's float arithmetic:
    the library's plain-torch decomposition of the op (the one the ONNX export uses,
    mrcnn.ops.crop_and_resize_decomposed), which shares no code with the kernels.

    Every sample position and interpolation is computed with TF's operations in TF's order, each
    rounded in the image's dtype, so float32 results equal TensorFlow's CPU kernel bit for bit.
    The four corner pixels of every sample are gathered by indexing, so autograd provides the
    gradient with respect to ``image`` (boxes get none).

    Args:
        image (Tensor[N, C, H, W]): float32 or float64.
        boxes (Tensor[K, 4]): normalised ``(y1, x1, y2, x2)``; 0 and 1 are the centres of the
            first and last pixel.
        box_ind (Tensor[K]): integer image index of each box.
        crop_size (int or (int, int)): output height and width.
        extrapolation_value (float): value of samples off the image (or at NaN positions).

    Returns:
        Tensor[K, C, crop_height, crop_width] of ``image``'s dtype.
    """
    crop_height, crop_width = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    return crop_and_resize_decomposed(image, boxes.to(image.dtype), box_ind, crop_height,
                                      crop_width, extrapolation_value)


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    """``torchvision.ops.roi_align`` (the semantics of mrcnn.ops.roi_align) with
    ``F.grid_sample``: every bin's sample grid is sampled bilinearly, then averaged.

    torchvision drops a sample farther than one pixel off the map and clamps the others onto it,
    which is grid_sample's border padding with the far samples masked out. With
    ``sampling_ratio <= 0`` a roi takes ``ceil(roi_size / output_size)`` samples per bin and
    axis; all rois are sampled on the largest grid and the extra samples are masked.
    Differentiable with respect to ``input``.

    Args:
        input (Tensor[N, C, H, W]): float32 or float64.
        rois (Tensor[K, 5]): ``(batch_index, x1, y1, x2, y2)`` in image coordinates.
        output_size (int or (int, int)): bins per roi, (height, width).
        spatial_scale (float): feature-map size / image size.
        sampling_ratio (int): samples per bin and axis; <= 0 for adaptive.
        aligned (bool): shift the rois by -0.5 pixel (pixel centres at integer + 0.5).

    Returns:
        Tensor[K, C, pooled_height, pooled_width] of ``input``'s dtype.
    """
    pooled_height, pooled_width = (
        (output_size, output_size) if isinstance(output_size, int) else output_size)
    num_images, channels, height, width = input.shape
    rois = rois.to(input.dtype)
    corners = rois[:, 1:] * spatial_scale - (0.5 if aligned else 0.0)
    ys, y_valid, grid_h = _roi_axis_samples(corners[:, 1], corners[:, 3], pooled_height,
                                            height, sampling_ratio, aligned)
    xs, x_valid, grid_w = _roi_axis_samples(corners[:, 0], corners[:, 2], pooled_width, width,
                                            sampling_ratio, aligned)
    valid = y_valid[:, :, None] & x_valid[:, None, :]  # [K, Sy, Sx]
    # align_corners=True puts -1 and 1 on the centres of the first and last pixels.
    grid = torch.stack(torch.broadcast_tensors(
        xs[:, None, :] * (2 / max(width - 1, 1)) - 1,
        ys[:, :, None] * (2 / max(height - 1, 1)) - 1), dim=-1)  # [K, Sy, Sx, 2]
    grid = torch.where(valid[..., None], grid, grid.new_zeros(()))  # no NaN into grid_sample

    batch = rois[:, 0].long()
    order = torch.argsort(batch, stable=True)
    counts = torch.bincount(batch, minlength=num_images).tolist()
    sums = []
    for image, members in zip(input.split(1), order.split(counts)):  # a loop over images
        sampled = F.grid_sample(image, grid[members].flatten(0, 1)[None], mode="bilinear",
                                padding_mode="border", align_corners=True)
        sampled = sampled.view(channels, len(members), *valid.shape[1:]) * valid[members]
        bins = sampled.unflatten(3, (pooled_width, -1)).unflatten(2, (pooled_height, -1))
        sums.append(bins.sum((3, 5)).transpose(0, 1))  # [members, C, pooled_h, pooled_w]
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    return torch.cat(sums)[torch.argsort(order)] / count[:, None, None, None]


def _roi_axis_samples(start, end, pooled, size, sampling_ratio, aligned):
    """Sample coordinates of every bin along one axis, torchvision's arithmetic.

    Returns ``coords`` [K, pooled * G] (bin-major), ``valid`` [K, pooled * G] (a real sample
    within one pixel of the map) and ``grid`` [K] (samples per bin), where G is the largest grid.
    """
    extent = end - start
    if not aligned:
        extent = extent.clamp(min=1)
    bin_size = extent / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(start, sampling_ratio, dtype=torch.int64)
    else:  # rois of non-finite size sample nothing
        grid = torch.where(bin_size.isfinite(), bin_size.ceil(), 0).long()
    largest = max(int(grid.max()), 1) if len(grid) else 1
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device)[:, None]
    taps = torch.arange(largest, device=start.device)
    offsets = (taps.to(start.dtype) + 0.5)[None, None, :] * bin_size[:, None, None]
    grid_size = grid.clamp(min=1).to(start.dtype)[:, None, None]
    coords = start[:, None, None] + bins[None] * bin_size[:, None, None] + offsets / grid_size
    valid = (taps < grid[:, None, None]) & (coords >= -1) & (coords <= size)
    return coords.flatten(1), valid.flatten(1), grid
