"""Pyramid anchors exactly as Matterport's utils.generate_pyramid_anchors + norm_boxes make them."""
import numpy as np
import torch

from mrcnn.boxes import norm_boxes
from mrcnn.config import backbone_shapes


def level_anchors(scale, ratios, shape, feature_stride, anchor_stride):
    """Pixel anchors [H*W*len(ratios), 4] float64 of one level, rows ordered y, x, ratio.

    Centres sit at (y * feature_stride, x * feature_stride) with no half-stride offset; ratio is
    width / height.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    heights = scale / np.sqrt(ratios)
    widths = scale * np.sqrt(ratios)
    ys = np.arange(0, shape[0], anchor_stride) * feature_stride
    xs = np.arange(0, shape[1], anchor_stride) * feature_stride
    center_y, center_x, height = np.meshgrid(ys, xs, heights, indexing="ij")
    width = np.broadcast_to(widths, height.shape)
    boxes = np.stack([center_y - 0.5 * height, center_x - 0.5 * width,
                      center_y + 0.5 * height, center_x + 0.5 * width], axis=-1)
    return boxes.reshape(-1, 4)


def pyramid_pixel_anchors(config, image_hw):
    """Pixel anchors [A, 4] float64 for a molded image of size image_hw, levels P2..P6 (the
    coordinates Matterport's RPN targets use)."""
    shapes = backbone_shapes(image_hw, config.BACKBONE_STRIDES)
    return np.concatenate([
        level_anchors(scale, config.RPN_ANCHOR_RATIOS, shape, stride, config.RPN_ANCHOR_STRIDE)
        for scale, shape, stride in zip(config.RPN_ANCHOR_SCALES, shapes, config.BACKBONE_STRIDES)
    ])


def pyramid_anchors(config, image_hw):
    """Normalised float32 anchors [A, 4] for a molded image of size image_hw, levels P2..P6."""
    return norm_boxes(pyramid_pixel_anchors(config, image_hw), image_hw, torch.float64)


class AnchorCache:
    """Anchors per (molded image size, device), computed once."""

    def __init__(self, config):
        self.config = config
        self._anchors = {}

    def __call__(self, image_hw, device):
        key = (int(image_hw[0]), int(image_hw[1]), torch.device(device))
        if key not in self._anchors:
            anchors = pyramid_anchors(self.config, key[:2])
            self._anchors[key] = torch.from_numpy(anchors).to(device)
        return self._anchors[key]
