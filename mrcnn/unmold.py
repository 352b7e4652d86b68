"""Matterport's output unmolding: detections on the molded image to boxes and masks on the original.

`unmold_detections` follows `MaskRCNN.unmold_detections` and `unmold_masks` follows
`utils.unmold_mask`, batched over all instances in torch (on the detections' device) instead of
one skimage call per mask, with the same arithmetic (see mrcnn.molding.resize).
"""
import torch

from mrcnn.boxes import denorm_boxes, norm_boxes
from mrcnn.molding import resize_batch

# Upper bound on the elements of one padded [instances, box_h, box_w] float64 resize frame
# (8 MiB per temporary), so 100 full-image masks of a 1024x1024 image never sit in memory at once.
_CHUNK_ELEMENTS = 1 << 20

MASK_THRESHOLD = 0.5


def unmold_detections(detections, masks, original_shape, molded_shape, window, mask_scores=None):
    """Detections of one molded image, mapped back to the original image.

    Args:
        detections: [D, 6] (y1, x1, y2, x2 normalized in the molded image, class_id, score), as
            the detection layer gives them; rows from the first class_id 0 on are padding.
        masks: [D, h, w] soft masks (sigmoid outputs), each already taken from its row's class.
        original_shape: (H, W) or (H, W, C) of the original image.
        molded_shape: (H, W) or (H, W, C) of the molded image.
        window: (y1, x1, y2, x2) of the image inside the molded image, pixels, y2/x2 exclusive.
        mask_scores: optional [D] mask scores (class score x predicted mask IoU).

    Returns:
        dict of numpy arrays in Matterport's layout, N = detections kept:
            rois [N, 4] int32 (y1, x1, y2, x2) original-image pixels, y2/x2 exclusive;
            class_ids [N] int32; scores [N] float32; mask_scores [N] float32 (only when given);
            masks [H, W, N] bool.
        Rows whose box rounds to zero height or width are dropped, as in Matterport.
    """
    detections = torch.as_tensor(detections)
    masks = torch.as_tensor(masks, device=detections.device)
    if detections.dim() != 2 or detections.shape[1] != 6:
        raise ValueError(f"detections must have shape [D, 6], got {list(detections.shape)}")
    if masks.dim() != 3 or masks.shape[0] != detections.shape[0]:
        raise ValueError(f"masks must have shape [{detections.shape[0]}, h, w] (one soft mask per "
                         f"detection row), got {list(masks.shape)}")
    if mask_scores is not None:
        mask_scores = torch.as_tensor(mask_scores, device=detections.device)
        if mask_scores.shape != detections.shape[:1]:
            raise ValueError(f"mask_scores must have shape [{detections.shape[0]}], got "
                             f"{list(mask_scores.shape)}")

    class_ids = detections[:, 4]
    before_padding = torch.cumsum(class_ids == 0, 0) == 0
    window_y1, window_x1, window_y2, window_x2 = norm_boxes(
        torch.as_tensor(window, device=detections.device), _image_hw(molded_shape),
        torch.float64).unbind()
    shift = torch.stack([window_y1, window_x1, window_y1, window_x1])
    height, width = window_y2 - window_y1, window_x2 - window_x1
    scale = torch.stack([height, width, height, width])
    rois = denorm_boxes((detections[:, :4] - shift) / scale, _image_hw(original_shape),
                        torch.float64)
    # Matterport drops area <= 0; both sides are checked because a box inverted on both axes has
    # a positive area but no pixels (Matterport could not unmold it either).
    keep = before_padding & (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])

    rois = rois[keep]
    result = {
        "rois": rois.cpu().numpy(),
        "class_ids": class_ids[keep].to(torch.int32).cpu().numpy(),
        "scores": detections[keep, 5].to(torch.float32).cpu().numpy(),
    }
    if mask_scores is not None:
        result["mask_scores"] = mask_scores[keep].to(torch.float32).cpu().numpy()
    result["masks"] = unmold_masks(masks[keep], rois, original_shape).cpu().numpy()
    return result


def unmold_masks(masks, boxes, image_shape):
    """Matterport's `utils.unmold_mask` for N masks at once.

    Each soft mask is resized to its box with skimage's order-1 arithmetic (float32 stays
    float32, clipped to the mask's own [min, max]), thresholded with `>= 0.5` and pasted
    into an image-sized mask. Box parts outside the image are cut off.

    Args:
        masks: [N, h, w] soft masks.
        boxes: [N, 4] int (y1, x1, y2, x2) image pixels, y2/x2 exclusive, positive size.
        image_shape: (H, W) or (H, W, C).

    Returns:
        [H, W, N] bool tensor on the masks' device.
    """
    masks = torch.as_tensor(masks)
    boxes = torch.as_tensor(boxes, device=masks.device)
    image_h, image_w = (int(v) for v in image_shape[:2])
    count = masks.shape[0]
    if masks.dim() != 3 or boxes.shape != (count, 4):
        raise ValueError(f"expected masks [N, h, w] and boxes [N, 4], got {list(masks.shape)} and "
                         f"{list(boxes.shape)}")
    # One spare row and column (cut off at the end) receive every frame position outside its
    # box or outside the image, so each chunk is pasted with a single broadcast index_put.
    full = torch.zeros((image_h + 1, image_w + 1, count), dtype=torch.bool, device=masks.device)
    if count == 0:
        return full[:image_h, :image_w].contiguous()
    boxes = boxes.to(torch.int64)
    sizes = boxes[:, 2:] - boxes[:, :2]
    if bool((sizes <= 0).any()):
        raise ValueError("every box needs a positive height and width to unmold its mask")

    # Largest boxes first, so each chunk's padded frame stays close to its members' own sizes;
    # bounds[i] is the largest (h, w) from i on, which caps the frame of a chunk starting at i.
    order = torch.argsort(sizes[:, 0] * sizes[:, 1], descending=True)
    bounds = sizes[order].flip(0).cummax(0).values.flip(0)
    bound_areas = (bounds[:, 0] * bounds[:, 1]).tolist()
    start = 0
    while start < count:
        members = order[start:start + max(1, _CHUNK_ELEMENTS // bound_areas[start])]
        # The frame's padding is 0, so it never reaches the threshold.
        foreground = resize_batch(masks[members], sizes[members]) >= MASK_THRESHOLD
        ys = _frame_coordinates(boxes[members, 0], sizes[members, 0], foreground.shape[1],
                                image_h)
        xs = _frame_coordinates(boxes[members, 1], sizes[members, 1], foreground.shape[2],
                                image_w)
        full[ys[:, :, None], xs[:, None, :], members[:, None, None]] = foreground
        start += members.numel()
    return full[:image_h, :image_w].contiguous()


def _image_hw(shape):
    return [int(v) for v in shape[:2]]


def _frame_coordinates(starts, lengths, frame, limit):
    """[n, frame] image coordinates of frame positions; `limit` (the spare line) where a
    position lies beyond its box's length or outside [0, limit)."""
    coordinates = starts[:, None] + torch.arange(frame, device=starts.device)
    valid = (torch.arange(frame, device=starts.device) < lengths[:, None])
    valid &= (coordinates >= 0) & (coordinates < limit)
    return torch.where(valid, coordinates, torch.full_like(coordinates, limit))
