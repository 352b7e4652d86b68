"""Draws every stage of Mask Scoring R-CNN on one image as PNGs (Matterport's inspect_model and
inspect_data notebooks as a command). Run `python -m postprocess.inspect --help`."""
import argparse
import math
import sys
from typing import NamedTuple

import numpy as np
import torch

from mrcnn.boxes import apply_box_deltas, denorm_boxes
from mrcnn.cli import (CliError, add_model_arguments, build_config, check_no_overwrite, drawable,
                       error_message, load_model, make_out_dir, reports_errors, resolve_device)
from mrcnn.config import backbone_shapes
from preprocess.coco import DatasetError
from preprocess.images import ImageLoadError, load_image
from preprocess.masks import expand_mask
from preprocess.splits import check_class_count, open_split
from preprocess.training_data import LOAD_ERRORS, collate, load_image_gt
from mrcnn.unmold import unmold_masks
from postprocess.visualize import (draw_boxes, draw_caption, draw_instances, format_labels,
                                   instance_colors, line_width, score_colors, write_png)

DEFAULT_TOP = 50
DEFAULT_OUT = "inspect"
# A level's grid of anchor centres is thinned to at most this many dots per axis.
GRID_DOTS = 16
DOT_COLOR = (255, 255, 255)
# Output files after the per-level anchors_p<level>.png, in pipeline order.
BEFORE_NMS = "proposals_before_nms.png"
AFTER_NMS = "proposals_after_nms.png"
ROIS = "rois.png"
DETECTIONS = "detections.png"
# With a dataset, after those.
GROUND_TRUTH = "ground_truth.png"
RPN_POSITIVE = "rpn_targets_positive.png"
RPN_NEGATIVE = "rpn_targets_negative.png"
DETECTION_TARGETS = "detection_targets.png"
POSITIVE_COLOR = (0, 255, 0)
NEGATIVE_COLOR = (255, 0, 0)

DESCRIPTION = """\
Runs Mask Scoring R-CNN on one image and draws each stage of the network as a PNG in --out, with
a short title on the image; one line per PNG written says in full what it shows.

Network stages are drawn on the molded image (resized and padded as the model sees it, e.g.
1024x1024 for COCO); the final detections on the input image, at its own size:

  anchors_p2.png ... anchors_p6.png
      one per pyramid level: the anchors of the level's centre cell (one box per aspect ratio)
      and, as dots, the anchor centres of a thinned grid of its cells; the title gives the
      level's stride, anchor scale and anchor count
  proposals_before_nms.png
      the --top anchors of highest RPN foreground score: the anchor dashed, the box the RPN
      refines it into solid, a line between them; colour by score, blue (lowest) to red
  proposals_after_nms.png
      the --top best proposals that NMS keeps, coloured by score the same way
  rois.png
      the --top proposals the box head classifies as objects, by class score: the proposal
      dashed, its refinement by the class's box deltas solid, labelled 'class score'
  detections.png
      the final detections on the input image: masks, boxes and 'class score (mask score)'
      labels (mask scores only when the weights have a trained MaskIoU head)

With a dataset image, also what training sees and learns from it (Matterport's load_image_gt,
RPN targets and DetectionTargetLayer, sampled at random with --seed):

  ground_truth.png
      the instances of the image as training loads them: masks (from the mini-masks when
      USE_MINI_MASK), boxes and class names; crowd regions marked '(crowd)'
  rpn_targets_positive.png
      the positive anchors (IoU >= 0.7 with an instance, or an instance's best anchor), dashed,
      each moved by its regression target (solid, onto its instance's box)
  rpn_targets_negative.png
      the negative anchors (IoU < 0.3 with every instance)
  detection_targets.png
      the positive training ROIs (IoU >= 0.5) sampled from the training proposals, dashed, each
      moved by its box target (solid) and filled with its mask target, labelled with its class

The image is either a file (--image) or one image of a COCO-format dataset: --dataset DIR
--split NAME --image-id ID reads DIR/annotations/instances_NAME.json and the image with COCO id
ID from DIR/NAME/ (the layout of COCO 2017 and of python -m preprocess.synthetic); the model's
NUM_CLASSES must then fit the dataset. Existing files of the same names in --out are replaced
(each PNG is written atomically)."""

EPILOG = """\
examples:
  python -m postprocess.inspect --image photo.jpg --out inspect_photo
  python -m postprocess.inspect --image photo.jpg --weights mask_rcnn_coco.h5 --top 20
  python -m postprocess.inspect --image img.png --weights shapes.pth --device cpu --out insp
  python -m postprocess.inspect --dataset data/shapes --split val --image-id 3 \\
      --weights shapes.pth"""


class Picture(NamedTuple):
    """One PNG to write: its file name, the [H, W, 3] uint8 RGB image, a title drawn on it and
    details printed after the title."""
    name: str
    image: np.ndarray
    title: str
    details: str


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m postprocess.inspect", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("the image (--image, or --dataset, --split and "
                                       "--image-id)")
    source.add_argument("--image", metavar="IMG",
                        help="the image file to inspect (JPEG, PNG, BMP, TIFF, ...)")
    source.add_argument("--dataset", metavar="DIR",
                        help="a COCO-format dataset directory (DIR/annotations/"
                             "instances_<split>.json, images in DIR/<split>/)")
    source.add_argument("--split", metavar="NAME",
                        help="the split of --dataset: val2017, train2017, minival2014, val, ...")
    source.add_argument("--image-id", type=int, metavar="ID",
                        help="the COCO image id (the 'id' of the annotation file's image entry) "
                             "of the dataset image to inspect")
    add_model_arguments(parser)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for the PNGs, created if needed (default: {DEFAULT_OUT})")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                        help="how many anchors, proposals and ROIs to draw in each of those "
                             f"pictures, best first (default: {DEFAULT_TOP})")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the random sampling of the training targets drawn with "
                             "--dataset (default: 0)")
    return parser


def molded_display(molded, mean_pixel):
    """The molded image [H, W, 3] (pixels minus MEAN_PIXEL) as [H, W, 3] uint8 RGB to draw on."""
    pixels = molded.astype(np.float64) + np.asarray(mean_pixel, dtype=np.float64)
    return pixels.round().clip(0, 255).astype(np.uint8)


def to_pixels(boxes, image_hw):
    """Normalised boxes [..., 4] (numpy or tensor) -> int64 numpy pixel boxes (y2, x2
    exclusive)."""
    pixels = denorm_boxes(boxes, image_hw)
    return (pixels.cpu().numpy() if torch.is_tensor(pixels) else pixels).astype(np.int64)


def image_result(stages, index):
    """Image `index`'s final detections from model.run_stages, as model.detect returns them."""
    return {name: stages[f"{name}_{index}"]
            for name in ("rois", "class_ids", "scores", "mask_scores", "masks")}


def anchor_file(level):
    return f"anchors_p{level}.png"


def output_names(config, with_dataset=False):
    """The file names written for a model config, in the order they are written."""
    levels = range(2, 2 + len(config.BACKBONE_STRIDES))
    names = [anchor_file(level) for level in levels] + [BEFORE_NMS, AFTER_NMS, ROIS, DETECTIONS]
    if with_dataset:
        names += [GROUND_TRUTH, RPN_POSITIVE, RPN_NEGATIVE, DETECTION_TARGETS]
    return names


def anchor_grids(config, image_hw):
    """(rows, columns) of anchor positions of each pyramid level for a molded image size."""
    stride = config.RPN_ANCHOR_STRIDE
    return [(math.ceil(h / stride), math.ceil(w / stride))
            for h, w in backbone_shapes(image_hw, config.BACKBONE_STRIDES)]


def anchor_pictures(canvas, anchors, config):
    """One Picture per pyramid level from the model's anchors [A, 4] (pixels, levels P2.. in
    order, rows y, x, ratio): the centre cell's anchors and a thinned grid of anchor centres."""
    ratios = config.RPN_ANCHOR_RATIOS
    grids = anchor_grids(config, canvas.shape[:2])
    counts = [rows * cols * len(ratios) for rows, cols in grids]
    if sum(counts) != len(anchors):
        raise ValueError(f"{len(anchors)} anchors, but the config's levels have {sum(counts)}")
    dot = line_width(canvas)
    pictures = []
    levels = zip(np.split(anchors, np.cumsum(counts)[:-1]), grids, config.BACKBONE_STRIDES,
                 config.RPN_ANCHOR_SCALES)
    for level, (level_anchors, (rows, cols), stride, scale) in enumerate(levels, start=2):
        cells = level_anchors.reshape(rows, cols, len(ratios), 4)
        step = math.ceil(max(rows, cols) / GRID_DOTS)
        first_ratio = cells[::step, ::step, 0].reshape(-1, 4)
        centres = (first_ratio[:, :2] + first_ratio[:, 2:]) // 2
        dots = np.concatenate([centres - dot, centres + dot + 1], axis=1)
        drawn = draw_boxes(canvas, dots, DOT_COLOR, thickness=dot + 1)
        centre = cells[rows // 2, cols // 2]
        drawn = draw_boxes(drawn, centre, instance_colors(np.arange(len(ratios))))
        every = "every cell's" if step == 1 else f"every {ordinal(step)} cell's"
        outside = ((centre[:, :2] < 0) | (centre[:, 2:] > canvas.shape[:2])).any()
        title = f"P{level}: stride {stride}, scale {scale}, {len(level_anchors)} anchors"
        details = (f"{rows}x{cols} cells x {len(ratios)} ratios. Boxes: the anchors of the "
                   f"centre cell, width/height {', '.join(map(str, ratios))}"
                   f"{' (reaching outside the image)' if outside else ''}; dots: {every} centre")
        pictures.append(Picture(anchor_file(level), drawn, title, details))
    return pictures


def ordinal(n):
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def proposal_pictures(canvas, stages, config, top):
    """Pictures of the RPN's best anchors before NMS (with their refinement) and of the best
    proposals NMS keeps, coloured by score (`stages`: model.run_stages of one image)."""
    image_hw = canvas.shape[:2]
    scores = stages["rpn_candidate_scores"][0, :top]
    anchor_count = stages["anchors"].shape[1]
    anchors = to_pixels(stages["anchors"][0, stages["rpn_candidate_ids"][0, :top]], image_hw)
    refined = to_pixels(stages["rpn_candidate_boxes"][0, :top], image_hw)
    before = draw_boxes(canvas, anchors, score_colors(scores), refined_boxes=refined)
    title = f"RPN: top {len(scores)} anchors before NMS"
    details = (f"the {len(scores)} of {anchor_count} anchors with the highest "
               f"foreground score{score_range(scores)}. Dashed: anchor; solid: refined by the "
               "RPN's deltas and clipped to the image; colour: score, blue (lowest) to red")
    kept = stages["rpn_roi_anchor_ids"][0] >= 0
    kept_scores = stages["rpn_roi_scores"][0, kept][:top]
    after = draw_boxes(canvas, to_pixels(stages["rpn_rois"][0, kept][:top], image_hw),
                       score_colors(kept_scores))
    after_title = f"Proposals: top {len(kept_scores)} after NMS"
    after_details = (f"the best {len(kept_scores)} of the {int(kept.sum())} "
                     f"proposals that NMS (IoU {config.RPN_NMS_THRESHOLD}) keeps of the "
                     f"{config.PRE_NMS_LIMIT} best anchors{score_range(kept_scores)}; colour: "
                     "score, blue (lowest) to red")
    return [Picture(BEFORE_NMS, before, title, details),
            Picture(AFTER_NMS, after, after_title, after_details)]


def counted(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def score_range(scores):
    if len(scores) == 0:
        return ""
    return f" ({scores.min():.3f} to {scores.max():.3f})"


def roi_picture(canvas, stages, class_names, top):
    """The best proposals the box head classifies as objects, with their class refinement."""
    image_hw = canvas.shape[:2]
    proposals = stages["rpn_roi_anchor_ids"][0] >= 0
    objects = np.flatnonzero(proposals & (stages["roi_class_ids"][0] > 0))
    objects = objects[np.argsort(-stages["roi_scores"][0, objects], kind="stable")]
    shown = objects[:top]
    class_ids = stages["roi_class_ids"][0, shown]
    scores = stages["roi_scores"][0, shown]
    drawn = draw_boxes(canvas, to_pixels(stages["rpn_rois"][0, shown], image_hw),
                       instance_colors(class_ids),
                       labels=format_labels(class_ids, scores, class_names),
                       refined_boxes=to_pixels(stages["roi_refined_boxes"][0, shown], image_hw))
    title = f"Box head: top {len(class_ids)} object ROIs"
    details = (f"the best {len(class_ids)} of the {len(objects)} of {int(proposals.sum())} "
               "proposals classified as objects, by class score. Dashed: proposal; solid: "
               "refined by its class's deltas and clipped to the image window; label: class "
               "score")
    return Picture(ROIS, drawn, title, details)


def detection_picture(image, result, model, class_names):
    """The final detections on the input image (mask scores only from a trained MaskIoU head)."""
    config = model.config
    shown = drawable(result, model)
    drawn = draw_instances(image, shown, class_names)
    count = len(result["class_ids"])
    labels = ("class score (mask score)" if "mask_scores" in shown
              else "class score (no mask scores: the MaskIoU head is untrained)")
    title = counted(count, "detection")
    details = (f"class score >= {config.DETECTION_MIN_CONFIDENCE}, NMS IoU "
               f"{config.DETECTION_NMS_THRESHOLD} per class, on the input image; label: {labels}")
    return Picture(DETECTIONS, drawn, title, details)


def training_sample(dataset, index, config, seed):
    """Image `index` of the dataset as training loads it (load_image_gt, no flip), batched."""
    try:
        sample = load_image_gt(dataset, index, config, rng=np.random.default_rng(seed))
    except FileNotFoundError:
        raise
    except LOAD_ERRORS as error:
        raise CliError(error_message(error)) from None
    return sample, collate([sample], config.MEAN_PIXEL)


def ground_truth_picture(sample, config, class_names):
    """The sample's instances on its (molded-size) image, masks expanded from mini-masks."""
    image, boxes, class_ids = sample["image"], sample["boxes"], sample["class_ids"]
    masks = sample["masks"].transpose(1, 2, 0)
    if config.USE_MINI_MASK:
        masks = expand_mask(boxes, masks, image.shape)
    # Crowd regions (negative ids) get names of their own after the classes'.
    names = list(class_names) + [f"{name} (crowd)" for name in class_names]
    shown = np.where(class_ids < 0, len(class_names) - class_ids, class_ids)
    drawn = draw_instances(image, {"rois": boxes, "class_ids": shown, "masks": masks}, names)
    crowds = int((class_ids < 0).sum())
    title = f"Ground truth: {counted(len(class_ids), 'instance')}"
    mini = ("from the " + "x".join(map(str, config.MINI_MASK_SHAPE)) + " mini-masks"
            if config.USE_MINI_MASK else "full size")
    details = (f"as training loads them (load_image_gt, not flipped), resized like the molded "
               f"image; masks {mini}; {counted(crowds, 'crowd region')}")
    return Picture(GROUND_TRUTH, drawn, title, details)


def rpn_target_pictures(canvas, anchors, match, deltas, config):
    """The positive anchors moved by their regression targets, and the negative anchors.

    anchors [A, 4] float pixels, match [A] (1 positive, -1 negative, 0 neutral) and deltas
    [RPN_TRAIN_ANCHORS_PER_IMAGE, 4] (the positives' targets in anchor order, divided by
    RPN_BBOX_STD_DEV) of one image, as mrcnn.targets.rpn_targets gives them.
    """
    positive = torch.nonzero(match == 1).squeeze(1)
    negative = torch.nonzero(match == -1).squeeze(1)
    std = anchors.new_tensor(config.RPN_BBOX_STD_DEV)
    moved = apply_box_deltas(anchors[positive], deltas[:len(positive)].to(anchors.dtype) * std)
    pixels = lambda boxes: boxes.round().to(torch.int64).cpu().numpy()  # noqa: E731
    drawn = draw_boxes(canvas, pixels(anchors[positive]), POSITIVE_COLOR,
                       refined_boxes=pixels(moved))
    title = f"RPN targets: {counted(len(positive), 'positive anchor')}"
    details = (f"IoU >= 0.7 with an instance or an instance's best anchor, at most "
               f"{config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2} sampled. Dashed: anchor; solid: the "
               "anchor moved by its regression target (onto its instance's box)")
    negative_drawn = draw_boxes(canvas, pixels(anchors[negative]), NEGATIVE_COLOR, thickness=1)
    neutral = len(anchors) - len(positive) - len(negative)
    negative_title = f"RPN targets: {counted(len(negative), 'negative anchor')}"
    negative_details = (f"IoU < 0.3 with every instance, sampled to fill "
                        f"{config.RPN_TRAIN_ANCHORS_PER_IMAGE} with the positives; {neutral} "
                        f"of the {len(anchors)} anchors are neutral (not trained)")
    return [Picture(RPN_POSITIVE, drawn, title, details),
            Picture(RPN_NEGATIVE, negative_drawn, negative_title, negative_details)]


def detection_target_picture(canvas, rois, class_ids, deltas, masks, config, class_names):
    """The positive training ROIs, moved by their box targets and filled with their mask
    targets.

    rois [T, 4] normalised, class_ids [T], deltas [T, 4] (divided by BBOX_STD_DEV) and masks
    [T, h, w] of one image, as mrcnn.targets.detection_targets gives them (positives first,
    then negatives, then all-zero padding).
    """
    image_hw = canvas.shape[:2]
    positive = torch.nonzero(class_ids > 0).squeeze(1)
    negatives = int(((rois != 0).any(dim=1) & (class_ids == 0)).sum())
    moved = apply_box_deltas(rois[positive],
                             deltas[positive] * rois.new_tensor(config.BBOX_STD_DEV))
    roi_pixels = to_pixels(rois[positive], image_hw)
    # A mask target fills its ROI; a ROI rounded to no pixels pastes into one.
    paste_boxes = np.concatenate([roi_pixels[:, :2], np.maximum(roi_pixels[:, 2:],
                                                                roi_pixels[:, :2] + 1)], axis=1)
    pasted = unmold_masks(masks[positive], paste_boxes, image_hw).cpu().numpy()
    positive_classes = class_ids[positive].cpu().numpy()
    filled = draw_instances(canvas, {"rois": paste_boxes, "class_ids": positive_classes,
                                     "masks": pasted}, class_names, show_boxes=False,
                            show_labels=False, color_by="class")
    drawn = draw_boxes(filled, roi_pixels, instance_colors(positive_classes),
                       labels=format_labels(positive_classes, None, class_names),
                       refined_boxes=to_pixels(moved, image_hw))
    title = f"Detection targets: {counted(len(positive), 'positive ROI')}"
    details = (f"IoU >= 0.5 with an instance, sampled with {counted(negatives, 'negative')} "
               f"(not drawn) from {config.POST_NMS_ROIS_TRAINING} training proposals, "
               f"{config.TRAIN_ROIS_PER_IMAGE} ROIs at most, {config.ROI_POSITIVE_RATIO:.0%} "
               "positive. Dashed: ROI; solid: moved by its box target (onto its instance's box); "
               "fill: its mask target; label: its class")
    return Picture(DETECTION_TARGETS, drawn, title, details)


@torch.inference_mode()
def dataset_pictures(model, dataset, index, stages, class_names, seed):
    """Pictures of the ground truth and the training targets of dataset image `index`, sampled
    with `seed`; `stages` are model.run_stages' of the same image (the training proposals are
    made from its RPN outputs)."""
    from mrcnn.training import TrainingModel

    config = model.config
    sample, batch = training_sample(dataset, index, config, seed)
    canvas = sample["image"]
    image_hw = canvas.shape[:2]
    device = model.device
    trainer = TrainingModel(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    match, rpn_deltas, targets = trainer.targets(
        torch.from_numpy(stages["rpn_class"]).to(device),
        torch.from_numpy(stages["rpn_bbox"]).to(device), batch["gt_class_ids"].to(device),
        batch["gt_boxes"].to(device), batch["gt_masks"].to(device), image_hw, generator)
    return ([ground_truth_picture(sample, config, class_names)]
            + rpn_target_pictures(canvas, trainer.anchors_in_pixels(image_hw, device), match[0],
                                  rpn_deltas[0], config)
            + [detection_target_picture(canvas, targets.rois[0], targets.class_ids[0],
                                        targets.deltas[0], targets.masks[0], config,
                                        class_names)])


def inspect_pictures(model, image, top, class_names, dataset=None, index=None, seed=0):
    """Every Picture of the inference graph on one [H, W, 3] uint8 RGB image and, for image
    `index` of a dataset, of its ground truth and training targets."""
    config = model.config
    stages = model.run_stages([image])
    canvas = molded_display(stages["molded_images"][0], config.MEAN_PIXEL)
    anchors = to_pixels(stages["anchors"][0], canvas.shape[:2])
    pictures = (anchor_pictures(canvas, anchors, config)
                + proposal_pictures(canvas, stages, config, top)
                + [roi_picture(canvas, stages, class_names, top),
                   detection_picture(image, image_result(stages, 0), model, class_names)])
    if dataset is not None:
        pictures += dataset_pictures(model, dataset, index, stages, class_names, seed)
    return pictures


def write_pictures(pictures, out_dir):
    """Writes each Picture with its title drawn on it; prints 'path: title: details' per file."""
    for picture in pictures:
        path = out_dir / picture.name
        try:
            write_png(path, draw_caption(picture.image, picture.title))
        except OSError as error:
            raise CliError(f"cannot write {path}: {error_message(error)}") from None
        print(f"{path}: {picture.title}: {picture.details}", flush=True)


def check_arguments(args, parser):
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    dataset_options = [f"--{name.replace('_', '-')}" for name in ("dataset", "split", "image_id")
                       if getattr(args, name) is not None]
    if args.image is not None and dataset_options:
        parser.error(f"--image takes the image from a file: leave out {', '.join(dataset_options)}")
    if args.image is None and len(dataset_options) < 3:
        parser.error("give the image as --image IMG, or as --dataset DIR --split NAME "
                     "--image-id ID")


def dataset_index(dataset, image_id):
    """The dataset index of COCO image id `image_id`; CliError when the dataset lacks it."""
    try:
        return dataset.coco_image_ids.index(image_id)
    except ValueError:
        ids = dataset.coco_image_ids
        held = (f"its {len(ids)} images have ids {ids[0]} to {ids[-1]}" if ids
                else "it has no images")
        raise CliError(f"{dataset.annotation_json} has no image with id {image_id}; "
                       f"{held}") from None


def read_dataset_image(dataset, index):
    try:
        return dataset.load_image(index)
    except FileNotFoundError:
        raise
    except (DatasetError, ImageLoadError, OSError) as error:
        raise CliError(error_message(error)) from None


def read_image(path):
    try:
        return load_image(path)
    except FileNotFoundError:
        raise
    except (ImageLoadError, OSError) as error:
        raise CliError(error_message(error)) from None


@reports_errors
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(args, parser)
    if args.image is not None:
        dataset, index, image_path = None, None, args.image
        image = read_image(image_path)
    else:
        dataset = open_split(args.dataset, args.split)
        index = dataset_index(dataset, args.image_id)
        image_path = dataset.image_info(index).path
        image = read_dataset_image(dataset, index)
    out_dir = make_out_dir(args.out)
    device = resolve_device(args.device)
    config = build_config(args.config, args.weights)
    if config.IMAGE_RESIZE_MODE == "crop":
        raise CliError("IMAGE_RESIZE_MODE 'crop' takes random crops for training; inspect with a "
                       "--config that molds images with 'square', 'pad64' or 'none'")
    class_names = config.class_names()
    if dataset is not None:
        check_class_count(config, dataset)
        class_names = config.CLASS_NAMES or dataset.class_names
    check_no_overwrite(out_dir, output_names(config, dataset is not None), [image_path])
    model = load_model(config, args.weights, device)
    write_pictures(inspect_pictures(model, image, args.top, class_names, dataset, index, args.seed),
                   out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
