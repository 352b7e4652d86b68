"""RoI pooling over the pyramid and the box, mask and MaskIoU heads."""
import torch
import torch.nn.functional as F
from torch import nn

from mrcnn.boxes import pixel_boxes
from mrcnn.config import POOLERS
from mrcnn.layers import BatchNorm2d, conv2d
from mrcnn.ops import crop_and_resize, roi_align


def roi_pyramid_levels(boxes, image_area):
    """Pyramid level (2..5) of each normalised box [..., 4] for a molded image of `image_area` pixels.

    level = clip(4 + round(log2(sqrt(h*w) / (224 / sqrt(area)))), 2, 5) in float32 with
    round-half-to-even; zero-area (padding) boxes go to level 2.
    """
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    area = torch.tensor(image_area, dtype=torch.float32, device=boxes.device)
    log2 = torch.tensor(2.0, dtype=torch.float32, device=boxes.device).log()
    level = torch.log(torch.sqrt(height * width) / (224.0 / torch.sqrt(area))) / log2
    level = torch.nan_to_num(4.0 + torch.round(level), nan=2.0, neginf=2.0)
    return level.clamp(2, 5).to(torch.int64)


class PyramidROIAlign(nn.Module):
    """Pools each box from its pyramid level (chosen as Matterport does) with `pooler`.

    "crop_and_resize": Matterport's PyramidROIAlign, tf.image.crop_and_resize of the normalised
    box (the pooling Matterport's weights were trained with). "roi_align": RoIAlign as
    torchvision and detectron2 compute it (aligned=True, sampling_ratio 0: ceil(bin size)
    samples per bin and axis) on the box in molded-image pixels, at the level's stride.
    """

    def __init__(self, pool_size, pooler="crop_and_resize"):
        super().__init__()
        if pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, got {pooler!r}")
        self.pool_size = (pool_size, pool_size)
        self.pooler = pooler

    def forward(self, boxes, box_image, feature_maps, image_hw):
        """boxes [R, 4] normalised, box_image [R] (the image of each box), feature_maps [P2..P5]
        each [B, C, h, w], image_hw the molded image size -> pooled [R, C, pool, pool], channels
        last when the maps are (crop_and_resize's fast layout on the CPU)."""
        boxes = boxes.detach()
        levels = roi_pyramid_levels(boxes, image_hw[0] * image_hw[1])
        if self.pooler == "roi_align":
            rois = pixel_rois(boxes, box_image, image_hw)
        first = feature_maps[0]
        layout = (torch.channels_last if first.is_contiguous(memory_format=torch.channels_last)
                  else torch.contiguous_format)
        pooled = torch.empty((len(boxes), first.shape[1]) + self.pool_size, dtype=first.dtype,
                             device=first.device, memory_format=layout)
        for level, feature_map in enumerate(feature_maps, start=2):
            rows = torch.nonzero(levels == level).squeeze(1)
            if self.pooler == "roi_align":
                # P2..P5 have strides 4..32: the ResNet halves the map per stage.
                pooled[rows] = roi_align(feature_map, rois[rows], self.pool_size,
                                         spatial_scale=2.0 ** -level, sampling_ratio=0,
                                         aligned=True)
            else:
                pooled[rows] = crop_and_resize(feature_map, boxes[rows], box_image[rows],
                                               self.pool_size)
        return pooled


def pixel_rois(boxes, box_image, image_hw):
    """Normalised boxes [R, 4] of images box_image [R] -> roi_align's rois [R, 5] =
    (image, x1, y1, x2, y2) in molded-image pixels, pixel (i, j) covering [i, i+1) x [j, j+1)
    (mrcnn.boxes.pixel_boxes: a normalised box spans its pixels' full extent)."""
    y1, x1, y2, x2 = pixel_boxes(boxes, image_hw).unbind(1)
    return torch.stack([box_image.to(y1.dtype), x1, y1, x2, y2], dim=1)


class BoxHead(nn.Module):
    """Matterport's fpn_classifier_graph after the pooling: class scores and box deltas."""

    def __init__(self, num_classes, channels=256, pool_size=7, fc_size=1024, train_bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, fc_size, pool_size)
        self.bn1 = BatchNorm2d(fc_size, train_bn)
        self.conv2 = nn.Conv2d(fc_size, fc_size, 1)
        self.bn2 = BatchNorm2d(fc_size, train_bn)
        self.class_logits = nn.Linear(fc_size, num_classes)
        self.bbox_fc = nn.Linear(fc_size, 4 * num_classes)

    def forward(self, pooled):
        """pooled [R, C, 7, 7] -> (logits [R, K], probs [R, K], deltas [R, K, 4])."""
        x = conv2d(pooled, self.conv1, self.bn1, relu=True)
        x = conv2d(x, self.conv2, self.bn2, relu=True).flatten(1)
        logits = self.class_logits(x)
        deltas = self.bbox_fc(x).reshape(len(x), -1, 4)
        return logits, torch.softmax(logits, dim=-1), deltas

    def keras_layers(self):
        return {"mrcnn_class_conv1": self.conv1, "mrcnn_class_bn1": self.bn1,
                "mrcnn_class_conv2": self.conv2, "mrcnn_class_bn2": self.bn2,
                "mrcnn_class_logits": self.class_logits, "mrcnn_bbox_fc": self.bbox_fc}


class MaskHead(nn.Module):
    """Matterport's build_fpn_mask_graph after the pooling: a 28x28 soft mask per class."""

    def __init__(self, num_classes, channels=256, train_bn=False):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels if i == 0 else 256, 256, 3, padding=1)
                                   for i in range(4))
        self.bns = nn.ModuleList(BatchNorm2d(256, train_bn) for _ in range(4))
        self.deconv = nn.ConvTranspose2d(256, 256, 2, stride=2)
        self.mask = nn.Conv2d(256, num_classes, 1)

    def forward(self, pooled, classes=None):
        """pooled [R, C, 14, 14] -> mask probabilities [R, K, 28, 28] of every class or, given
        classes [R], [R, 28, 28] of each row's class, the last layer computed for it alone (a
        K-th of that layer's work and memory)."""
        x = pooled
        for conv, bn in zip(self.convs, self.bns):
            x = conv2d(x, conv, bn, relu=True)
        x = F.relu(self.deconv(x), inplace=True)
        if classes is None:
            return torch.sigmoid(self.mask(x))
        # The 1x1 convolution's dot products over channels, for one output channel per row.
        weight = self.mask.weight[classes, :, 0, 0]
        logits = torch.einsum("rchw,rc->rhw", x, weight) + self.mask.bias[classes, None, None]
        return torch.sigmoid(logits)

    def keras_layers(self):
        layers = {}
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns), start=1):
            layers[f"mrcnn_mask_conv{i}"] = conv
            layers[f"mrcnn_mask_bn{i}"] = bn
        layers["mrcnn_mask_deconv"] = self.deconv
        layers["mrcnn_mask"] = self.mask
        return layers


class MaskIoUHead(nn.Module):
    """Mask Scoring R-CNN's MaskIoU head: predicts the IoU of a mask with its ground truth.

    The defaults are the official sizes; a narrower head (conv_channels, fc_size) is the same
    graph at a fraction of the cost (the CPU test that shows the head learns trains one).
    """

    def __init__(self, num_classes, channels=256, pool_size=14, fc_size=1024, conv_channels=256):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(channels + 1, conv_channels, 3, padding=1),
            nn.Conv2d(conv_channels, conv_channels, 3, padding=1),
            nn.Conv2d(conv_channels, conv_channels, 3, padding=1),
            nn.Conv2d(conv_channels, conv_channels, 3, stride=2, padding=1),
        ])
        reduced = (pool_size + 1) // 2
        self.fc1 = nn.Linear(conv_channels * reduced * reduced, fc_size)
        self.fc2 = nn.Linear(fc_size, fc_size)
        self.iou = nn.Linear(fc_size, num_classes)
        # Saved with the weights: Matterport's files have no MaskIoU head, and the scores of an
        # untrained one mean nothing. Training sets it.
        self.register_buffer("trained", torch.tensor(False))
        self.reset_parameters()

    def reset_parameters(self):
        """The official initialisation (maskscoring_rcnn's maskiou_head)."""
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.iou.weight, std=0.01)
        nn.init.zeros_(self.iou.bias)

    def layer_names(self):
        """Layer name -> module, named like Matterport's heads (the head is not in its files)."""
        layers = {f"mrcnn_maskiou_conv{i}": conv for i, conv in enumerate(self.convs, start=1)}
        layers.update(mrcnn_maskiou_fc1=self.fc1, mrcnn_maskiou_fc2=self.fc2,
                      mrcnn_maskiou=self.iou)
        return layers

    def forward(self, pooled, masks):
        """pooled [R, C, 14, 14] mask-branch features, masks [R, 28, 28] probabilities of each
        RoI's class -> predicted IoU [R, K] for every class."""
        x = torch.cat([pooled, F.max_pool2d(masks[:, None], 2, stride=2)], dim=1)
        for conv in self.convs:
            x = conv2d(x, conv, relu=True)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.iou(x)

