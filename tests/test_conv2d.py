"""mrcnn.layers.conv2d: relu(bn(conv(x)) + residual), fused into one oneDNN convolution with
cached prepacked weights in CPU inference, and the plain PyTorch ops otherwise.

The fused path must agree with the plain ops and with a float64 computation to float32 rounding
(oneDNN may pick another kernel for a fused primitive, with another summation order, so equality
is not bit for bit in every case), and never serve weights that changed since they were packed.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrcnn.layers import BatchNorm2d, conv2d

# (in channels, out channels, kernel, stride, padding, input [B, H, W]).
SHAPES = [
    (16, 32, 3, 1, 1, (2, 12, 10)),
    (16, 32, 1, 1, 0, (2, 12, 10)),
    (16, 32, 1, 2, 0, (2, 12, 10)),
    (3, 8, 7, 2, 3, (2, 20, 18)),
    (32, 64, 7, 1, 0, (3, 7, 7)),      # the box head's layers: "fully connected" convs, matrix
    (64, 32, 1, 1, 0, (5, 1, 1)),      # products on channels-last inputs
    (64, 32, 3, 1, 1, (1, 24, 24)),
]


def make_case(seed, cin, cout, kernel, stride, padding, batch_hw, with_bn=True, bias=True):
    generator = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    bn = BatchNorm2d(cout) if with_bn else None
    with torch.no_grad():
        for tensor in [conv.weight, conv.bias] + ([bn.weight, bn.bias, bn.running_mean]
                                                  if with_bn else []):
            if tensor is not None:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
        if with_bn:
            bn.running_var.copy_(torch.rand(cout, generator=generator) + 0.5)
    conv.eval()
    if bn is not None:
        bn.eval()
    batch, height, width = batch_hw
    x = torch.randn(batch, cin, height, width, generator=generator)
    return conv, bn, x


def plain(x, conv, bn=None, relu=False, residual=None):
    """The plain path: conv2d with autograd on takes it."""
    with torch.enable_grad():
        return conv2d(x, conv, bn, relu=relu, residual=residual).detach()


def assert_same_float32(actual, expected):
    """Equal up to float32 rounding in another summation order: a few units in the last place of
    the largest result (a difference in the weights or the pattern would be far larger)."""
    torch.testing.assert_close(actual, expected, rtol=0,
                               atol=4e-6 * expected.abs().max().item())


def float64(x, conv, bn=None, relu=False, residual=None):
    weight, bias = conv.weight.double(), conv.bias.double() if conv.bias is not None else None
    y = F.conv2d(x.double(), weight, bias, conv.stride, conv.padding)
    if bn is not None:
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        y = (y - bn.running_mean.double()[:, None, None]) * scale[:, None, None] \
            + bn.bias.double()[:, None, None]
    if residual is not None:
        y = y + residual.double()
    return F.relu(y) if relu else y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_fused_equals_plain_ops(shape, relu, with_residual, layout):
    conv, bn, x = make_case(1, *shape)
    x = x.contiguous(memory_format=layout)
    with torch.no_grad():
        out_shape = conv(x).shape
    residual = (torch.randn(out_shape, generator=torch.Generator().manual_seed(2))
                .contiguous(memory_format=layout) if with_residual else None)
    with torch.inference_mode():
        fused = conv2d(x, conv, bn, relu=relu, residual=residual)
    expected = plain(x, conv, bn, relu=relu, residual=residual)
    assert fused.shape == expected.shape
    assert_same_float32(fused, expected)
    torch.testing.assert_close(fused.double(), float64(x, conv, bn, relu, residual),
                               rtol=1e-5, atol=1e-5)
    if relu:
        assert fused.min() >= 0


@pytest.mark.parametrize("with_bn, bias", [(False, True), (False, False), (True, True)])
def test_without_batchnorm_or_bias(with_bn, bias):
    conv, bn, x = make_case(3, 16, 32, 3, 1, 1, (2, 9, 9), with_bn=with_bn, bias=bias)
    with torch.no_grad():
        fused = conv2d(x, conv, bn, relu=True)
    assert_same_float32(fused, plain(x, conv, bn, relu=True))


def test_small_inputs_agree_with_float64():
    # PyTorch runs a batch-1 input this small through its own native kernel instead of oneDNN.
    conv, bn, x = make_case(4, 8, 16, 3, 1, 1, (1, 5, 5))
    with torch.no_grad():
        fused = conv2d(x, conv, bn, relu=True)
    torch.testing.assert_close(fused.double(), float64(x, conv, bn, relu=True), rtol=1e-5,
                               atol=1e-5)


def test_one_packed_weight_serves_every_input_size():
    # The RPN's shared conv runs on five pyramid levels, the heads on any number of boxes.
    conv, bn, _ = make_case(5, 16, 32, 3, 1, 1, (2, 8, 8))
    for batch, size in [(2, 32), (2, 4), (5, 16), (3, 1)]:
        x = torch.randn(batch, 16, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            fused = conv2d(x, conv, bn, relu=True)
        torch.testing.assert_close(fused.double(), float64(x, conv, bn, relu=True), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("change", ["load_state_dict", "conv weight in place", "running_var",
                                    "bn bias", "new parameter tensor"])
def test_packed_weights_follow_parameter_changes(change):
    conv, bn, x = make_case(6, 16, 32, 3, 1, 1, (2, 10, 10))
    with torch.inference_mode():
        conv2d(x, conv, bn, relu=True)  # packs the current weights
    other_conv, other_bn, _ = make_case(7, 16, 32, 3, 1, 1, (2, 10, 10))
    with torch.no_grad():
        if change == "load_state_dict":
            conv.load_state_dict(other_conv.state_dict())
            bn.load_state_dict(other_bn.state_dict())
        elif change == "conv weight in place":
            conv.weight.mul_(-2)
        elif change == "running_var":
            bn.running_var.add_(3)
        elif change == "bn bias":
            bn.bias.sub_(1)
        else:
            conv.weight = nn.Parameter(conv.weight * 0.5)
    with torch.inference_mode():
        fused = conv2d(x, conv, bn, relu=True)
    assert_same_float32(fused, plain(x, conv, bn, relu=True))


def test_modules_made_in_inference_mode():
    # Their tensors keep no version counter, so in-place changes must not meet a stale cache.
    with torch.inference_mode():
        conv, bn, x = make_case(11, 16, 32, 3, 1, 1, (2, 8, 8))
        first = conv2d(x, conv, bn, relu=True)
        conv.weight.mul_(-1)
        second = conv2d(x, conv, bn, relu=True)
    assert_same_float32(first, plain(x.clone(), conv_copy(conv, -1), bn_copy(bn), relu=True))
    assert_same_float32(second, plain(x.clone(), conv_copy(conv, 1), bn_copy(bn), relu=True))


def conv_copy(conv, sign):
    """A normal (not inference-mode) copy of conv, its weight times sign."""
    copy = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding).eval()
    with torch.no_grad():
        copy.weight.copy_(conv.weight.clone() * sign)
        copy.bias.copy_(conv.bias.clone())
    return copy


def bn_copy(bn):
    copy = BatchNorm2d(bn.num_features).eval()
    copy.load_state_dict({name: value.clone() for name, value in bn.state_dict().items()})
    return copy


def test_training_takes_the_plain_path():
    conv, bn, x = make_case(8, 16, 32, 3, 1, 1, (2, 6, 6))
    x.requires_grad_(True)
    y = conv2d(x, conv, bn, relu=True, residual=torch.ones(2, 32, 6, 6))
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None and bn.weight.grad is not None


def onednn_has_bfloat16():
    try:
        return (torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's ops
        return False


@pytest.mark.skipif(not onednn_has_bfloat16(), reason="oneDNN has no bfloat16 on this CPU")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_bfloat16_autocast(shape, with_residual):
    # Under CPU autocast the fused primitive runs in bfloat16 as autocast's convolution does.
    conv, bn, x = make_case(12, *shape)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out_shape = conv(x).shape
    residual = (torch.randn(out_shape, generator=torch.Generator().manual_seed(3))
                .contiguous(memory_format=torch.channels_last) if with_residual else None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.inference_mode():
            fused = conv2d(x, conv, bn, relu=True, residual=residual)
        expected = plain(x, conv, bn, relu=True, residual=residual)
    assert fused.dtype == expected.dtype == torch.bfloat16
    exact = float64(x, conv, bn, relu=True, residual=residual)
    scale = exact.abs().max().item()
    # Both within bfloat16 rounding of the exact values (8 bits: 2^-8 relative, a few times over
    # for the rounded inputs and weights).
    for result in (fused, expected):
        torch.testing.assert_close(result.double(), exact, rtol=0, atol=0.03 * scale)


def test_float32_and_bfloat16_weights_are_kept_apart():
    # A model alternating exact and bf16 calls must get each precision's own weights.
    conv, bn, x = make_case(13, 16, 32, 3, 1, 1, (2, 8, 8))
    with torch.inference_mode():
        first = conv2d(x, conv, bn)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = conv2d(x, conv, bn)
        again = conv2d(x, conv, bn)
    assert first.dtype == again.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert torch.equal(first, again)


def test_batch_statistics_are_not_folded():
    conv, _, x = make_case(9, 16, 32, 3, 1, 1, (4, 6, 6))
    bn = BatchNorm2d(32, use_batch_statistics=True).train()
    with torch.no_grad():
        y = conv2d(x, conv, bn)
    # Normalised by the batch's own statistics: each channel has mean ~0.
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_copies_of_a_module_are_unaffected():
    # The packed weights are kept beside the module: deep copies and saved state see none of it.
    import copy
    import io

    conv, bn, x = make_case(10, 16, 32, 3, 1, 1, (2, 6, 6))
    with torch.inference_mode():
        conv2d(x, conv, bn)
    clone = copy.deepcopy(conv)
    assert set(clone.state_dict()) == {"weight", "bias"}
    torch.save(conv, io.BytesIO())
    with torch.no_grad():
        clone.weight.mul_(2)
        assert_same_float32(conv2d(x, clone, bn), plain(x, clone, bn))
        assert_same_float32(conv2d(x, conv, bn), plain(x, conv, bn))


def test_traced_graphs_get_standard_operators():
    # torch.export (mrcnn.export) must see aten's convolution, not oneDNN's private ops.
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, _ = make_case(14, 16, 32, 3, 1, 1, (2, 6, 6))

        def forward(self, x):
            return conv2d(x, self.conv, self.bn, relu=True)

    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        program = torch.export.export(Block().eval(), (x,), strict=False)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("mkldnn" in target for target in targets)
    assert any("conv" in target for target in targets)
