"""Small building blocks shared by the network modules."""
import functools
import weakref

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


def _conv_bn(x, conv, bn):
    """bn(conv(x)); as one convolution with BatchNorm folded in when bn uses its moving statistics.

    Folding saves a pass over the activations (a sixth of the backbone's CPU time) and is the same
    affine map, differentiable in the conv's and the BatchNorm's parameters alike.
    """
    if bn.training and bn.use_batch_statistics:
        return bn(conv(x))
    return conv._conv_forward(x, *_folded_weight_and_bias(conv, bn))


def _folded_weight_and_bias(conv, bn):
    """conv's (weight, bias) with bn's moving-statistics affine map folded in."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return weight, bias


def conv2d(x, conv, bn=None, relu=False, residual=None):
    """relu(bn(conv(x)) + residual): the model's convolutions, each optional part left out when
    not given. x [B, C, H, W] -> [B, C', H', W'] (residual has the result's shape).

    bn, a BatchNorm2d, is folded into the convolution unless it normalises with batch statistics.
    In CPU inference (no autograd; float32, or bfloat16 under CPU autocast) the whole expression
    is one oneDNN primitive with the addition and the ReLU as post-ops, on weights folded and laid
    out for oneDNN once and kept until a parameter or buffer of conv or bn changes: no per-call
    folding, casting or weight reordering and no extra passes over the activations. A convolution
    whose kernel covers its whole channels-last input (the box head's) runs as the matrix product
    it is, which oneDNN computes faster. It is the plain path's arithmetic (the plain path serves
    training and CUDA), equal to it up to the summation order of the kernel oneDNN picks; in
    bfloat16 the addition and the ReLU also see the convolution before its rounding to bfloat16.
    """
    dtype = _fused_dtype(x, conv, bn)
    if dtype is not None:
        x = x.to(dtype)
        activation = "relu" if relu else None
        if residual is None and _is_matrix_product(x, conv):
            weight, bias = _packed_weight_and_bias(conv, bn, x.shape, dtype, as_matrix=True)
            # Channels last, the input's pixels flatten in the weight's (out, h, w, in) order.
            rows = x.permute(0, 2, 3, 1).reshape(len(x), -1)
            y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, activation or "none",
                                                   [], "")
            return y[:, :, None, None]
        weight, bias = _packed_weight_and_bias(conv, bn, x.shape, dtype)
        geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry,
                                                           activation or "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual.to(dtype), weight, bias, *geometry, "add", None, activation, [], "")
    y = conv(x) if bn is None else _conv_bn(x, conv, bn)
    if residual is not None:
        y.add_(residual)  # y is the convolution's own fresh result
    return F.relu(y, inplace=True) if relu else y


def _fused_dtype(x, conv, bn):
    """The dtype conv2d runs in as one fused oneDNN primitive (see conv2d), or None for the plain
    path: float32, or bfloat16 where CPU autocast asks for it and oneDNN has it. Graphs being
    traced (torch.compile, torch.export) get the plain, standard operators."""
    if not (x.device.type == "cpu" and x.dim() == 4 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros"
            and conv.weight.device.type == "cpu" and conv.weight.dtype == torch.float32
            and not (bn is not None and bn.training and bn.use_batch_statistics)):
        return None
    if torch.is_autocast_enabled("cpu"):
        if (torch.get_autocast_dtype("cpu") == torch.bfloat16
                and x.dtype in (torch.float32, torch.bfloat16)
                and _onednn_has_bfloat16()):
            return torch.bfloat16
        return None
    return torch.float32 if x.dtype == torch.float32 else None


@functools.cache
def _onednn_has_bfloat16():
    """Whether oneDNN computes bfloat16 on this CPU (asked once, not on every convolution)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _is_matrix_product(x, conv):
    """Whether conv on x is one dot product per output channel over the whole channels-last
    input: no padding, the kernel the input's size, one group."""
    return (conv.padding == (0, 0) and conv.groups == 1
            and tuple(conv.kernel_size) == tuple(x.shape[-2:])
            and x.is_contiguous(memory_format=torch.channels_last))


# conv module -> {(dtype, as_matrix): (what the weight was computed from, packed weight, bias)}.
_PACKED = weakref.WeakKeyDictionary()


def _packed_weight_and_bias(conv, bn, input_shape, dtype, as_matrix=False):
    """conv's weight (bn folded in) in `dtype`, laid out for oneDNN (blocked for its convolution
    or, with as_matrix, [out, h * w * in] for its matrix product), and its bias (in `dtype`,
    which oneDNN wants). Computed once per dtype and layout and kept beside the module (copying
    or saving it is unaffected) while every tensor they derive from is unchanged: same storage,
    same version counter (in-place updates such as load_state_dict and optimiser steps bump it).
    """
    sources = [t for t in [conv.weight, conv.bias] + ([] if bn is None else [
        bn.weight, bn.bias, bn.running_mean, bn.running_var]) if t is not None]
    # Tensors made in inference mode keep no version counter: their changes cannot be seen, so
    # their weights are laid out anew on every call.
    cacheable = not any(t.is_inference() for t in sources)
    key = tuple((t.data_ptr(), t._version) for t in sources) if cacheable else None
    cached = _PACKED.get(conv, {}).get((dtype, as_matrix))
    if cacheable and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    if bn is None:
        weight, bias = conv.weight, conv.bias
    else:
        weight, bias = _folded_weight_and_bias(conv, bn)
    weight = weight.detach().to(dtype)
    if as_matrix:
        packed = weight.permute(0, 2, 3, 1).reshape(len(weight), -1).contiguous()
    else:
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.contiguous().to_mkldnn(), list(conv.padding), list(conv.stride),
            list(conv.dilation), conv.groups, list(input_shape))
    bias = None if bias is None else bias.detach().to(dtype).contiguous()
    if cacheable:
        _PACKED.setdefault(conv, {})[dtype, as_matrix] = (key, packed, bias)
    return packed, bias


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
