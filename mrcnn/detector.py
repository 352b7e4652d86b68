"""MaskScoringRCNN: Matterport's Mask R-CNN inference graph plus the MaskIoU head."""
import contextlib
from collections import defaultdict

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
from mrcnn.rpn import RPN, ProposalLayer
from mrcnn.unmold import unmold_detections
from mrcnn.weights import checkpoint_config, describe_weights, is_keras_file, load_weights


class MaskScoringRCNN(nn.Module):
    """Mask Scoring R-CNN on Matterport's ResNet-FPN Mask R-CNN.

    `detect(images)` is the user entry point; `run_stages(images)` returns every intermediate
    output in the layouts of Matterport's Keras model; `load_weights(path)` takes a Matterport
    `.h5` or a `.pth` saved by this project.
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
        self.box_roi_align = PyramidROIAlign(config.POOL_SIZE)
        self.mask_roi_align = PyramidROIAlign(config.MASK_POOL_SIZE)
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

    def segment(self, boxes, box_image, class_ids, pyramid, image_hw):
        """boxes [R, 4] of images box_image [R] with classes class_ids [R] ->
        (masks [R, K, 28, 28] of every class, the MaskIoU head's output [R, K] for the mask of
        each box's class: column class_ids[r] is that mask's predicted IoU)."""
        pooled = self.mask_roi_align(boxes, box_image, pyramid[:4], image_hw)
        masks = self.mask_head(pooled)
        class_masks = masks[torch.arange(len(boxes), device=boxes.device), class_ids]
        return masks, self.maskiou_head(pooled, class_masks)

    def infer(self, molded_images, image_metas, anchors=None, mask_all_rows=False, timer=None):
        """The whole inference graph on a batch of molded images of one size.

        molded_images [B, 3, H, W] float32, image_metas [B, META] (Matterport's image meta),
        anchors [A, 4] or [B, A, 4] normalised (default: the config's anchors for the size) ->
        dict of tensors: pyramid, anchors, rpn_class, rpn_bbox, rpn_rois, mrcnn_class,
        mrcnn_bbox, detections, and for the detection rows that carry a class (all rows,
        padding included, with mask_all_rows): mask_rows [R] (flat index b*MAX + i), mrcnn_mask
        [R, K, 28, 28], class_masks [R, 28, 28] (the mask of the row's class), mask_ious [R, K]
        (the MaskIoU head's output for that mask), mask_iou [R] (its column of the row's class:
        the mask's predicted IoU) and mask_scores [R] (class score x mask_iou).

        `timer(stage_name)`, when given, is a context manager wrapped around each stage (the
        benchmarks time them with it).
        """
        timer = timer or (lambda name: contextlib.nullcontext())
        image_hw = tuple(molded_images.shape[-2:])
        with timer("backbone+fpn"):
            # Channels-last convolutions are the fast ones on the CPU (oneDNN) and on GPUs.
            pyramid = self.pyramid(molded_images.contiguous(memory_format=torch.channels_last))
        with timer("rpn+proposals"):
            if anchors is None:
                anchors = self.anchors(image_hw, molded_images.device)
            _, rpn_class, rpn_bbox = self.rpn(pyramid)
            rpn_rois = self.proposal_layer(rpn_class, rpn_bbox, anchors,
                                           self.config.POST_NMS_ROIS_INFERENCE)
        with timer("box head"):
            # The RoI pooling kernels read NCHW maps: convert the pooled levels once.
            pooled_levels = [p.contiguous() for p in pyramid[:4]]
            mrcnn_class, mrcnn_bbox = self.classify(rpn_rois, pooled_levels, image_hw)
        with timer("detection"):
            windows = norm_boxes(image_metas[:, 7:11], image_metas[0, 4:6])
            detections = self.detection_layer(rpn_rois, mrcnn_class, mrcnn_bbox, windows)
        with timer("mask+maskiou heads"):
            flat = detections.reshape(-1, 6)
            class_ids = flat[:, 4].to(torch.int64)
            mask_rows = (torch.arange(len(flat), device=flat.device) if mask_all_rows
                         else torch.nonzero(class_ids > 0).squeeze(1))
            box_image = mask_rows // detections.shape[1]
            row_classes = class_ids[mask_rows]
            mrcnn_mask, mask_ious = self.segment(flat[mask_rows, :4], box_image, row_classes,
                                                 pooled_levels, image_hw)
            rows = torch.arange(len(mask_rows), device=flat.device)
            class_masks = mrcnn_mask[rows, row_classes]
            mask_iou = mask_ious[rows, row_classes]
        return {"pyramid": pyramid, "anchors": anchors, "rpn_class": rpn_class,
                "rpn_bbox": rpn_bbox, "rpn_rois": rpn_rois, "mrcnn_class": mrcnn_class,
                "mrcnn_bbox": mrcnn_bbox, "detections": detections, "mask_rows": mask_rows,
                "mrcnn_mask": mrcnn_mask, "class_masks": class_masks, "mask_ious": mask_ious,
                "mask_iou": mask_iou,
                "mask_scores": flat[mask_rows, 5] * mask_iou}

    # User entry points.

    @torch.inference_mode()
    def detect(self, images, batch_size=None):
        """Detects instances in a list of HxWx3 uint8 RGB images (any count, any sizes).

        Images are molded as Matterport does and run in batches of up to `batch_size`
        (default config.BATCH_SIZE) images of the same molded size. Returns, per image, a dict
        of numpy arrays: rois [N, 4] int32 (y1, x1, y2, x2 image pixels), class_ids [N] int32,
        scores [N] float32, mask_scores [N] float32 (class score x predicted mask IoU),
        masks [H, W, N] bool.
        """
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            raise TypeError("detect() takes a list of images; wrap a single image in a list")
        images = [to_rgb_uint8(image, f"images[{i}]") for i, image in enumerate(images)]
        batch_size = batch_size or self.config.BATCH_SIZE
        groups = defaultdict(list)
        for index, image in enumerate(images):
            groups[tuple(molded_shape(image.shape[:2], self.config))].append(index)
        results = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch_results = self._detect_batch([images[i] for i in chunk])
                for index, result in zip(chunk, batch_results):
                    results[index] = result
        return results

    def _detect_batch(self, images):
        molded, metas, windows = mold_inputs(images, self.config, device=self.device)
        outputs = self.infer(molded, metas)
        return unmold_results(images, outputs, tuple(molded.shape[-2:]), windows)

    @torch.inference_mode()
    def run_stages(self, images):
        """Runs the inference graph on images of one molded size and returns every stage as numpy
        arrays named and laid out like Matterport's outputs (NHWC maps, [B, ...] rows):
        molded_images, image_metas, anchors, fpn_p2..fpn_p6, rpn_class, rpn_bbox, rpn_rois,
        mrcnn_class, mrcnn_bbox, mrcnn_mask [B, MAX, 28, 28, K] (padding rows included),
        detections, mask_iou [B, MAX], and the final per-image results rois_<i>, class_ids_<i>,
        scores_<i>, mask_scores_<i>, masks_<i>."""
        images = [to_rgb_uint8(image, f"images[{i}]") for i, image in enumerate(images)]
        molded, metas, windows = mold_inputs(images, self.config, device=self.device)
        outputs = self.infer(molded, metas, mask_all_rows=True)
        batch, max_instances = outputs["detections"].shape[:2]
        masks = outputs["mrcnn_mask"].reshape((batch, max_instances) + outputs["mrcnn_mask"].shape[1:])
        stages = {
            "molded_images": molded.permute(0, 2, 3, 1),
            "image_metas": metas,
            "anchors": outputs["anchors"].expand(batch, -1, -1),
            "rpn_class": outputs["rpn_class"],
            "rpn_bbox": outputs["rpn_bbox"],
            "rpn_rois": outputs["rpn_rois"],
            "mrcnn_class": outputs["mrcnn_class"],
            "mrcnn_bbox": outputs["mrcnn_bbox"],
            "mrcnn_mask": masks.permute(0, 1, 3, 4, 2),
            "detections": outputs["detections"],
            "mask_iou": outputs["mask_iou"].reshape(batch, max_instances),
        }
        for level, p in enumerate(outputs["pyramid"], start=2):
            stages[f"fpn_p{level}"] = p.permute(0, 2, 3, 1)
        stages = {name: value.cpu().numpy() for name, value in stages.items()}
        for b, result in enumerate(unmold_results(images, outputs, tuple(molded.shape[-2:]),
                                                  windows)):
            stages.update({f"{name}_{b}": value for name, value in result.items()})
        return stages


def unmold_results(images, outputs, molded_hw, windows):
    """Per-image result dicts (see MaskScoringRCNN.detect) from the outputs of `infer`."""
    detections = outputs["detections"]
    rows = outputs["mask_rows"]
    image_of_row = rows // detections.shape[1]
    has_class = detections.reshape(-1, 6)[rows, 4] > 0
    results = []
    for b, image in enumerate(images):
        mine = (image_of_row == b) & has_class
        results.append(unmold_detections(
            detections[b, :int(mine.sum())], outputs["class_masks"][mine], image.shape,
            molded_hw, windows[b], mask_scores=outputs["mask_scores"][mine]))
    return results
