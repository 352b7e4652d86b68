"""Matterport's Mask R-CNN losses, Mask Scoring R-CNN's MaskIoU loss and Matterport's L2 term.

Each loss returns a scalar and is 0 (still attached to the graph) when nothing contributes, as
Keras' `K.switch(tf.size(loss) > 0, ...)` makes it.
"""
import torch
import torch.nn.functional as F

# Keras' K.epsilon(): binary_crossentropy clips probabilities to [eps, 1 - eps].
KERAS_EPSILON = 1e-7


def mean_or_zero(values, anchor):
    """Mean of values, or 0 connected to `anchor`'s graph when values is empty."""
    # `+ 0.0` turns the -0.0 of a negative sum times 0 into 0.0.
    return values.mean() if values.numel() else anchor.sum() * 0.0 + 0.0


def rpn_class_loss(logits, match):
    """logits [B, A, 2], match [B, A] (1 positive, -1 negative, 0 neutral) -> cross entropy of the
    non-neutral anchors, averaged over them."""
    used = match != 0
    losses = F.cross_entropy(logits[used], (match[used] == 1).long(), reduction="none")
    return mean_or_zero(losses, logits)


def rpn_bbox_loss(deltas, match, target_deltas):
    """deltas [B, A, 4] predicted, match [B, A], target_deltas [B, T, 4] (each image's positives in
    anchor order, then zero rows) -> smooth L1 averaged over the positives' 4 coordinates."""
    image, index = torch.nonzero(match == 1, as_tuple=True)
    # Rank of each positive among its image's positives: its row in target_deltas.
    rank = torch.cumsum(match == 1, dim=1)[image, index] - 1
    losses = F.smooth_l1_loss(deltas[image, index], target_deltas[image, rank], reduction="none")
    return mean_or_zero(losses, deltas)


def mrcnn_class_loss(logits, target_class_ids, active_class_ids):
    """logits [B, T, K], target_class_ids [B, T] (padding rows are background), active_class_ids
    [B, K] (1 for the classes of each image's dataset) -> cross entropy averaged over the rows
    whose predicted class is active.

    Matterport takes image 0's active classes for the whole batch (a known TODO in its code);
    each image's own are used here, which is the same when all images share a dataset.
    """
    losses = F.cross_entropy(logits.flatten(0, 1), target_class_ids.flatten(), reduction="none")
    active = predicted_active(logits, active_class_ids)
    return (losses * active).sum() / active.sum().clamp(min=1.0)


def predicted_active(logits, active_class_ids):
    """logits [B, T, K], active_class_ids [B, K] -> [B * T]: 1 where the row's predicted class
    is active in its image, else 0 (the rows mrcnn_class_loss averages over)."""
    predicted = logits.argmax(dim=2, keepdim=True)
    return active_class_ids.to(logits.dtype).gather(1, predicted.flatten(1)).flatten()


def mrcnn_bbox_loss(deltas, target_class_ids, target_deltas):
    """deltas [B, T, K, 4] predicted per class, target_class_ids [B, T], target_deltas [B, T, 4] ->
    smooth L1 of the positive rows' deltas of their class, averaged over their 4 coordinates."""
    image, row = torch.nonzero(target_class_ids > 0, as_tuple=True)
    predicted = deltas[image, row, target_class_ids[image, row]]
    losses = F.smooth_l1_loss(predicted, target_deltas[image, row], reduction="none")
    return mean_or_zero(losses, deltas)


def mrcnn_mask_loss(class_masks, target_masks):
    """class_masks [P, h, w] predicted probabilities of the positive rows' classes, target_masks
    [P, h, w] 0/1 -> Keras binary cross entropy (probabilities clipped to [1e-7, 1 - 1e-7])
    averaged over all pixels."""
    probs = class_masks.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    losses = F.binary_cross_entropy_with_logits(torch.logit(probs), target_masks,
                                                reduction="none")
    return mean_or_zero(losses, class_masks)


def maskiou_loss(predicted_iou, target_iou):
    """predicted_iou [P], target_iou [P] -> Mask Scoring R-CNN's L2 loss, mean of
    0.5 * (p - t)^2 over the RoIs whose target IoU is > 0."""
    used = target_iou > 0
    return mean_or_zero(0.5 * (predicted_iou[used] - target_iou[used]) ** 2, predicted_iou)


def loss_counts(match, class_logits, target_class_ids, active_class_ids, target_iou):
    """How many terms each loss above averages over, as float tensors: {loss name: count}, for
    a batch's rpn match [B, A], class logits [B, T, K], target class ids [B, T], active class
    ids [B, K] and the MaskIoU targets [P] of its positive rows. The L2 term has no count.

    A loss of a part of a batch times its count, summed over the parts and divided by the
    summed count, is the loss of the whole batch: what data-parallel training needs."""
    positives = (target_class_ids > 0).sum().float()
    return {
        "rpn_class_loss": (match != 0).sum().float(),
        "rpn_bbox_loss": (match == 1).sum().float(),
        "mrcnn_class_loss": predicted_active(class_logits, active_class_ids).sum().float(),
        "mrcnn_bbox_loss": positives,
        "mrcnn_mask_loss": positives,
        "maskiou_loss": (target_iou > 0).sum().float(),
    }


def l2_regularization(parameters, weight_decay):
    """Matterport's weight decay term: sum of weight_decay * mean(w^2) over the given tensors
    (its trainable kernels and biases, BatchNorm gamma and beta excluded)."""
    terms = [weight_decay * p.square().mean() for p in parameters]
    return torch.stack(terms).sum() if terms else torch.zeros(())
