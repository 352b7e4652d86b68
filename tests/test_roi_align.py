"""mrcnn.ops.roi_align against hand-computed cases and the independent plain-PyTorch reference of
tests/torch_reference.py, in float64."""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mrcnn.ops import roi_align
from tests import torch_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine")


def reference_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """The plain-PyTorch roi_align of tests/torch_reference.py, computed in float64."""
    return torch_reference.roi_align(input.double(), rois.double(), output_size, spatial_scale,
                                     sampling_ratio, aligned)


def random_rois(generator, num_rois, batch, image_height, image_width):
    """Tensor[num_rois, 5] float64: boxes from a fraction of a pixel to larger than the image,
    of any aspect ratio, some partly or wholly off the image and the first few inverted."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(num_rois, generator=generator, dtype=torch.float64)

    size = torch.tensor([image_width, image_height], dtype=torch.float64)
    centre = torch.stack([uniform(-0.2, 1.2), uniform(-0.2, 1.2)], dim=1) * size
    extent = torch.stack([uniform(-5, 0.2), uniform(-5, 0.2)], dim=1).exp() * size
    boxes = torch.cat([centre - extent / 2, centre + extent / 2], dim=1)
    boxes[:3] = boxes[:3, [2, 3, 0, 1]]
    batch_index = torch.randint(batch, (num_rois, 1), generator=generator).double()
    return torch.cat([batch_index, boxes], dim=1)


LAYOUTS = [torch.contiguous_format, torch.channels_last]


def ramp(height=4, width=4):
    """Tensor[1, 1, H, W] with value 10 y + x, on which bilinear interpolation is exact."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (10 * y + x).double()[None, None]


# (box (x1, y1, x2, y2) on ramp(), output_size, sampling_ratio, aligned, expected pooled values)
HAND_COMPUTED = [
    # Samples at 0.5, 1.5 | 2.5, 3.5; 3.5 clamps onto the last pixel (3).
    ((0, 0, 4, 4), 2, -1, False, [[11, 12.75], [28.5, 30.25]]),
    # Shifted by -0.5: samples at 0, 1 | 2, 3.
    ((0, 0, 4, 4), 2, -1, True, [[5.5, 7.5], [25.5, 27.5]]),
    # One sample per bin, at the bin centres 1 | 3.
    ((0, 0, 4, 4), 2, 1, False, [[11, 13], [31, 33]]),
    ((0, 0, 4, 4), 2, 2, False, [[11, 12.75], [28.5, 30.25]]),
    # Adaptive: bins 1.5 wide take ceil(1.5) = 2 samples, at 0.375, 1.125 | 1.875, 2.625.
    ((0, 0, 3, 3), 2, 0, False, [[8.25, 9.75], [23.25, 24.75]]),
    # y samples at -2 (off the map: contributes 0) and 0; x samples at 2.5, 3.5 -> 3 in the
    # first bin and 4.5, 5.5 (off the map) in the second; each bin still divides by 4.
    ((2, -3, 6, 1), (1, 2), 2, False, [[(2.5 + 3) / 4, 0]]),
    # y = -1 is still on the map and clamps to 0, as does y = 0.
    ((0, -1.5, 4, 0.5), 1, 2, False, [[2]]),
    # y = x = 4 = H = W is on the map and clamps onto the last pixel.
    ((3, 3, 5, 5), 1, 1, False, [[33]]),
    # Unaligned, a box smaller than a pixel grows to 1 x 1, sampled at its centre 1.5.
    ((1, 1, 1.2, 1.2), 1, -1, False, [[16.5]]),
    # Aligned, it stays 0.2 wide: one sample at 1 - 0.5 + 0.1.
    ((1, 1, 1.2, 1.2), 1, -1, True, [[6.6]]),
    # Aligned, an inverted box has an empty adaptive grid and pools to 0.
    ((3, 3, 1, 1), 1, -1, True, [[0]]),
    # Neither do boxes of infinite or NaN size.
    ((0, 0, math.inf, 4), 1, -1, True, [[0]]),
    ((0, math.nan, 4, 4), 1, -1, False, [[0]]),
]


@pytest.mark.parametrize("box, output_size, sampling_ratio, aligned, expected", HAND_COMPUTED)
def test_hand_computed(device, box, output_size, sampling_ratio, aligned, expected):
    rois = torch.tensor([[0, *box]], dtype=torch.float64, device=device)
    out = roi_align(ramp().to(device), rois, output_size, sampling_ratio=sampling_ratio,
                    aligned=aligned)
    expected = torch.tensor(expected, dtype=torch.float64)[None, None]
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-12)


def test_spatial_scale_and_batch_index(device):
    images = torch.stack([ramp()[0], 100 + ramp()[0]]).to(device)
    rois = torch.tensor([[1, 0, 0, 16, 16], [0, 0, 0, 16, 16]], dtype=torch.float64, device=device)
    out = roi_align(images, rois, 2, spatial_scale=0.25, sampling_ratio=1, aligned=False)
    expected = torch.tensor([[11.0, 13], [31, 33]], dtype=torch.float64)
    torch.testing.assert_close(out.cpu()[:, 0], torch.stack([100 + expected, expected]))


@pytest.mark.parametrize("rois_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rois_of_another_dtype(device, rois_dtype):
    rois = torch.tensor([[0, 0, 0, 4, 4]], dtype=rois_dtype, device=device)
    out = roi_align(ramp().float().to(device), rois, 2, aligned=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), torch.tensor([[[[11, 12.75], [28.5, 30.25]]]]))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25, 1 / 16])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(device, dtype, tol, spatial_scale, sampling_ratio, aligned, layout):
    generator = torch.Generator().manual_seed(0)
    input = torch.rand(2, 3, 11, 14, generator=generator, dtype=torch.float64).to(dtype)
    rois = random_rois(generator, 40, 2, 11 / spatial_scale, 14 / spatial_scale).to(dtype)
    out = roi_align(input.to(device).contiguous(memory_format=layout), rois.to(device), (5, 4),
                    spatial_scale, sampling_ratio, aligned)
    assert out.dtype == dtype and out.shape == (40, 3, 5, 4)
    assert out.is_contiguous(memory_format=layout)
    expected = reference_roi_align(input, rois, (5, 4), spatial_scale, sampling_ratio, aligned)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_matches_reference(device, dtype, tol, aligned, layout):
    generator = torch.Generator().manual_seed(1)
    input = torch.rand(2, 3, 9, 12, generator=generator, dtype=torch.float64).to(dtype)
    rois = random_rois(generator, 30, 2, 9 * 8, 12 * 8).to(dtype)
    upstream = torch.rand(30, 3, 3, 4, generator=generator, dtype=torch.float64)

    input_device = input.to(device, copy=True).contiguous(memory_format=layout).requires_grad_()
    out = roi_align(input_device, rois.to(device), (3, 4), 1 / 8, -1, aligned)
    (out * upstream.to(device, dtype)).sum().backward()

    input_reference = input.to(torch.float64, copy=True).requires_grad_()
    expected = reference_roi_align(input_reference, rois, (3, 4), 1 / 8, -1, aligned)
    (expected * upstream).sum().backward()
    assert input_device.grad.dtype == dtype
    assert input_device.grad.is_contiguous(memory_format=layout)
    torch.testing.assert_close(input_device.grad.cpu().double(), input_reference.grad,
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_channels_last_equals_nchw_bit_for_bit(sampling_ratio):
    # 300 channels (a vector tail) make 14-pixel tiles that the rois cross; the adaptive grid of
    # the widest rois has over 256 taps a bin, summed in parts.
    generator = torch.Generator().manual_seed(9)
    input = torch.randn(2, 300, 30, 200, generator=generator)
    rois = random_rois(generator, 40, 2, 30 * 4, 200 * 4).float()
    rois[:4] = torch.tensor([[0, 0, 0, 800, 120], [1, -40, 8, 840, 100], [1, 0, 0, 1, 1],
                             [0, 400, 60, 380, 40]])
    upstream = torch.randn(40, 300, 7, 5, generator=generator)
    results = []
    for layout in LAYOUTS:
        laid_out = input.clone(memory_format=layout).requires_grad_()
        out = roi_align(laid_out, rois, (7, 5), 0.25, sampling_ratio, aligned=True)
        out.backward(upstream)
        assert out.is_contiguous(memory_format=layout)
        assert laid_out.grad.is_contiguous(memory_format=layout)
        results.append((out.detach(), laid_out.grad))
    (out_nchw, grad_nchw), (out_nhwc, grad_nhwc) = results
    assert torch.equal(out_nhwc, out_nchw) and out_nchw.abs().sum() > 0
    assert torch.equal(grad_nhwc, grad_nchw) and grad_nchw.abs().sum() > 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_is_written_and_returned(device, layout):
    generator = torch.Generator().manual_seed(10)
    input = torch.rand(2, 5, 9, 8, generator=generator).to(device).contiguous(
        memory_format=layout)
    rois = random_rois(generator, 6, 2, 9, 8).float().to(device)
    expected = roi_align(input, rois, (3, 2), 0.5, 2)
    out = torch.full_like(expected, 7.0)
    assert roi_align(input, rois, (3, 2), 0.5, 2, out=out) is out
    assert torch.equal(out, expected)
    out_other_layout = torch.full(expected.shape, 7.0, device=device)
    roi_align(input, rois, (3, 2), 0.5, 2, out=out_other_layout)
    assert torch.equal(out_other_layout, expected)


def test_large_enough_to_run_in_parallel(device):
    # Enough bins that the CPU kernels split the work across threads.
    generator = torch.Generator().manual_seed(8)
    input = torch.rand(2, 16, 12, 12, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 64, 2, 48, 48)
    upstream = torch.rand(64, 16, 7, 7, generator=generator, dtype=torch.float64)
    input_device = input.to(device, copy=True).requires_grad_()
    out = roi_align(input_device, rois.to(device), 7, 0.25, 2, False)
    (out * upstream.to(device)).sum().backward()
    input.requires_grad_()
    expected = reference_roi_align(input, rois, (7, 7), 0.25, 2, False)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out.detach().cpu(), expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(input_device.grad.cpu(), input.grad, rtol=1e-12, atol=1e-12)


def test_backward_of_expanded_grad(device):
    # out.sum() hands the backward a stride-0 (non-contiguous) gradient.
    generator = torch.Generator().manual_seed(2)
    input = torch.rand(1, 2, 7, 8, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 10, 1, 7, 8)
    input_device = input.to(device, copy=True).requires_grad_()
    roi_align(input_device, rois.to(device), 3, sampling_ratio=2).sum().backward()
    input.requires_grad_()
    reference_roi_align(input, rois, (3, 3), 1.0, 2, True).sum().backward()
    torch.testing.assert_close(input_device.grad.cpu(), input.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
def test_gradcheck(device, aligned):
    generator = torch.Generator().manual_seed(3)
    input = torch.rand(2, 2, 5, 6, generator=generator, dtype=torch.float64)
    input = input.to(device).requires_grad_()
    rois = random_rois(generator, 6, 2, 10, 12).to(device)

    def pool(x):
        return roi_align(x, rois, (2, 3), spatial_scale=0.5, sampling_ratio=-1, aligned=aligned)

    assert torch.autograd.gradcheck(pool, (input,))
    assert torch.autograd.gradgradcheck(pool, (input,))


def test_rois_get_no_gradient(device):
    input = torch.rand(1, 1, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    rois = torch.tensor([[0, 1, 1, 3, 3.5]], dtype=torch.float64, device=device,
                        requires_grad=True)
    roi_align(input, rois, 2).sum().backward()
    assert rois.grad is None and input.grad.abs().sum() > 0


def test_non_contiguous_inputs(device):
    generator = torch.Generator().manual_seed(4)
    input = torch.rand(2, 3, 8, 9, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 12, 2, 8, 9)
    strided_input = input.to(device).permute(0, 1, 3, 2).contiguous().transpose(2, 3)
    strided_rois = torch.stack([rois, rois], dim=2).to(device)[..., 1]
    assert not strided_input.is_contiguous() and not strided_rois.is_contiguous()
    out = roi_align(strided_input, strided_rois, (2, 3), sampling_ratio=2, aligned=False)
    expected = reference_roi_align(input, rois, (2, 3), 1.0, 2, False)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-12, atol=1e-12)


def test_list_of_boxes(device):
    generator = torch.Generator().manual_seed(5)
    input = torch.rand(3, 2, 6, 7, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 9, 1, 6, 7)[:, 1:]
    boxes = [rois[:4], rois[4:4], rois[4:]]
    out = roi_align(input.to(device), [b.to(device) for b in boxes], [2, 2], 1.0, -1, True)
    batch_index = torch.tensor([0.0] * 4 + [2.0] * 5)[:, None]
    expected = reference_roi_align(input, torch.cat([batch_index, rois], dim=1), (2, 2), 1.0, -1,
                                   True)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-12, atol=1e-12)


def test_empty(device):
    input = torch.rand(2, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    for rois in (torch.zeros(0, 5, dtype=torch.float64, device=device), [],
                 [torch.zeros(0, 4, dtype=torch.float64, device=device)]):
        out = roi_align(input, rois, (2, 3))
        assert out.shape == (0, 3, 2, 3) and out.device == input.device
        out.sum().backward()
        assert input.grad.shape == input.shape and not input.grad.any()
    rois = torch.tensor([[0, 0, 0, 2, 2.0]], dtype=torch.float64, device=device)
    assert roi_align(input[:, :0], rois, 2).shape == (1, 0, 2, 2)
    # A map with no pixels has nothing to sample.
    assert not roi_align(input[:, :, :0], rois, 2).any()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cuda(dtype):
    generator = torch.Generator().manual_seed(6)
    input = torch.rand(2, 3, 10, 12, generator=generator).to(dtype)
    rois = random_rois(generator, 20, 2, 40, 48).float()
    input_cuda = input.cuda().requires_grad_()
    out = roi_align(input_cuda, rois.cuda(), 3, 0.25)
    assert out.dtype == dtype
    upstream = torch.rand(out.shape, generator=generator, dtype=torch.float64)
    (out * upstream.to("cuda", dtype)).sum().backward()
    input_reference = input.to(torch.float64, copy=True).requires_grad_()
    expected = reference_roi_align(input_reference, rois, (3, 3), 0.25, -1, True)
    (expected * upstream.to(dtype).double()).sum().backward()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.cpu().double(), expected, rtol=tol, atol=tol)
    assert input_cuda.grad.dtype == dtype
    torch.testing.assert_close(input_cuda.grad.cpu().double(), input_reference.grad,
                               rtol=tol, atol=tol)


# Bad arguments: tests/test_op_arguments.py (each case in a child process).


def test_fake_tensors():
    with FakeTensorMode():
        input = torch.empty(2, 3, 10, 12)
        rois = torch.empty(7, 5)
        out = roi_align(input, rois, (4, 5), 0.5)
        assert out.shape == (7, 3, 4, 5) and out.dtype == torch.float32
        grad_input = torch.ops.mrcnn.roi_align_backward(out, rois, 0.5, 4, 5, 2, 3, 10, 12, -1,
                                                        True)
        assert grad_input.shape == input.shape
        with pytest.raises(RuntimeError, match=r"rois must be a Tensor\[K, 5\]"):
            roi_align(input, torch.empty(7, 4), 2)


def test_fake_tensors_have_the_kernels_layout():
    input = torch.rand(2, 3, 10, 12).contiguous(memory_format=torch.channels_last)
    rois = random_rois(torch.Generator().manual_seed(11), 7, 2, 20, 24).float()
    out = roi_align(input, rois, (4, 5), 0.5)
    grad_input = torch.ops.mrcnn.roi_align_backward(out, rois, 0.5, 4, 5, 2, 3, 10, 12, -1, True)
    with FakeTensorMode() as mode:
        fake_out = roi_align(mode.from_tensor(input), mode.from_tensor(rois), (4, 5), 0.5)
        fake_grad = torch.ops.mrcnn.roi_align_backward(fake_out, mode.from_tensor(rois), 0.5, 4,
                                                       5, 2, 3, 10, 12, -1, True)
    assert fake_out.stride() == out.stride() and fake_grad.stride() == grad_input.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout):
    generator = torch.Generator().manual_seed(7)
    input = torch.rand(2, 3, 6, 7, generator=generator, dtype=torch.float64)
    input = input.contiguous(memory_format=layout).requires_grad_()
    rois = random_rois(generator, 5, 2, 12, 14)
    torch.library.opcheck(torch.ops.mrcnn.roi_align.default, (input, rois, 0.5, 2, 3, -1, True))
    out = torch.empty(5, 3, 2, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mrcnn.roi_align.out,
                          (input.detach(), rois, 0.5, 2, 3, -1, True), {"out": out})
    grad = torch.rand(5, 3, 2, 3, generator=generator, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mrcnn.roi_align_backward.default,
                          (grad.contiguous(memory_format=layout), rois, 0.5, 2, 3, 2, 3, 6, 7, 2,
                           False))
