"""The training graph: Matterport's Mask R-CNN training losses plus Mask Scoring R-CNN's MaskIoU
loss, computed from the inference model's stage methods; layer groups and the L2 term."""
import re

import torch
from torch import nn

from mrcnn.anchors import pyramid_pixel_anchors
from mrcnn.boxes import norm_boxes
from mrcnn.layers import BatchNorm2d
from mrcnn.losses import (l2_regularization, loss_counts, maskiou_loss, mrcnn_bbox_loss,
                          mrcnn_class_loss, mrcnn_mask_loss, rpn_bbox_loss, rpn_class_loss)
from mrcnn.targets import detection_targets, maskiou_targets, rpn_targets

# Matterport's layer groups (MaskRCNN.train), as full matches of Keras layer names, plus
# `maskiou` for the MaskIoU head alone. The MaskIoU head's layers are named mrcnn_maskiou_*,
# so every group that trains the heads trains it too.
HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"
LAYER_GROUPS = {
    "heads": HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + HEADS,
    "all": r".*",
    "maskiou": r"mrcnn\_maskiou.*",
}

# Loss components in the order they are logged; the total adds them with their weights.
LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss", "maskiou_loss", "l2_loss")


def set_trainable(model, layers):
    """Trains the layers whose names fully match `layers` (a LAYER_GROUPS key or a regex) and
    freezes the others, as Matterport's set_trainable. Returns the names of the trained layers."""
    pattern = LAYER_GROUPS.get(layers, layers)
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"layers must be one of {sorted(LAYER_GROUPS)} or a regular "
                         f"expression; {layers!r} is neither ({error})") from None
    named = model.named_layers()
    covered = {id(p) for module in named.values() for p in module.parameters()}
    missed = [name for name, p in model.named_parameters() if id(p) not in covered]
    if missed:
        raise RuntimeError(f"parameters outside every named layer: {missed[:5]}; "
                           "named_layers() must name every layer with weights")
    trained = []
    for name, module in named.items():
        trainable = regex.fullmatch(name) is not None
        module.requires_grad_(trainable)
        if trainable:
            trained.append(name)
    if not trained:
        raise ValueError(f"layers {layers!r} matches no layer of the model")
    return trained


def regularized_parameters(model):
    """The trainable tensors Matterport's L2 term covers: kernels and biases, not BN gamma/beta."""
    batch_norm = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                  for p in m.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in batch_norm]


def pixel_anchors(config, image_hw, device):
    """Anchors [A, 4] in float64 pixels, the coordinates Matterport's RPN targets use."""
    return torch.from_numpy(pyramid_pixel_anchors(config, image_hw)).to(device)


class TrainingModel(nn.Module):
    """Wraps a MaskScoringRCNN; forward(batch) returns every loss component (see LOSS_NAMES).

    The wrapper is the module to hand to DistributedDataParallel, so that the whole forward,
    targets included, runs under it. Random sampling of anchors and RoIs draws from `generator`
    (on the model's device): one torch.Generator, or one per image (see
    mrcnn.targets.random_subset), which the caller seeds for reproducible steps.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._pixel_anchors = {}

    def anchors_in_pixels(self, image_hw, device):
        key = (image_hw, device)
        if key not in self._pixel_anchors:
            self._pixel_anchors[key] = pixel_anchors(self.model.config, image_hw, device)
        return self._pixel_anchors[key]

    def targets(self, rpn_probs, rpn_deltas, gt_class_ids, gt_boxes, gt_masks, image_hw,
                generator=None):
        """The training targets of a batch of molded images of size image_hw, without gradients.

        rpn_probs [B, A, 2] and rpn_deltas [B, A, 4] are the RPN's outputs (the proposals
        are made from them), the ground truth as for forward ->
        (match [B, A] and deltas [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4] of mrcnn.targets.rpn_targets,
        DetectionTargets of POST_NMS_ROIS_TRAINING proposals).
        """
        model, config = self.model, self.model.config
        device = rpn_probs.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            match, rpn_target_deltas = rpn_targets(
                self.anchors_in_pixels(image_hw, device), gt_boxes, gt_class_ids,
                config.RPN_TRAIN_ANCHORS_PER_IMAGE, config.RPN_BBOX_STD_DEV,
                generator=generator)
            proposals = model.proposal_layer(rpn_probs.float(), rpn_deltas.float(),
                                             model.anchors(image_hw, device),
                                             config.POST_NMS_ROIS_TRAINING)
            targets = detection_targets(
                proposals, gt_class_ids, norm_boxes(gt_boxes, image_hw), gt_masks,
                config.TRAIN_ROIS_PER_IMAGE, config.ROI_POSITIVE_RATIO, config.BBOX_STD_DEV,
                config.MASK_SHAPE, config.USE_MINI_MASK, generator=generator)
        return match, rpn_target_deltas, targets

    def forward(self, images, gt_class_ids, gt_boxes, gt_masks, active_class_ids,
                generator=None, return_counts=False):
        """images [B, 3, H, W] molded, gt_class_ids [B, G] (0 padding, < 0 crowd), gt_boxes
        [B, G, 4] pixels, gt_masks [B, G, h, w] bool (mini-masks or full masks per
        config.USE_MINI_MASK), active_class_ids [B, K] -> dict of scalar losses; with
        `return_counts` also the count of terms behind each (mrcnn.losses.loss_counts)."""
        model, config = self.model, self.model.config
        image_hw = tuple(images.shape[-2:])
        device = images.device
        pyramid = model.pyramid(images)
        rpn_logits, rpn_probs, rpn_deltas = model.rpn(pyramid)
        rpn_logits, rpn_deltas = rpn_logits.float(), rpn_deltas.float()
        match, rpn_target_deltas, targets = self.targets(
            rpn_probs, rpn_deltas, gt_class_ids, gt_boxes, gt_masks, image_hw, generator)

        batch, rois_per_image = targets.class_ids.shape
        box_image = torch.arange(batch, device=device).repeat_interleave(rois_per_image)
        pooled = model.box_roi_align(targets.rois.reshape(-1, 4), box_image, pyramid[:4],
                                     image_hw)
        class_logits, _, deltas = model.box_head(pooled)
        class_logits = class_logits.float().reshape(batch, rois_per_image, -1)
        deltas = deltas.float().reshape(batch, rois_per_image, -1, 4)

        # The mask and MaskIoU heads only matter on positive RoIs (their losses ignore the
        # rest), so they run on those alone.
        image, row = torch.nonzero(targets.class_ids > 0, as_tuple=True)
        classes = targets.class_ids[image, row]
        positives = torch.arange(len(image), device=device)
        mask_pooled = model.mask_roi_align(targets.rois[image, row], image, pyramid[:4],
                                           image_hw)
        class_masks = model.mask_head(mask_pooled)[positives, classes].float()
        mask_targets = targets.masks[image, row]
        predicted_iou = model.maskiou_head(mask_pooled, class_masks)[positives, classes].float()
        target_iou = maskiou_targets(class_masks, mask_targets, targets.mask_ratios[image, row])

        losses = {
            "rpn_class_loss": rpn_class_loss(rpn_logits, match),
            "rpn_bbox_loss": rpn_bbox_loss(rpn_deltas, match, rpn_target_deltas),
            "mrcnn_class_loss": mrcnn_class_loss(class_logits, targets.class_ids,
                                                 active_class_ids),
            "mrcnn_bbox_loss": mrcnn_bbox_loss(deltas, targets.class_ids, targets.deltas),
            "mrcnn_mask_loss": mrcnn_mask_loss(class_masks, mask_targets),
            "maskiou_loss": maskiou_loss(predicted_iou, target_iou),
            "l2_loss": l2_regularization(regularized_parameters(model), config.WEIGHT_DECAY),
        }
        if not return_counts:
            return losses
        return losses, loss_counts(match, class_logits, targets.class_ids, active_class_ids,
                                   target_iou)


def total_loss(losses, config):
    """The optimised loss: each component times its weight (LOSS_WEIGHTS, default 1, and
    MASKIOU_LOSS_WEIGHT), plus the L2 term."""
    weights = dict(config.LOSS_WEIGHTS, maskiou_loss=config.MASKIOU_LOSS_WEIGHT, l2_loss=1.0)
    return sum(weights.get(name, 1.0) * loss for name, loss in losses.items())


def set_batch_norm_modes(model):
    """Puts the model in training mode with each BatchNorm of a frozen layer in eval mode, so
    with TRAIN_BN only the trained layers' BatchNorms use and update batch statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, BatchNorm2d) and not module.weight.requires_grad:
            module.eval()
    return model
