"""Region proposal network and the ProposalLayer."""
from typing import NamedTuple

import torch
from torch import nn

from mrcnn.boxes import apply_box_deltas, clip_boxes
from mrcnn.layers import conv2d, pad_per_image, pad_same
from mrcnn.ops import batched_nms


class RPN(nn.Module):
    """The shared RPN head (Matterport's `rpn_model`), applied to every pyramid level."""

    def __init__(self, anchors_per_location, anchor_stride=1, channels=256):
        super().__init__()
        self.anchor_stride = anchor_stride
        # TensorFlow's 'SAME' padding of a 3x3 stride-1 convolution is one pixel on each side,
        # which the convolution then pads itself (no padded copy of each level).
        self.conv_shared = nn.Conv2d(channels, 512, 3, stride=anchor_stride,
                                     padding=1 if anchor_stride == 1 else 0)
        self.class_raw = nn.Conv2d(512, 2 * anchors_per_location, 1)
        self.bbox_pred = nn.Conv2d(512, 4 * anchors_per_location, 1)

    def forward(self, feature_maps):
        """[P2..P6] -> (logits [B, A, 2], probs [B, A, 2], deltas [B, A, 4]).

        Anchor rows follow the anchors: level, y, x, anchor of the location (NHWC flattening).
        """
        logits, deltas = [], []
        for p in feature_maps:
            padded = p if self.anchor_stride == 1 else pad_same(p, 3, self.anchor_stride)
            shared = conv2d(padded, self.conv_shared, relu=True)
            batch = p.shape[0]
            logits.append(conv2d(shared, self.class_raw).permute(0, 2, 3, 1).reshape(batch, -1, 2))
            deltas.append(conv2d(shared, self.bbox_pred).permute(0, 2, 3, 1).reshape(batch, -1, 4))
        logits = torch.cat(logits, dim=1)
        return logits, torch.softmax(logits, dim=-1), torch.cat(deltas, dim=1)

    def keras_layers(self):
        return {"rpn_conv_shared": self.conv_shared, "rpn_class_raw": self.class_raw,
                "rpn_bbox_pred": self.bbox_pred}


class Proposals(NamedTuple):
    """What the ProposalLayer makes of the RPN's outputs, per image (normalised boxes).

    rois [B, N, 4]: the proposals, by descending score, zero-padded to N = proposal_count rows;
    scores [B, N]: their foreground scores (0 for padding); anchor_ids [B, N] int64: the anchor
    each was refined from (-1 for padding); candidate_ids [B, k] int64, candidate_scores [B, k]
    and candidate_boxes [B, k, 4]: the k anchors of highest score that NMS chose from, best
    first (ties in anchor order), refined and clipped to the image.
    """
    rois: torch.Tensor
    scores: torch.Tensor
    anchor_ids: torch.Tensor
    candidate_ids: torch.Tensor
    candidate_scores: torch.Tensor
    candidate_boxes: torch.Tensor


class ProposalLayer(nn.Module):
    """Top anchors by foreground score, refined, clipped to the image and NMSed (Matterport's `ROI`)."""

    def __init__(self, pre_nms_limit, nms_threshold, bbox_std_dev):
        super().__init__()
        self.pre_nms_limit = pre_nms_limit
        self.nms_threshold = nms_threshold
        self.register_buffer("bbox_std_dev", torch.tensor(bbox_std_dev, dtype=torch.float32),
                             persistent=False)

    def forward(self, probs, deltas, anchors, proposal_count):
        """probs [B, A, 2], deltas [B, A, 4], anchors [A, 4] or [B, A, 4] normalised ->
        proposals [B, proposal_count, 4] normalised, in descending score order, zero-padded."""
        return self.propose(probs, deltas, anchors, proposal_count).rois

    def propose(self, probs, deltas, anchors, proposal_count):
        """As forward, with what inspection reads about how the proposals were made: Proposals.

        The candidates are the k = min(pre_nms_limit, A) anchors of highest foreground score,
        refined and clipped; NMS keeps up to proposal_count of each image's, best first.
        """
        batch, num_anchors = probs.shape[:2]
        scores, top, boxes = self.top_anchors(probs, deltas, anchors,
                                              min(self.pre_nms_limit, num_anchors))
        k = scores.shape[1]
        image_index = torch.arange(batch, device=boxes.device).repeat_interleave(k)
        keep = batched_nms(boxes.reshape(-1, 4), scores.reshape(-1), image_index,
                           self.nms_threshold, max_output_size=proposal_count)
        # Each image's kept candidates (flat index + 1) in its rows, 0 in the padding rows.
        slots = pad_per_image((keep + 1)[:, None], image_index[keep], batch,
                              proposal_count)[..., 0]
        padding = slots == 0
        kept = (slots - 1).clamp(min=0)
        return Proposals(
            rois=boxes.reshape(-1, 4)[kept].masked_fill(padding[..., None], 0),
            scores=scores.reshape(-1)[kept].masked_fill(padding, 0),
            anchor_ids=top.reshape(-1)[kept].masked_fill(padding, -1),
            candidate_ids=top, candidate_scores=scores, candidate_boxes=boxes)

    def top_anchors(self, probs, deltas, anchors, k):
        """The k <= A anchors [A, 4] or [B, A, 4] of highest foreground score, before NMS ->
        (scores [B, k], anchor indices [B, k], refined boxes [B, k, 4] clipped to [0, 1])."""
        scores = probs[..., 1]
        # A stable sort keeps equal scores in anchor order, as tf.nn.top_k does.
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        scores = scores.gather(1, top)
        index = top[..., None].expand(-1, -1, 4)
        deltas = deltas.gather(1, index) * self.bbox_std_dev
        boxes = apply_box_deltas(anchors.expand(len(top), -1, -1).gather(1, index), deltas)
        boxes = clip_boxes(boxes, boxes.new_tensor([0.0, 0.0, 1.0, 1.0]))
        return scores, top, boxes
