"""MaskScoringRCNN: Matterport's Mask R-CNN inference graph plus the MaskIoU head."""
import contextlib
from collections import defaultdict
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mrcnn.anchors import AnchorCache
from mrcnn.backbone import FPN, ResNet
from mrcnn.boxes import norm_boxes
from mrcnn.config import Config
from mrcnn.detection import DetectionLayer
from mrcnn.heads import BoxHead, MaskHead, MaskIoUHead, PyramidROIAlign
from mrcnn.images import to_rgb_uint8
from mrcnn.molding import mold_inputs, molded_shape
from mrcnn.precision import Precision, check_precision
from mrcnn.rpn import RPN, ProposalLayer
from mrcnn.unmold import unmold_batch
from mrcnn.weights import checkpoint_config, describe_weights, is_keras_file, load_weights


class MaskScoringRCNN(nn.Module):
    """Mask Scoring R-CNN on Matterport's ResNet-FPN Mask R-CNN.

    `detect(images)` is the user entry point; `run_stages(images)` returns every intermediate
    output in the layouts of Matterport's Keras model, and what inspection needs to know about
    how the proposals and detections were chosen; `load_weights(path)` takes a Matterport `.h5`
    or a `.pth` saved by this project.
    """

    def __init__(self, config):
        super().__init__()
        config.validate()
        self.config = config
        channels = config.TOP_DOWN_PYRAMID_SIZE
        num_classes = config.NUM_CLASSES
        self.backbone = ResNet(config.BACKBONE, train_bn=config.TRAIN_BN)
        self.fpn = FPN(channels=channels)
        self.rpn = RPN(len(config.RPN_ANCHOR_RATIOS), config.RPN_ANCHOR_STRIDE, channels)
        self.proposal_layer = ProposalLayer(config.PRE_NMS_LIMIT, config.RPN_NMS_THRESHOLD,
                                            config.RPN_BBOX_STD_DEV)
        self.box_roi_align = PyramidROIAlign(config.POOL_SIZE, config.POOLER)
        self.mask_roi_align = PyramidROIAlign(config.MASK_POOL_SIZE, config.POOLER)
        self.box_head = BoxHead(num_classes, channels, config.POOL_SIZE,
                                config.FPN_CLASSIF_FC_LAYERS_SIZE, config.TRAIN_BN)
        self.mask_head = MaskHead(num_classes, channels, config.TRAIN_BN)
        self.maskiou_head = MaskIoUHead(num_classes, channels, config.MASK_POOL_SIZE)
        self.detection_layer = DetectionLayer(config.BBOX_STD_DEV, config.DETECTION_MIN_CONFIDENCE,
                                              config.DETECTION_NMS_THRESHOLD,
                                              config.DETECTION_MAX_INSTANCES)
        self.anchors = AnchorCache(config)
        self.eval()

    @property
    def device(self):
        return self.backbone.conv1.weight.device

    def keras_layers(self):
        """Keras layer name -> the module holding its weights, for the .h5 converter."""
        layers = {}
        for part in (self.backbone, self.fpn, self.rpn, self.box_head, self.mask_head):
            layers.update(part.keras_layers())
        return layers

    def named_layers(self):
        """Layer name -> module for every layer with weights: the Keras names of keras_layers()
        and mrcnn_maskiou_conv1..4, mrcnn_maskiou_fc1, mrcnn_maskiou_fc2, mrcnn_maskiou."""
        layers = self.keras_layers()
        layers.update(self.maskiou_head.layer_names())
        return layers

    def load_weights(self, path, progress=False):
        """Loads a Matterport .h5 (converted on the fly) or a .pth saved by this project
        (see mrcnn.weights.load_weights); returns the model."""
        load_weights(self, path, progress=progress)
        return self

    @classmethod
    def from_weights(cls, path, config=None, progress=False):
        """The model a weights file was made for, with its weights loaded.

        config: the model's Config; default: the one saved in a .pth, and for a Matterport .h5
        Matterport's Config with the BACKBONE and NUM_CLASSES the file's weights tell.
        """
        if config is None:
            if is_keras_file(path):
                config = Config(**{field: value for field, value in describe_weights(path).items()
                                   if value is not None})
            else:
                config = checkpoint_config(path)
        return cls(config).load_weights(path, progress=progress)

    # The inference graph, stage by stage. Each stage takes and returns tensors.

    def pyramid(self, molded_images):
        """molded_images [B, 3, H, W] -> [P2, P3, P4, P5, P6]."""
        return self.fpn(self.backbone(molded_images))

    def classify(self, rois, pyramid, image_hw):
        """rois [B, N, 4] -> (probs [B, N, K], deltas [B, N, K, 4])."""
        batch, count = rois.shape[:2]
        box_image = torch.arange(batch, device=rois.device).repeat_interleave(count)
        pooled = self.box_roi_align(rois.reshape(-1, 4), box_image, pyramid[:4], image_hw)
        _, probs, deltas = self.box_head(pooled)
        return probs.reshape(batch, count, -1), deltas.reshape(batch, count, -1, 4)

    def segment(self, boxes, box_image, class_ids, pyramid, image_hw, every_class=True):
        """boxes [R, 4] of images box_image [R] with classes class_ids [R] ->
        (masks [R, K, 28, 28] of every class (None unless every_class), class_masks [R, 28, 28]
        (each box's class's mask), the MaskIoU head's output [R, K] for that mask: column
        class_ids[r] is its predicted IoU)."""
        pooled = self.mask_roi_align(boxes, box_image, pyramid[:4], image_hw)
        if every_class:
            masks = self.mask_head(pooled)
            class_masks = masks[torch.arange(len(boxes), device=boxes.device), class_ids]
        else:
            masks, class_masks = None, self.mask_head(pooled, class_ids)
        return masks, class_masks, self.maskiou_head(pooled, class_masks)

    def infer(self, molded_images, image_metas, anchors=None, mask_all_rows=False, timer=None,
              precision=None):
        """The whole inference graph on a batch of molded images of one size.

        molded_images [B, 3, H, W] float32, image_metas [B, META] (Matterport's image meta),
        anchors [A, 4] or [B, A, 4] normalised (default: the config's anchors for the size) ->
        dict of tensors: pyramid, anchors, rpn_class, rpn_bbox, rpn_rois, mrcnn_class,
        mrcnn_bbox, detections; how the proposals and detections were chosen (INSPECTION_OUTPUTS:
        the ProposalLayer's Proposals and the DetectionLayer's Detections, which the layers
        compute anyway); and for the detection rows that carry a class (all rows, padding
        included, with mask_all_rows): mask_rows [R] (flat index b*MAX + i), mrcnn_mask
        [R, K, 28, 28] (with mask_all_rows, else None: detect() needs only each row's class),
        class_masks [R, 28, 28] (the mask of the row's class), mask_ious [R, K]
        (the MaskIoU head's output for that mask), mask_iou [R] (its column of the row's class:
        the mask's predicted IoU) and mask_scores [R] (class score x mask_iou).

        `timer(stage_name)`, when given, is a context manager wrapped around each stage (the
        benchmarks time them with it). `precision` (default config.PRECISION): "exact", "tf32"
        or "bf16" (see mrcnn.precision); the floating-point outputs are float32 in all three.
        """
        timer = timer or _no_timer
        scope = Precision(precision or self.config.PRECISION, molded_images.device)
        image_hw = tuple(molded_images.shape[-2:])
        with scope.flags():
            with timer("backbone+fpn"), scope.network():
                # Channels-last convolutions are the fast ones on the CPU (oneDNN) and on GPUs.
                pyramid = self.pyramid(molded_images.contiguous(memory_format=torch.channels_last))
            with timer("rpn+proposals"):
                if anchors is None:
                    anchors = self.anchors(image_hw, molded_images.device)
                with scope.network():
                    _, rpn_class, rpn_bbox = self.rpn(pyramid)
                rpn_class, rpn_bbox = rpn_class.float(), rpn_bbox.float()
                proposals = self.proposal_layer.propose(rpn_class, rpn_bbox, anchors,
                                                        self.config.POST_NMS_ROIS_INFERENCE)
            with timer("box head"):
                # The RoI pooling kernels read float32 maps, the channels-last levels as they are
                # (their fast layout); bf16 levels are converted once.
                pooled_levels = [p.float() for p in pyramid[:4]]
                with scope.network():
                    mrcnn_class, mrcnn_bbox = self.classify(proposals.rois, pooled_levels,
                                                            image_hw)
                mrcnn_class, mrcnn_bbox = mrcnn_class.float(), mrcnn_bbox.float()
            with timer("detection"):
                windows = norm_boxes(image_metas[:, 7:11], image_metas[0, 4:6])
                detected = self.detection_layer.detect(proposals.rois, mrcnn_class, mrcnn_bbox,
                                                       windows)
            with timer("mask+maskiou heads"):
                flat = detected.detections.reshape(-1, 6)
                class_ids = flat[:, 4].to(torch.int64)
                mask_rows = (torch.arange(len(flat), device=flat.device) if mask_all_rows
                             else torch.nonzero(class_ids > 0).squeeze(1))
                box_image = mask_rows // detected.detections.shape[1]
                row_classes = class_ids[mask_rows]
                with scope.network():
                    # Masks of every class only for Matterport's full output layout.
                    mrcnn_mask, class_masks, mask_ious = self.segment(
                        flat[mask_rows, :4], box_image, row_classes, pooled_levels, image_hw,
                        every_class=mask_all_rows)
                if mrcnn_mask is not None:
                    mrcnn_mask = mrcnn_mask.float()
                class_masks, mask_ious = class_masks.float(), mask_ious.float()
                rows = torch.arange(len(mask_rows), device=flat.device)
                mask_iou = mask_ious[rows, row_classes]
        return {"pyramid": pooled_levels + [pyramid[4].float()], "anchors": anchors,
                "rpn_class": rpn_class, "rpn_bbox": rpn_bbox, "rpn_rois": proposals.rois,
                "mrcnn_class": mrcnn_class, "mrcnn_bbox": mrcnn_bbox,
                "detections": detected.detections,
                "rpn_roi_scores": proposals.scores, "rpn_roi_anchor_ids": proposals.anchor_ids,
                "rpn_candidate_ids": proposals.candidate_ids,
                "rpn_candidate_scores": proposals.candidate_scores,
                "rpn_candidate_boxes": proposals.candidate_boxes,
                "roi_scores": detected.roi_scores, "roi_class_ids": detected.roi_class_ids,
                "roi_refined_boxes": detected.refined_rois,
                "mask_rows": mask_rows, "mrcnn_mask": mrcnn_mask, "class_masks": class_masks,
                "mask_ious": mask_ious, "mask_iou": mask_iou,
                "mask_scores": flat[mask_rows, 5] * mask_iou}

    # User entry points.

    @torch.inference_mode()
    def detect(self, images, batch_size=None, precision=None):
        """Detects instances in a list of HxWx3 uint8 RGB images (any count, any sizes).

        Images are molded as Matterport does (on the model's device) and run in batches of up
        to `batch_size` (default config.BATCH_SIZE) images of the same molded size, one forward
        pass per batch. `precision` (default config.PRECISION): "exact", "tf32" or "bf16", see
        mrcnn.precision. Returns, per image, a dict of numpy arrays: rois [N, 4] int32 (y1, x1,
        y2, x2 image pixels), class_ids [N] int32, scores [N] float32, mask_scores [N] float32
        (class score x predicted mask IoU), masks [H, W, N] bool.
        """
        precision = check_precision(precision or self.config.PRECISION)
        images = rgb_images(images)
        batch_size = batch_size or self.config.BATCH_SIZE
        groups = defaultdict(list)
        for index, image in enumerate(images):
            groups[tuple(molded_shape(image.shape[:2], self.config))].append(index)
        results = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch_results = self.run_batch([images[i] for i in chunk],
                                               precision=precision).results
                for index, result in zip(chunk, batch_results):
                    results[index] = result
        return results

    @torch.inference_mode()
    def run_batch(self, images, mask_all_rows=False, timer=None, precision=None):
        """Molds images of one molded size, runs `infer` and unmolds the detections: the one
        path of detect() and run_stages().

        images: a list of images as detect() takes them; mask_all_rows, timer and precision:
        see infer (timer also wraps the "molding" and "unmolding" stages). Returns a Run.
        """
        images = rgb_images(images)
        timer = timer or _no_timer
        with timer("molding"):
            molded, metas, windows = mold_inputs(images, self.config, device=self.device)
        outputs = self.infer(molded, metas, mask_all_rows=mask_all_rows, timer=timer,
                             precision=precision)
        with timer("unmolding"):
            results = unmold_results(images, outputs, tuple(molded.shape[-2:]), windows)
        return Run(molded, metas, windows, outputs, results)

    @torch.inference_mode()
    def run_stages(self, images):
        """Every stage of the inference graph on images of one molded size, for inspection and
        for comparison with Matterport's Keras model: a dict of numpy arrays.

        Matterport's outputs, named and laid out as in its Keras model (NHWC maps, [B, ...]
        rows): molded_images, image_metas, windows [B, 4] (pixels), anchors, fpn_p2..fpn_p6,
        rpn_class, rpn_bbox, rpn_rois, mrcnn_class, mrcnn_bbox, mrcnn_mask [B, MAX, 28, 28, K]
        (padding rows included), detections, mask_iou [B, MAX] and the final per-image results
        rois_<i>, class_ids_<i>, scores_<i>, mask_scores_<i>, masks_<i> (as detect() gives them).

        How the proposals and detections were chosen (normalised boxes, N = rpn_rois rows,
        k = min(PRE_NMS_LIMIT, anchors)): rpn_candidate_ids [B, k], rpn_candidate_scores [B, k]
        and rpn_candidate_boxes [B, k, 4], the anchors of highest foreground score NMS chose the
        proposals from, best first, refined and clipped; rpn_roi_scores [B, N] and
        rpn_roi_anchor_ids [B, N] (-1 for padding), each proposal's score and anchor;
        roi_class_ids [B, N], roi_scores [B, N] and roi_refined_boxes [B, N, 4], each
        proposal's best class (0: background), its probability and the proposal refined by that
        class's deltas and clipped to the window, before the detection layer filters them.
        """
        run = self.run_batch(images, mask_all_rows=True)
        outputs = run.outputs
        batch, max_instances = outputs["detections"].shape[:2]
        masks = outputs["mrcnn_mask"].reshape((batch, max_instances)
                                              + outputs["mrcnn_mask"].shape[1:])
        stages = {
            "molded_images": run.molded_images.permute(0, 2, 3, 1),
            "image_metas": run.image_metas,
            "anchors": outputs["anchors"].expand(batch, -1, -1),
            "mrcnn_mask": masks.permute(0, 1, 3, 4, 2),
            "mask_iou": outputs["mask_iou"].reshape(batch, max_instances),
        }
        stages.update({name: outputs[name] for name in BATCH_OUTPUTS + INSPECTION_OUTPUTS})
        for level, p in enumerate(outputs["pyramid"], start=2):
            stages[f"fpn_p{level}"] = p.permute(0, 2, 3, 1)
        stages = {name: value.cpu().numpy() for name, value in stages.items()}
        stages["windows"] = run.windows
        for b, result in enumerate(run.results):
            stages.update({f"{name}_{b}": value for name, value in result.items()})
        return stages


# Outputs of `infer` with one row per image, in the layout of Matterport's Keras model.
BATCH_OUTPUTS = ("rpn_class", "rpn_bbox", "rpn_rois", "mrcnn_class", "mrcnn_bbox", "detections")
# Outputs of `infer` that say how the proposals and detections were chosen (see run_stages).
INSPECTION_OUTPUTS = ("rpn_candidate_ids", "rpn_candidate_scores", "rpn_candidate_boxes",
                      "rpn_roi_scores", "rpn_roi_anchor_ids", "roi_class_ids", "roi_scores",
                      "roi_refined_boxes")


class Run(NamedTuple):
    """One batch through MaskScoringRCNN.run_batch: molded_images [B, 3, H, W], image_metas
    [B, META], windows [B, 4] int32 numpy (each image inside its molded one, pixels), the
    outputs of infer and the per-image results of detect()."""
    molded_images: torch.Tensor
    image_metas: torch.Tensor
    windows: np.ndarray
    outputs: dict
    results: list


def rgb_images(images):
    """A list of images as detect() takes them -> the list of [H, W, 3] uint8 RGB arrays."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        raise TypeError("detect() takes a list of images; wrap a single image in a list")
    return [to_rgb_uint8(image, f"images[{i}]") for i, image in enumerate(images)]


def _no_timer(name):
    return contextlib.nullcontext()


def unmold_results(images, outputs, molded_hw, windows):
    """Per-image result dicts (see MaskScoringRCNN.detect) from the outputs of `infer`."""
    return unmold_batch(outputs["detections"], outputs["class_masks"], outputs["mask_rows"],
                        [image.shape for image in images], molded_hw, windows,
                        mask_scores=outputs["mask_scores"])
