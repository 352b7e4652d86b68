"""Matterport's import path `mrcnn.utils`: the Dataset class and the numpy utilities.

Names, signatures and results are those of Matterport's `mrcnn/utils.py`; the work is done by
this project's implementations (mrcnn.molding, mrcnn.boxes, mrcnn.anchors, mrcnn.unmold,
preprocess.masks, the compiled NMS), which reproduce Matterport's arithmetic. Arrays go in and
come out as numpy arrays.
"""
import shutil
import sys

import numpy as np
import torch

from mrcnn import boxes as box_ops
from mrcnn.anchors import level_anchors
from mrcnn.atomic import atomic_path
from mrcnn.dataset import Dataset as _DatasetInterface
from mrcnn.molding import resize_image as _resize_image
from mrcnn.unmold import unmold_masks
from mrcnn.weights import COCO_WEIGHTS_URL, coco_weights_path
from preprocess.images import load_image
from preprocess.masks import expand_mask, extract_bboxes, minimize_mask, resize_mask

COCO_MODEL_URL = COCO_WEIGHTS_URL

__all__ = [
    "COCO_MODEL_URL", "Dataset", "apply_box_deltas", "compute_ap", "compute_ap_range",
    "compute_iou", "compute_matches", "compute_overlaps", "compute_overlaps_masks",
    "compute_recall", "denorm_boxes", "download_trained_weights", "expand_mask",
    "extract_bboxes", "generate_anchors", "generate_pyramid_anchors", "minimize_mask",
    "non_max_suppression", "norm_boxes", "resize_image", "resize_mask", "trim_zeros",
    "unmold_mask",
]


class Dataset(_DatasetInterface):
    """Matterport's `utils.Dataset` (see mrcnn.dataset.Dataset) whose `load_image` reads the
    file at image_info[image_id]["path"]: [H, W, 3] uint8 RGB, grayscale repeated into three
    channels, an alpha channel dropped, 16-bit samples scaled to 8 bits.

    Subclass it as for Matterport: add classes and images in a loader method, override
    `load_mask` (and `image_reference`, or `load_image` for images that are not files).
    """

    def load_image(self, image_id):
        return load_image(self.image_info[image_id]["path"])


# ---------------------------------------------------------------------------------- boxes

def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of `box` [4] with each of `boxes` [N, 4] (y1, x1, y2, x2), given their areas
    (box_area, boxes_area [N]) -> [N]."""
    boxes = np.asarray(boxes)
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    return intersection / (box_area + np.asarray(boxes_area) - intersection)


def compute_overlaps(boxes1, boxes2):
    """IoU matrix [N1, N2] float64 of boxes1 [N1, 4] and boxes2 [N2, 4] (y1, x1, y2, x2)."""
    return box_ops.box_iou(_float64_boxes(boxes1), _float64_boxes(boxes2)).numpy()


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix [N1, N2] float32 of masks1 [H, W, N1] and masks2 [H, W, N2] (a pixel is in a
    mask where its value is > 0.5); two empty masks give NaN, as in Matterport."""
    flat1, flat2 = (_flat_masks(masks) for masks in (masks1, masks2))
    intersections = flat1.T @ flat2
    union = flat1.sum(axis=0)[:, None] + flat2.sum(axis=0)[None, :] - intersections
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersections / union


def non_max_suppression(boxes, scores, threshold):
    """Indices [K] int32 of the boxes [N, 4] that greedy NMS keeps, by descending score: a box
    goes when its IoU with a kept one is > threshold. Equal scores are taken in index order."""
    from mrcnn.ops import nms   # the compiled ops, needed by this function alone

    boxes = np.asarray(boxes)
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    boxes = torch.from_numpy(np.ascontiguousarray(boxes))
    scores = torch.from_numpy(np.ascontiguousarray(scores)).to(boxes.dtype)
    return nms(boxes, scores, float(threshold)).numpy().astype(np.int32)


def apply_box_deltas(boxes, deltas):
    """boxes [N, 4] refined by deltas [N, 4] (dy, dx, log(dh), log(dw)), in float32."""
    boxes = torch.from_numpy(np.asarray(boxes, dtype=np.float32))
    deltas = torch.from_numpy(np.asarray(deltas, dtype=np.float32))
    return box_ops.apply_box_deltas(boxes, deltas).numpy()


def norm_boxes(boxes, shape):
    """Pixel boxes [N, 4] (y2, x2 exclusive) -> float32 normalised boxes of an image of
    shape (H, W)."""
    return box_ops.norm_boxes(np.asarray(boxes, dtype=np.float64), tuple(shape),
                              torch.float64)


def denorm_boxes(boxes, shape):
    """Normalised boxes [N, 4] -> int32 pixel boxes of an image of shape (H, W)."""
    return box_ops.denorm_boxes(np.asarray(boxes, dtype=np.float64), tuple(shape),
                                torch.float64)


def trim_zeros(x):
    """The rows of x [rows, columns] that are not all zeros (padding)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"trim_zeros expects a 2-D array, got shape {x.shape}")
    return x[~np.all(x == 0, axis=1)]


# ---------------------------------------------------------------------------------- images

def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square"):
    """(image, window, scale, padding, crop): the image scaled and padded (square, pad64) or
    cropped at random (crop), see mrcnn.molding.resize_image."""
    return _resize_image(np.asarray(image), min_dim=min_dim, max_dim=max_dim,
                         min_scale=min_scale, mode=mode)


def unmold_mask(mask, bbox, image_shape):
    """A soft mask [h, w] resized into its box (y1, x1, y2, x2) of an image of image_shape and
    thresholded at 0.5 -> [H, W] bool."""
    masks = torch.from_numpy(np.asarray(mask)[None])
    boxes = torch.as_tensor(np.asarray(bbox)[None, :4])
    return unmold_masks(masks, boxes, image_shape)[:, :, 0].numpy()


# ---------------------------------------------------------------------------------- anchors

def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Pixel anchors [H*W*R*S, 4] of one feature map of `shape`: every (ratio, scale) pair at
    every anchor position, rows ordered by position, then ratio, then scale."""
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    per_scale = [level_anchors(scale, ratios, shape, feature_stride, anchor_stride)
                 .reshape(-1, len(np.atleast_1d(ratios)), 4) for scale in scales]
    return np.stack(per_scale, axis=2).reshape(-1, 4)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """Pixel anchors [A, 4] of a pyramid: scales[i] on feature map i, the levels in order."""
    return np.concatenate([
        generate_anchors(scale, ratios, shape, stride, anchor_stride)
        for scale, shape, stride in zip(scales, feature_shapes, feature_strides)])


# ---------------------------------------------------------------------------------- evaluation

def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
                    pred_masks, iou_threshold=0.5, score_threshold=0.0):
    """Matterport's matching of predictions to ground truth by mask IoU.

    Zero-padding rows of the boxes are dropped and predictions sorted by descending score. Each
    prediction, in that order, takes the ground truth of highest IoU that is not taken yet, has
    IoU >= iou_threshold and the same class (ground truths with IoU < score_threshold are not
    considered). As in Matterport, a ground truth taken by the first prediction (index 0) counts
    as free again, so the numbers equal Matterport's.

    Returns:
        gt_match [G] (index of the matched prediction, -1 if none), pred_match [P] (index of
        the matched ground truth, -1 if none), overlaps [P, G] mask IoUs, predictions sorted.
    """
    gt_boxes = trim_zeros(gt_boxes)
    gt_masks = np.asarray(gt_masks)[..., :gt_boxes.shape[0]]
    pred_boxes = trim_zeros(pred_boxes)
    pred_scores = np.asarray(pred_scores)[:pred_boxes.shape[0]]
    order = np.argsort(pred_scores)[::-1]
    pred_class_ids = np.asarray(pred_class_ids)[order]
    overlaps = compute_overlaps_masks(np.asarray(pred_masks)[..., order], gt_masks)
    gt_class_ids = np.asarray(gt_class_ids)

    gt_match = -np.ones(gt_boxes.shape[0])
    pred_match = -np.ones(pred_boxes.shape[0])
    # Sequential by nature: each prediction sees the matches of the better-scored ones.
    for i in range(len(pred_boxes)):
        candidates = np.argsort(overlaps[i])[::-1]
        too_low = np.flatnonzero(overlaps[i, candidates] < score_threshold)
        if too_low.size:
            candidates = candidates[:too_low[0]]
        for j in candidates:
            if gt_match[j] > 0:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
               pred_masks, iou_threshold=0.5):
    """Average precision at one mask IoU threshold (Matterport's VOC-style AP).

    Returns:
        mAP (float), precisions [P + 2] and recalls [P + 2] (padded with 0/0 at the start and
        0/1 at the end, precisions made non-increasing), overlaps [P, G].
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)
    matched = np.cumsum(pred_match > -1)
    precisions = matched / (np.arange(len(pred_match)) + 1)
    recalls = matched.astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    # Each precision becomes the best precision at this or any higher recall.
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    steps = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    mean_ap = np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps])
    return mean_ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                     pred_mask, iou_thresholds=None, verbose=1):
    """Mean of compute_ap over iou_thresholds (default 0.5, 0.55, ..., 0.95); `verbose` prints
    the AP at each threshold and the mean."""
    thresholds = np.arange(0.5, 1.0, 0.05) if iou_thresholds is None else iou_thresholds
    aps = []
    for threshold in thresholds:
        ap = compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                        pred_mask, iou_threshold=threshold)[0]
        if verbose:
            print(f"AP @{threshold:.2f}:\t {ap:.3f}")
        aps.append(ap)
    mean_ap = np.array(aps).mean()
    if verbose:
        print(f"AP @{thresholds[0]:.2f}-{thresholds[-1]:.2f}:\t {mean_ap:.3f}")
    return mean_ap


def compute_recall(pred_boxes, gt_boxes, iou):
    """(recall, positive_ids): the share of ground-truth boxes that some prediction overlaps
    best with IoU >= iou, and the indices of the predictions with such an overlap."""
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    positive_ids = np.flatnonzero(overlaps.max(axis=1) >= iou)
    matched_gt = overlaps.argmax(axis=1)[positive_ids]
    return len(set(matched_gt.tolist())) / np.asarray(gt_boxes).shape[0], positive_ids


# ---------------------------------------------------------------------------------- weights

def download_trained_weights(coco_model_path, verbose=1):
    """Puts Matterport's COCO weights (mask_rcnn_coco.h5) at `coco_model_path`.

    The file comes from this project's download cache (mrcnn.weights.coco_weights_path: fetched
    once, size and SHA-256 checked) and is copied atomically, so an interrupted copy leaves
    nothing at the path.
    """
    if verbose > 0:
        print(f"Downloading pretrained model to {coco_model_path} ...", file=sys.stderr)
    cached = coco_weights_path(progress=verbose > 0)
    with atomic_path(coco_model_path) as tmp:
        shutil.copyfile(cached, tmp)
    if verbose > 0:
        print("... done downloading pretrained model!", file=sys.stderr)


def _flat_masks(masks):
    """[H, W, N] masks -> [H * W, N] float32 of 0/1 (a pixel is in where its value is > 0.5)."""
    masks = np.asarray(masks)
    return (masks > 0.5).reshape(masks.shape[0] * masks.shape[1], masks.shape[-1]) \
        .astype(np.float32)


def _float64_boxes(boxes):
    return torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
