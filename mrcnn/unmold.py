"""Matterport's output unmolding: detections on the molded image to boxes and masks on the original.

`unmold_batch` follows `MaskRCNN.unmold_detections` and `unmold_masks` follows `utils.unmold_mask`,
batched over all instances in torch instead of one skimage call per mask, with the same arithmetic
(see mrcnn.molding.resize).

On CUDA the work stays on the GPU and the host waits twice per batch: once for the per-detection
values (a few hundred numbers: the boxes decide how the masks are pasted) and once for the pasted
masks, which are copied into pinned host memory without a wait per image. The mask resize runs
in float64, as skimage's does: float32 arithmetic moves soft-mask values near the 0.5 threshold
by a few units in the last place, enough to flip about one pixel in 10^7 (2 of 8.9e7 pixels on
2,000 random sigmoid masks), so it could not promise Matterport's pixels.
"""
import numpy as np
import torch

from mrcnn.boxes import denorm_boxes, norm_boxes
from mrcnn.molding import resize_to_frame, to_device

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
    if detections.dim() != 2 or detections.shape[1] != 6:
        raise ValueError(f"detections must have shape [D, 6], got {list(detections.shape)}")
    rows = torch.arange(len(detections), device=detections.device)
    return unmold_batch(detections[None], masks, rows, [original_shape], molded_shape, [window],
                        mask_scores)[0]


def unmold_batch(detections, masks, mask_rows, original_shapes, molded_shape, windows,
                 mask_scores=None):
    """`unmold_detections` for the B molded images of one batch (the outputs of
    MaskScoringRCNN.infer), with two waits for the device in all.

    Args:
        detections: [B, D, 6] as for unmold_detections.
        masks: [R, h, w] soft masks of the detection rows mask_rows.
        mask_rows: [R] flat row indices b * D + i; every row before its image's padding needs
            one (padding rows may have one too).
        original_shapes: B shapes (H, W) or (H, W, C) of the original images.
        molded_shape: (H, W) or (H, W, C) of the molded images.
        windows: [B, 4] windows as for unmold_detections.
        mask_scores: optional [R] mask scores of the rows mask_rows.

    Returns:
        a list of B result dicts as unmold_detections gives them.
    """
    detections = torch.as_tensor(detections)
    device = detections.device
    masks = torch.as_tensor(masks, device=device)
    mask_rows = torch.as_tensor(mask_rows, device=device)
    if detections.dim() != 3 or detections.shape[2] != 6:
        raise ValueError(f"detections must have shape [B, D, 6], got {list(detections.shape)}")
    batch, count = detections.shape[:2]
    if mask_rows.dim() != 1 or masks.dim() != 3 or masks.shape[0] != len(mask_rows):
        raise ValueError(f"masks must have shape [{len(mask_rows)}, h, w] (one soft mask per "
                         f"detection row), got {list(masks.shape)}")
    if mask_scores is not None:
        mask_scores = torch.as_tensor(mask_scores, device=device)
        if mask_scores.shape != mask_rows.shape:
            raise ValueError(f"mask_scores must have shape [{len(mask_rows)}], got "
                             f"{list(mask_scores.shape)}")
    if len(original_shapes) != batch or len(windows) != batch:
        raise ValueError(f"expected {batch} original shapes and windows (one per image), got "
                         f"{len(original_shapes)} and {len(windows)}")

    rows = _host_rows(detections, mask_rows, mask_scores)  # the first wait
    results, pasted = [], []
    for b, (original_shape, window) in enumerate(zip(original_shapes, windows)):
        image_rows = rows[b * count:(b + 1) * count]
        result, keep = _unmold_rows(image_rows, original_shape, molded_shape, window,
                                    mask_scores is not None)
        positions = image_rows[keep, 7].to(torch.int64)
        if bool((positions < 0).any()):
            raise ValueError(f"image {b}: a detection row before the padding has no mask in "
                             "mask_rows")
        pasted.append(_paste_masks(masks, positions, result["rois"], original_shape))
        results.append(result)
    for result, masks_on_host in zip(results, _copy_to_host(pasted)):  # the second wait
        result["masks"] = masks_on_host
    return results


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
    boxes = torch.as_tensor(boxes).cpu()
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected masks [N, h, w] and boxes [N, 4], got {list(masks.shape)} and "
                         f"{list(boxes.shape)}")
    return _paste_masks(masks, torch.arange(len(masks)), boxes.numpy(), image_shape).contiguous()


def _host_rows(detections, mask_rows, mask_scores):
    """[B * D, 8] float64 on the host: each detection row's 6 values, its mask score (NaN when
    none) and the position of its mask in mask_rows (-1 when none), in one copy."""
    flat = detections.reshape(-1, 6).to(torch.float64)
    extra = flat.new_full((len(flat), 2), float("nan"))
    extra[:, 1] = -1
    if mask_scores is not None:
        extra[mask_rows, 0] = mask_scores.to(torch.float64)
    extra[mask_rows, 1] = torch.arange(len(mask_rows), device=flat.device, dtype=torch.float64)
    return torch.cat([flat, extra], dim=1).cpu()


def _unmold_rows(rows, original_shape, molded_shape, window, with_mask_scores):
    """The result dict of one image, masks aside, from its host rows [D, 8] (see _host_rows);
    and which rows it keeps. Matterport's arithmetic: float32 box shift and scale, float64
    rounding to pixels."""
    class_ids = rows[:, 4]
    before_padding = torch.cumsum(class_ids == 0, 0) == 0
    window_y1, window_x1, window_y2, window_x2 = norm_boxes(
        torch.as_tensor(window).cpu(), _image_hw(molded_shape), torch.float64).unbind()
    shift = torch.stack([window_y1, window_x1, window_y1, window_x1])
    height, width = window_y2 - window_y1, window_x2 - window_x1
    scale = torch.stack([height, width, height, width])
    boxes = rows[:, :4].to(torch.float32)
    rois = denorm_boxes((boxes - shift) / scale, _image_hw(original_shape), torch.float64)
    # Matterport drops area <= 0; both sides are checked because a box inverted on both axes has
    # a positive area but no pixels (Matterport could not unmold it either).
    keep = before_padding & (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])
    result = {
        "rois": rois[keep].numpy(),
        "class_ids": class_ids[keep].to(torch.int32).numpy(),
        "scores": rows[keep, 5].to(torch.float32).numpy(),
    }
    if with_mask_scores:
        result["mask_scores"] = rows[keep, 6].to(torch.float32).numpy()
    return result, keep


def _paste_masks(masks, positions, boxes, image_shape):
    """[H, W, N] bool on the masks' device: masks[positions[i]] unmolded into boxes[i].

    positions: [N] int64 CPU tensor; boxes: [N, 4] integer numpy array. The chunks are planned
    on the host from the boxes, so the device never waits for the host here."""
    image_h, image_w = (int(v) for v in image_shape[:2])
    count = len(positions)
    device = masks.device
    # One spare row and column (cut off at the end) receive every frame position outside its
    # box or outside the image, so each chunk is pasted with a single broadcast index_put.
    full = torch.zeros((image_h + 1, image_w + 1, count), dtype=torch.bool, device=device)
    if count == 0:
        return full[:image_h, :image_w]
    boxes = np.asarray(boxes, dtype=np.int64)
    sizes = boxes[:, 2:] - boxes[:, :2]
    if (sizes <= 0).any():
        raise ValueError("every box needs a positive height and width to unmold its mask")

    # Largest boxes first, so each chunk's padded frame stays close to its members' own sizes;
    # bounds[i] is the largest (h, w) from i on, which caps the frame of a chunk starting at i.
    order = np.argsort(-(sizes[:, 0] * sizes[:, 1]), kind="stable")
    bounds = np.maximum.accumulate(sizes[order][::-1], axis=0)[::-1]
    # Per instance, largest first: its column in `full`, its mask, its box's y1, x1, h, w.
    plan = to_device(np.concatenate([order[:, None], positions.numpy()[order, None],
                                     boxes[order, :2], sizes[order]], axis=1), device)
    start = 0
    while start < count:
        end = min(count, start + max(1, _CHUNK_ELEMENTS // int(bounds[start].prod())))
        members, sources, corners, chunk_sizes = plan[start:end].split([1, 1, 2, 2], dim=1)
        members = members[:, 0]
        frame_hw = tuple(int(v) for v in bounds[start])
        # The frame's padding is 0, so it never reaches the threshold.
        foreground = resize_to_frame(masks[sources[:, 0]], chunk_sizes, frame_hw) >= MASK_THRESHOLD
        ys = _frame_coordinates(corners[:, 0], chunk_sizes[:, 0], frame_hw[0], image_h)
        xs = _frame_coordinates(corners[:, 1], chunk_sizes[:, 1], frame_hw[1], image_w)
        full[ys[:, :, None], xs[:, None, :], members[:, None, None]] = foreground
        start = end
    return full[:image_h, :image_w]


def _copy_to_host(tensors):
    """Numpy copies of device tensors. From CUDA: one pinned buffer each, filled without waiting,
    then a single wait for all of them."""
    if not tensors or tensors[0].device.type != "cuda":
        return [tensor.cpu().contiguous().numpy() for tensor in tensors]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
            for t in tensors]
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [tensor.numpy() for tensor in host]


def _image_hw(shape):
    return [int(v) for v in shape[:2]]


def _frame_coordinates(starts, lengths, frame, limit):
    """[n, frame] image coordinates of frame positions; `limit` (the spare line) where a
    position lies beyond its box's length or outside [0, limit)."""
    coordinates = starts[:, None] + torch.arange(frame, device=starts.device)
    valid = (torch.arange(frame, device=starts.device) < lengths[:, None])
    valid &= (coordinates >= 0) & (coordinates < limit)
    return torch.where(valid, coordinates, torch.full_like(coordinates, limit))
