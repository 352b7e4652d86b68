"""Matterport's import path `mrcnn.visualize`: drawing detections with matplotlib, as in its
notebooks.

Each function draws into the matplotlib axes `ax` it is given, or into a new figure (then shown
with plt.show(), as Matterport does) and returns the axes, so a script can save the figure:

    fig, ax = plt.subplots(1, figsize=(8, 8))
    visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"], class_names,
                                r["scores"], ax=ax)
    fig.savefig("detections.png")

matplotlib is an optional dependency (pip install mask-scoring-rcnn[plots]); `random_colors` and
`apply_mask` work without it. The scripts draw with OpenCV instead (postprocess.visualize).
"""
import colorsys
import random

import cv2
import numpy as np

from mrcnn.utils import compute_matches

__all__ = ["apply_mask", "display_differences", "display_images", "display_instances",
           "display_top_masks", "draw_boxes", "plot_precision_recall", "random_colors"]


def random_colors(N, bright=True):
    """N distinct RGB colours (floats in [0, 1]): hues evenly spaced, in random order."""
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / N, 1, brightness) for i in range(N)]
    random.shuffle(colors)
    return colors


def apply_mask(image, mask, color, alpha=0.5):
    """Blends `color` (RGB floats in [0, 1]) into image [H, W, 3] where mask [H, W] is 1, with
    opacity alpha; changes `image` in place and returns it."""
    inside = np.asarray(mask) == 1
    for channel in range(3):
        image[:, :, channel] = np.where(
            inside, image[:, :, channel] * (1 - alpha) + alpha * color[channel] * 255,
            image[:, :, channel])
    return image


def display_images(images, titles=None, cols=4, cmap=None, norm=None, interpolation=None):
    """Shows images [H, W(, C)] in a grid of `cols` columns, each with its title."""
    plt = _pyplot()
    titles = titles if titles is not None else [""] * len(images)
    rows = len(images) // cols + 1
    figure = plt.figure(figsize=(14, 14 * rows // cols))
    for index, (image, title) in enumerate(zip(images, titles), start=1):
        plt.subplot(rows, cols, index)
        plt.title(title, fontsize=9)
        plt.axis("off")
        plt.imshow(np.asarray(image).astype(np.uint8), cmap=cmap, norm=norm,
                   interpolation=interpolation)
    plt.show()
    return figure


def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_mask=True, show_bbox=True, colors=None,
                      captions=None):
    """Draws instances on an image: masks, outlines, dashed boxes and captions.

    boxes [N, 4] (y1, x1, y2, x2) image pixels, masks [H, W, N], class_ids [N] indices into
    class_names, scores [N] (optional), colors (one per instance; default random_colors),
    captions (one string per instance; default "class score"). Returns the axes.
    """
    count = boxes.shape[0]
    if not count:
        print("\n*** No instances to display *** \n")
    elif not boxes.shape[0] == masks.shape[-1] == class_ids.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes, {masks.shape[-1]} masks and "
                         f"{class_ids.shape[0]} class ids: there must be one of each per "
                         "instance")
    ax, auto_show = _axes(ax, figsize)
    colors = colors or random_colors(count)
    height, width = image.shape[:2]
    ax.set_ylim(height + 10, -10)   # a margin shows the area outside the image
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)

    masked_image = image.astype(np.uint32).copy()
    for i in range(count):
        if not np.any(boxes[i]):    # no box: the instance was lost, e.g. cropped out
            continue
        y1, x1, y2, x2 = boxes[i]
        if show_bbox:
            _rectangle(ax, boxes[i], colors[i], alpha=0.7, linestyle="dashed")
        if captions:
            caption = captions[i]
        else:
            score = scores[i] if scores is not None else None
            label = class_names[class_ids[i]]
            caption = f"{label} {score:.3f}" if score else label
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        mask = masks[:, :, i]
        if show_mask:
            masked_image = apply_mask(masked_image, mask, colors[i])
        _outline(ax, mask, colors[i])
    ax.imshow(masked_image.astype(np.uint8))
    _show_if(auto_show)
    return ax


def display_differences(image, gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                        pred_score, pred_mask, class_names, title="", ax=None, show_mask=True,
                        show_box=True, iou_threshold=0.5, score_threshold=0.5):
    """Ground truth (green) and predictions (red) on one image; each prediction's caption is
    "score / IoU" with its match (utils.compute_matches), or its best IoU when unmatched."""
    gt_match, pred_match, overlaps = compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    colors = [(0, 1, 0, .8)] * len(gt_match) + [(1, 0, 0, 1)] * len(pred_match)
    # compute_matches sorts the predictions by score: draw them in that order.
    order = np.argsort(pred_score)[::-1][:len(pred_match)]
    sorted_scores = np.asarray(pred_score)[order]
    captions = [""] * len(gt_match) + [
        f"{sorted_scores[i]:.2f} / "
        f"{overlaps[i, int(pred_match[i])] if pred_match[i] > -1 else overlaps[i].max():.2f}"
        for i in range(len(pred_match))]
    return display_instances(
        image, np.concatenate([gt_box[:len(gt_match)], np.asarray(pred_box)[order]]),
        np.concatenate([gt_mask[..., :len(gt_match)], np.asarray(pred_mask)[..., order]],
                       axis=-1),
        np.concatenate([gt_class_id[:len(gt_match)], np.asarray(pred_class_id)[order]]),
        class_names, np.concatenate([np.zeros(len(gt_match)), sorted_scores]), ax=ax,
        show_bbox=show_box, show_mask=show_mask, colors=colors, captions=captions,
        title=title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU")


def display_top_masks(image, mask, class_ids, class_names, limit=4):
    """The image and, for the `limit` classes covering the most pixels, their instances' masks
    (each instance numbered)."""
    class_ids = np.asarray(class_ids)
    unique_ids = np.unique(class_ids)
    areas = [mask[:, :, class_ids == class_id].sum() for class_id in unique_ids]
    ranked = [class_id for class_id, area in sorted(zip(unique_ids, areas), key=lambda p: p[1],
                                                    reverse=True) if area > 0]
    pictures = [image]
    titles = [f"H x W={image.shape[0]}x{image.shape[1]}"]
    for i in range(limit):
        class_id = ranked[i] if i < len(ranked) else -1
        instances = mask[:, :, class_ids == class_id]
        pictures.append(np.sum(instances * np.arange(1, instances.shape[-1] + 1), -1))
        titles.append(class_names[class_id] if class_id != -1 else "-")
    return display_images(pictures, titles=titles, cols=limit + 1, cmap="Blues_r")


def draw_boxes(image, boxes=None, refined_boxes=None, masks=None, captions=None,
               visibilities=None, title="", ax=None):
    """Boxes [N, 4], refined boxes [N, 4] (solid, joined to their box), masks [H, W, N] and
    captions [N]; visibilities [N] of 0 (gray, dotted), 1 (dotted) or 2 (solid). Returns the
    axes."""
    if boxes is None and refined_boxes is None:
        raise ValueError("draw_boxes needs boxes or refined_boxes")
    count = boxes.shape[0] if boxes is not None else refined_boxes.shape[0]
    ax, _ = _axes(ax, (12, 12))
    colors = random_colors(count)
    margin = image.shape[0] // 10
    ax.set_ylim(image.shape[0] + margin, -margin)
    ax.set_xlim(-margin, image.shape[1] + margin)
    ax.axis("off")
    ax.set_title(title)

    masked_image = image.astype(np.uint32).copy()
    for i in range(count):
        visibility = visibilities[i] if visibilities is not None else 1
        color = "gray" if visibility == 0 else colors[i]
        if boxes is not None:
            if not np.any(boxes[i]):
                continue
            _rectangle(ax, boxes[i], color, alpha=0.5 if visibility == 0 else 1,
                       linestyle="solid" if visibility == 2 else "dotted")
        anchor = boxes[i] if boxes is not None else None
        if refined_boxes is not None and visibility > 0:
            refined = np.asarray(refined_boxes[i]).astype(np.int32)
            _rectangle(ax, refined, color)
            if anchor is not None:
                ax.plot([anchor[1], refined[1]], [anchor[0], refined[0]], color=color)
            anchor = refined
        if captions is not None:
            ax.text(anchor[1], anchor[0], captions[i], size=11, verticalalignment="top",
                    color="w", backgroundcolor="none",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            masked_image = apply_mask(masked_image, masks[:, :, i], color if visibility else
                                      (0.5, 0.5, 0.5))
            _outline(ax, masks[:, :, i], color)
    ax.imshow(masked_image.astype(np.uint8))
    return ax


def plot_precision_recall(AP, precisions, recalls):
    """The precision-recall curve of utils.compute_ap, titled with its AP; returns the axes."""
    _, ax = _pyplot().subplots(1)
    ax.set_title(f"Precision-Recall Curve. AP@50 = {AP:.3f}")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.plot(recalls, precisions)
    return ax


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("mrcnn.visualize draws with matplotlib, which is not installed: "
                          "pip install mask-scoring-rcnn[plots] (or pip install matplotlib)"
                          ) from None
    return plt


def _axes(ax, figsize):
    """(the given axes, False), or (the axes of a new figure, True: show it when done)."""
    if ax:
        return ax, False
    _, ax = _pyplot().subplots(1, figsize=figsize)
    return ax, True


def _show_if(auto_show):
    if auto_show:
        _pyplot().show()


def _rectangle(ax, box, color, alpha=1.0, linestyle="solid"):
    from matplotlib import patches

    y1, x1, y2, x2 = box
    ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=alpha,
                                   linestyle=linestyle, edgecolor=color, facecolor="none"))


def _outline(ax, mask, color):
    """The mask's outline as polygons (a mask touching the image border is closed along it)."""
    from matplotlib.patches import Polygon

    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    padded[1:-1, 1:-1] = np.asarray(mask) > 0
    contours, _ = cv2.findContours(padded, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    for contour in contours:
        ax.add_patch(Polygon(contour[:, 0, :] - 1, facecolor="none", edgecolor=color))
