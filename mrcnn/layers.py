"""Small building blocks shared by the network modules."""
import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm2d(nn.BatchNorm2d):
    """Keras BatchNormalization as Matterport runs it: epsilon 1e-3, moving statistics.

    With Matterport's TRAIN_BN = False the layer normalises with its moving statistics in training
    too (gamma and beta may still learn); `use_batch_statistics=True` gives ordinary batch norm
    while the module is in training mode.
    """

    def __init__(self, num_features, use_batch_statistics=False):
        super().__init__(num_features, eps=1e-3, momentum=0.01)
        self.use_batch_statistics = use_batch_statistics

    def forward(self, x):
        if self.training and self.use_batch_statistics:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


def conv_bn(x, conv, bn):
    """bn(conv(x)); as one convolution with BatchNorm folded in when bn uses its moving statistics.

    Folding saves a pass over the activations (a sixth of the backbone's CPU time) and is the same
    affine map, differentiable in the conv's and the BatchNorm's parameters alike.
    """
    if bn.training and bn.use_batch_statistics:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return conv._conv_forward(x, weight, bias)


def same_padding(size, kernel, stride):
    """TensorFlow 'SAME' padding (before, after) of one spatial axis: extra padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x, kernel, stride, value=0.0):
    """Pads an NCHW tensor so that a `kernel`/`stride` window gives TensorFlow's 'SAME' output."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def pad_per_image(rows, image_index, batch, count):
    """Rows [M, D] of several images, in priority order, -> [batch, count, D].

    Each image gets its first `count` rows in their given order, then zero rows.
    """
    # A row's rank within its image: how many rows of its image come before it. Counted with
    # fixed-shape ops (no data-dependent sizes), so the graph exports (mrcnn.export).
    of_image = image_index[:, None] == torch.arange(batch, device=rows.device)
    rank = (torch.cumsum(of_image, 0) - 1).gather(1, image_index[:, None]).squeeze(1)
    fits = rank < count
    out = rows.new_zeros((batch, count) + rows.shape[1:])
    out[image_index[fits], rank[fits]] = rows[fits]
    return out
