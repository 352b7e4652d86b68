"""ResNet-50/101 in Matterport's layout (resnet_graph) and the FPN on top of it."""
import torch.nn.functional as F
from torch import nn

from mrcnn.layers import BatchNorm2d, conv2d, pad_same

# Identity blocks after the first block of stage 4.
STAGE4_IDENTITY_BLOCKS = {"resnet50": 5, "resnet101": 22}


class Bottleneck(nn.Module):
    """conv_block / identity_block: the stride sits on the first 1x1 conv and on the shortcut."""

    def __init__(self, in_channels, filters, stride=1, projection=False, train_bn=False):
        super().__init__()
        mid_a, mid_b, out = filters
        self.conv_a = nn.Conv2d(in_channels, mid_a, 1, stride=stride)
        self.bn_a = BatchNorm2d(mid_a, train_bn)
        self.conv_b = nn.Conv2d(mid_a, mid_b, 3, padding=1)
        self.bn_b = BatchNorm2d(mid_b, train_bn)
        self.conv_c = nn.Conv2d(mid_b, out, 1)
        self.bn_c = BatchNorm2d(out, train_bn)
        if projection:
            self.shortcut_conv = nn.Conv2d(in_channels, out, 1, stride=stride)
            self.shortcut_bn = BatchNorm2d(out, train_bn)
        else:
            self.shortcut_conv = self.shortcut_bn = None

    def forward(self, x):
        y = conv2d(x, self.conv_a, self.bn_a, relu=True)
        y = conv2d(y, self.conv_b, self.bn_b, relu=True)
        shortcut = x if self.shortcut_conv is None else conv2d(x, self.shortcut_conv,
                                                               self.shortcut_bn)
        return conv2d(y, self.conv_c, self.bn_c, relu=True, residual=shortcut)

    def keras_layers(self, stage, block):
        """Keras layer name -> module, e.g. res2a_branch2a, bn2a_branch2a, res2a_branch1."""
        names = [("branch2a", self.conv_a, self.bn_a), ("branch2b", self.conv_b, self.bn_b),
                 ("branch2c", self.conv_c, self.bn_c)]
        if self.shortcut_conv is not None:
            names.append(("branch1", self.shortcut_conv, self.shortcut_bn))
        layers = {}
        for branch, conv, bn in names:
            layers[f"res{stage}{block}_{branch}"] = conv
            layers[f"bn{stage}{block}_{branch}"] = bn
        return layers


class ResNet(nn.Module):
    """Returns C2..C5 (strides 4, 8, 16, 32; 256, 512, 1024, 2048 channels)."""

    def __init__(self, architecture="resnet101", train_bn=False):
        super().__init__()
        if architecture not in STAGE4_IDENTITY_BLOCKS:
            raise ValueError(f"architecture must be one of {sorted(STAGE4_IDENTITY_BLOCKS)}, "
                             f"got {architecture!r}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn_conv1 = BatchNorm2d(64, train_bn)
        blocks_per_stage = {2: 3, 3: 4, 4: 1 + STAGE4_IDENTITY_BLOCKS[architecture], 5: 3}
        in_channels = 64
        self.stages = nn.ModuleList()
        for stage, count in blocks_per_stage.items():
            width = 64 * 2 ** (stage - 2)
            filters = (width, width, 4 * width)
            blocks = [Bottleneck(in_channels, filters, stride=1 if stage == 2 else 2,
                                 projection=True, train_bn=train_bn)]
            blocks += [Bottleneck(4 * width, filters, train_bn=train_bn) for _ in range(count - 1)]
            self.stages.append(nn.Sequential(*blocks))
            in_channels = 4 * width

    def forward(self, images):
        """images [B, 3, H, W] -> [C2, C3, C4, C5]."""
        x = conv2d(images, self.conv1, self.bn_conv1, relu=True)
        x = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, stride=2)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def keras_layers(self):
        layers = {"conv1": self.conv1, "bn_conv1": self.bn_conv1}
        for stage_number, stage in enumerate(self.stages, start=2):
            for index, block in enumerate(stage):
                layers.update(block.keras_layers(stage_number, chr(ord("a") + index)))
        return layers


class FPN(nn.Module):
    """Feature pyramid: [C2..C5] -> [P2, P3, P4, P5, P6] with `channels` channels each."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), channels=256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                    for _ in in_channels)

    def forward(self, features):
        # The top-down path adds the lateral maps before their 3x3 convs.
        top_down = [conv2d(features[-1], self.lateral[-1])]
        for lateral, c in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            upsampled = F.interpolate(top_down[0], scale_factor=2, mode="nearest")
            top_down.insert(0, conv2d(c, lateral, residual=upsampled))
        pyramid = [conv2d(p, conv) for conv, p in zip(self.output, top_down)]
        pyramid.append(pyramid[-1][:, :, ::2, ::2])
        return pyramid

    def keras_layers(self):
        layers = {}
        for level, (lateral, output) in enumerate(zip(self.lateral, self.output), start=2):
            layers[f"fpn_c{level}p{level}"] = lateral
            layers[f"fpn_p{level}"] = output
        return layers

