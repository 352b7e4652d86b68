"""Training targets: RPN anchor targets, Matterport's DetectionTargetLayer and MaskIoU targets.

Everything is batched over images and vectorised over anchors, proposals and instances, so the
same code runs on the CPU and on CUDA. Ground truth comes zero-padded to the largest instance
count of the batch: class id 0 marks padding and a negative class id marks a COCO crowd region,
which is never a target but keeps the anchors and proposals it covers from being negatives.
Random sampling draws from an explicit torch.Generator (on the tensors' device), so a run with
the same seed samples the same anchors and RoIs.
"""
from typing import NamedTuple

import torch

from mrcnn.boxes import box_iou
from mrcnn.layers import pad_per_image
from mrcnn.ops import crop_and_resize


def box_refinement(boxes, gt_boxes):
    """Deltas (dy, dx, log(dh), log(dw)) [..., 4] that turn boxes [..., 4] into gt_boxes [..., 4].

    Computed in the inputs' dtype (Matterport: float64 for anchors, float32 for RoIs).
    """
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    center_y = boxes[..., 0] + 0.5 * height
    center_x = boxes[..., 1] + 0.5 * width
    gt_height = gt_boxes[..., 2] - gt_boxes[..., 0]
    gt_width = gt_boxes[..., 3] - gt_boxes[..., 1]
    gt_center_y = gt_boxes[..., 0] + 0.5 * gt_height
    gt_center_x = gt_boxes[..., 1] + 0.5 * gt_width
    return torch.stack([(gt_center_y - center_y) / height, (gt_center_x - center_x) / width,
                        torch.log(gt_height / height), torch.log(gt_width / width)], dim=-1)


def with_padding_instance(gt_class_ids, gt_boxes, *rest):
    """Appends one padding instance (class 0, zero box) when the batch has none, so that
    reductions over instances are defined."""
    tensors = (gt_class_ids, gt_boxes, *rest)
    if gt_class_ids.shape[1]:
        return tensors
    return tuple(t.new_zeros(t.shape[:1] + (1,) + t.shape[2:]) for t in tensors)


def best_instances(boxes, gt_boxes, gt_class_ids):
    """Overlaps of boxes with the instances of their image.

    boxes [A, 4] (shared by the batch) or [B, N, 4], gt_boxes [B, G, 4], gt_class_ids [B, G]
    with G >= 1 -> (iou [B, N, G], -1 in the columns of padding and crowds; best IoU [B, N]
    and its instance [B, N]; the largest IoU with a crowd region [B, N], 0 without crowds).
    """
    batch = gt_boxes.shape[0]
    boxes = boxes.expand(batch, -1, -1) if boxes.dim() == 2 else boxes
    iou = torch.stack([box_iou(b, g) for b, g in zip(boxes, gt_boxes)])
    crowd_iou_max = torch.where((gt_class_ids < 0)[:, None, :], iou, 0.0).amax(dim=2)
    iou = torch.where((gt_class_ids > 0)[:, None, :], iou, -1.0)
    iou_max, iou_argmax = iou.max(dim=2)
    return iou, iou_max, iou_argmax, crowd_iou_max


def random_subset(mask, limit, generator=None):
    """Keeps at most limit[b] of the True entries of each row of mask [B, N], chosen uniformly.

    limit: int or tensor [B]. generator: one torch.Generator for the batch, or a sequence of B,
    one per row, so that a row's choice does not depend on the other rows of its batch (then a
    batch split over processes samples as the whole batch does in one).
    Returns (kept mask [B, N], rank [B, N]): rank orders each row's True entries randomly
    (0, 1, ...) and is N elsewhere, so the kept entries are those with rank < limit and their
    ranks shuffle them.
    """
    if isinstance(generator, (list, tuple)):
        keys = torch.stack([torch.rand(mask.shape[1:], generator=row_generator,
                                       device=mask.device) for row_generator in generator])
    else:
        keys = torch.rand(mask.shape, generator=generator, device=mask.device)
    order = torch.where(mask, keys, 2.0).argsort(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    rank = torch.where(mask, rank, mask.shape[1])
    limit = torch.as_tensor(limit, device=mask.device)
    return mask & (rank < limit.reshape(-1, 1)), rank


def rpn_targets(anchors, gt_boxes, gt_class_ids, anchors_per_image=256,
                bbox_std_dev=(0.1, 0.1, 0.2, 0.2), positive_iou=0.7, negative_iou=0.3,
                generator=None):
    """Matterport's build_rpn_targets for a batch.

    anchors [A, 4] pixel boxes (float64 for Matterport's arithmetic), gt_boxes [B, G, 4] pixel
    boxes, gt_class_ids [B, G] (0 padding, < 0 crowd) ->
    (match [B, A] int64: 1 positive, -1 negative, 0 neutral;
     deltas [B, anchors_per_image, 4] float32: the positives' targets in anchor order, divided
     by bbox_std_dev, zero rows after them).

    An anchor is negative when its best IoU is < negative_iou and it overlaps no crowd (IoU
    < 0.001), positive when its best IoU is >= positive_iou or it is (one of) the best anchor(s)
    of an instance. At most anchors_per_image // 2 positives are kept, then at most
    anchors_per_image minus their count negatives, both uniformly at random (drawn from
    `generator`, see random_subset).
    """
    batch = gt_boxes.shape[0]
    gt_class_ids, gt_boxes = with_padding_instance(gt_class_ids, gt_boxes.to(anchors.dtype))
    iou, iou_max, iou_argmax, crowd_iou_max = best_instances(anchors, gt_boxes, gt_class_ids)
    match = torch.zeros(iou.shape[:2], dtype=torch.int64, device=anchors.device)
    match[(iou_max < negative_iou) & (crowd_iou_max < 0.001)] = -1
    # Every instance keeps its best anchors (all ties), even below negative_iou. An instance
    # that overlaps no anchor at all (a degenerate box) would make every anchor "best": skip it.
    gt_best = iou.amax(dim=1, keepdim=True)
    match[((iou == gt_best) & (gt_best > 0)).any(dim=2) | (iou_max >= positive_iou)] = 1

    positive, _ = random_subset(match == 1, anchors_per_image // 2, generator)
    negative, _ = random_subset(match == -1, anchors_per_image - positive.sum(dim=1), generator)
    match = positive.long() - negative.long()

    image, index = torch.nonzero(positive, as_tuple=True)
    std = torch.tensor(bbox_std_dev, dtype=anchors.dtype, device=anchors.device)
    deltas = box_refinement(anchors[index], gt_boxes[image, iou_argmax[image, index]]) / std
    return match, pad_per_image(deltas.float(), image, batch, anchors_per_image)


class DetectionTargets(NamedTuple):
    """Output of detection_targets; T = rois per image, rows are positives, negatives, padding."""
    rois: torch.Tensor         # [B, T, 4] normalised
    class_ids: torch.Tensor    # [B, T] int64, 0 for negatives and padding
    deltas: torch.Tensor       # [B, T, 4] divided by BBOX_STD_DEV, 0 for negatives and padding
    masks: torch.Tensor        # [B, T, mask_h, mask_w] 0/1 float32, 0 for negatives and padding
    mask_ratios: torch.Tensor  # [B, T] share of the instance's mask inside the RoI, 0 off positives


def negative_count(positive_count, positive_ratio):
    """Matterport's negative count: int32(float32(1/ratio) * float32(P)) - P."""
    ratio = torch.tensor(1.0 / positive_ratio, dtype=torch.float32)
    return (ratio.to(positive_count.device) * positive_count.float()).long() - positive_count


def detection_targets(proposals, gt_class_ids, gt_boxes, gt_masks, rois_per_image=200,
                      positive_ratio=0.33, bbox_std_dev=(0.1, 0.1, 0.2, 0.2),
                      mask_shape=(28, 28), use_mini_mask=True, generator=None):
    """Matterport's DetectionTargetLayer for a batch, plus the mask ratios MaskIoU needs.

    proposals [B, N, 4] normalised (all-zero rows are padding), gt_class_ids [B, G] (0 padding,
    < 0 crowd), gt_boxes [B, G, 4] normalised, gt_masks [B, G, h, w]: mini-masks of each
    instance's box (use_mini_mask) or masks of the whole molded image. Returns DetectionTargets.

    Positives (best IoU with an instance >= 0.5) are sampled up to int(rois_per_image *
    positive_ratio), then negatives (best IoU < 0.5, no crowd overlap >= 0.001) up to
    int32(float32(1 / positive_ratio) * P) - P (drawn from `generator`, see random_subset);
    each row's instance is its best-IoU one. Mask targets are crop_and_resize of the instance's
    mask to the RoI, rounded half to even.
    """
    batch = proposals.shape[0]
    gt_class_ids, gt_boxes, gt_masks = with_padding_instance(gt_class_ids, gt_boxes, gt_masks)
    _, iou_max, iou_argmax, crowd_iou_max = best_instances(proposals, gt_boxes, gt_class_ids)
    valid = (proposals != 0).any(dim=2)
    positive, positive_rank = random_subset(valid & (iou_max >= 0.5),
                                            int(rois_per_image * positive_ratio), generator)
    positives = positive.sum(dim=1)
    negative_limit = torch.minimum(negative_count(positives, positive_ratio),
                                   rois_per_image - positives)
    negative, negative_rank = random_subset(valid & (iou_max < 0.5) & (crowd_iou_max < 0.001),
                                            negative_limit, generator)

    # Output rows: the positives in shuffled order, then the negatives in shuffled order.
    image, index = torch.nonzero(positive | negative, as_tuple=True)
    is_positive = positive[image, index]
    row = torch.where(is_positive, positive_rank[image, index],
                      positives[image] + negative_rank[image, index])
    rois = proposals.new_zeros((batch, rois_per_image, 4))
    rois[image, row] = proposals[image, index]

    image, index, row = image[is_positive], index[is_positive], row[is_positive]
    instance = iou_argmax[image, index]
    roi_boxes = proposals[image, index]
    instance_boxes = gt_boxes[image, instance].to(proposals.dtype)
    class_ids = gt_class_ids.new_zeros((batch, rois_per_image), dtype=torch.int64)
    class_ids[image, row] = gt_class_ids[image, instance].long()
    std = torch.tensor(bbox_std_dev, dtype=proposals.dtype, device=proposals.device)
    deltas = proposals.new_zeros((batch, rois_per_image, 4))
    deltas[image, row] = box_refinement(roi_boxes, instance_boxes) / std

    instance_masks = gt_masks[image, instance].to(proposals.dtype)
    frame_boxes = to_box_frame(roi_boxes, instance_boxes) if use_mini_mask else roi_boxes
    box_index = torch.arange(len(image), device=proposals.device)
    mask_targets = crop_and_resize(instance_masks[:, None], frame_boxes, box_index, mask_shape)
    masks = proposals.new_zeros((batch, rois_per_image) + tuple(mask_shape))
    masks[image, row] = torch.round(mask_targets[:, 0])
    mask_ratios = proposals.new_zeros((batch, rois_per_image))
    mask_ratios[image, row] = mask_ratio_inside(instance_masks, frame_boxes)
    return DetectionTargets(rois, class_ids, deltas, masks, mask_ratios)


def to_box_frame(boxes, frames):
    """boxes [R, 4] in normalised image coordinates -> coordinates relative to frames [R, 4]
    (0 and 1 at a frame's first and last row/column), the coordinates of a mini-mask."""
    height = frames[:, 2] - frames[:, 0]
    width = frames[:, 3] - frames[:, 1]
    scale = torch.stack([height, width, height, width], dim=1)
    return (boxes - frames[:, [0, 1, 0, 1]]) / scale


def mask_ratio_inside(masks, boxes):
    """Share of each mask's pixels [R, h, w] inside its box [R, 4], in the normalised frame of the
    mask where pixel (i, j) sits at (i / (h - 1), j / (w - 1)), as crop_and_resize samples it.

    This is Mask Scoring R-CNN's mask_ratio (area of the instance inside the RoI over its whole
    area), measured on the instance mask the mask targets are cropped from; floored at 1e-10.
    """
    height, width = masks.shape[-2:]
    ys = torch.arange(height, device=masks.device, dtype=boxes.dtype) / max(height - 1, 1)
    xs = torch.arange(width, device=masks.device, dtype=boxes.dtype) / max(width - 1, 1)
    inside_y = (ys >= boxes[:, 0:1]) & (ys <= boxes[:, 2:3])
    inside_x = (xs >= boxes[:, 1:2]) & (xs <= boxes[:, 3:4])
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    total = masks.sum(dim=(1, 2))
    ratio = (masks * inside).sum(dim=(1, 2)) / total.clamp(min=1)
    return ratio.clamp(min=1e-10)


@torch.no_grad()
def maskiou_targets(mask_probs, mask_targets, mask_ratios):
    """Mask Scoring R-CNN's IoU targets.

    mask_probs [P, h, w] predicted probabilities of each positive RoI's ground-truth class,
    mask_targets [P, h, w] 0/1, mask_ratios [P] -> IoU [P] between the prediction binarised at
    0.5 and the whole instance, whose area outside the RoI is estimated as
    target area / mask_ratio.
    """
    predicted = (mask_probs > 0.5).to(mask_targets.dtype)
    full_area = mask_targets.sum(dim=(1, 2)) / mask_ratios
    overlap = (predicted * mask_targets).sum(dim=(1, 2))
    union = (predicted.sum(dim=(1, 2)) + full_area - overlap).clamp(min=1.0)
    return overlap / union
