"""mrcnn.ops.crop_and_resize against hand-computed crops, a numpy transcription of TensorFlow's CPU
kernels (CropAndResize and CropAndResizeGradImage, bit for bit in float32) and the differentiable
gather-based PyTorch implementation of tests/torch_reference.py."""
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mrcnn.ops import crop_and_resize
from tests import torch_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def tf_axis_sample(start, end, index, crop_size, size, real):
    """TF's sampling arithmetic along one axis, every operation rounded to `real` (np.float32 or
    np.float64) in TF's order. Returns None outside the image, else (low, high, lerp)."""
    if crop_size > 1:
        scale = (end - start) * real(size - 1) / real(crop_size - 1)
        position = start * real(size - 1) + real(index) * scale
    else:
        # TF: 0.5 * (start + end) * (size - 1), a double expression stored as float.
        position = real(np.float64(0.5) * np.float64(start + end) * np.float64(size - 1))
    if position < 0 or position > size - 1:
        return None
    low = int(np.floor(position))
    return low, int(np.ceil(position)), position - real(low)


def tf_crop_and_resize(image, boxes, box_ind, crop_height, crop_width, extrapolation_value=0.0):
    """TF's CropAndResize<CPUDevice> (bilinear) loop in numpy, NCHW, in the image's float type;
    the loop over channels is a vector operation."""
    real = image.dtype.type
    boxes = boxes.astype(real)
    crops = np.empty((len(boxes), image.shape[1], crop_height, crop_width), dtype=real)
    height, width = image.shape[2:]
    for b, (y1, x1, y2, x2) in enumerate(boxes):
        planes = image[box_ind[b]]
        for y in range(crop_height):
            row = tf_axis_sample(y1, y2, y, crop_height, height, real)
            for x in range(crop_width):
                col = tf_axis_sample(x1, x2, x, crop_width, width, real)
                if row is None or col is None:
                    crops[b, :, y, x] = real(extrapolation_value)
                    continue
                (top, bottom, y_lerp), (left, right, x_lerp) = row, col
                top_left, top_right = planes[:, top, left], planes[:, top, right]
                bottom_left, bottom_right = planes[:, bottom, left], planes[:, bottom, right]
                top_value = top_left + (top_right - top_left) * x_lerp
                bottom_value = bottom_left + (bottom_right - bottom_left) * x_lerp
                crops[b, :, y, x] = top_value + (bottom_value - top_value) * y_lerp
    return crops


def tf_crop_and_resize_grad(grad, boxes, box_ind, image_shape):
    """TF's CropAndResizeBackpropImage<CPUDevice> (bilinear) loop on one thread, in numpy, NCHW."""
    real = grad.dtype.type
    boxes = boxes.astype(real)
    grad_image = np.zeros(image_shape, dtype=real)
    height, width = image_shape[2:]
    crop_height, crop_width = grad.shape[2:]
    one = real(1)
    for b, (y1, x1, y2, x2) in enumerate(boxes):
        planes = grad_image[box_ind[b]]
        for y in range(crop_height):
            row = tf_axis_sample(y1, y2, y, crop_height, height, real)
            for x in range(crop_width):
                col = tf_axis_sample(x1, x2, x, crop_width, width, real)
                if row is None or col is None:
                    continue
                (top, bottom, y_lerp), (left, right, x_lerp) = row, col
                dtop = (one - y_lerp) * grad[b, :, y, x]
                planes[:, top, left] += (one - x_lerp) * dtop
                planes[:, top, right] += x_lerp * dtop
                dbottom = y_lerp * grad[b, :, y, x]
                planes[:, bottom, left] += (one - x_lerp) * dbottom
                planes[:, bottom, right] += x_lerp * dbottom
    return grad_image


def random_case(seed, batch, channels, height, width, num_boxes, dtype=np.float32):
    """Image, boxes and box_ind (numpy). Boxes reach outside [0, 1] and half are flipped; a few
    fixed ones hit pixel centres exactly, cover the image, are degenerate or lie fully outside."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    fixed = np.array(
        [[0, 0, 1, 1], [1, 1, 0, 0], [0.5, 0.25, 0.5, 0.75], [1.2, -0.5, 1.5, -0.2]], np.float32
    )
    random = rng.uniform(-0.4, 1.4, (num_boxes, 4)).astype(np.float32)
    boxes = np.concatenate([fixed, random])
    box_ind = rng.integers(0, batch, len(boxes))
    return image, boxes, box_ind


def to_torch(device, *arrays):
    return [torch.from_numpy(array).to(device) for array in arrays]


LAYOUTS = ["nchw", "channels_last"]


def laid_out(tensor, layout):
    """`tensor` stored NCHW or channels last (the same values)."""
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return tensor.contiguous(memory_format=memory_format)


def assert_layout(result, source, layout):
    """Results come out in the layout of the map they were computed from."""
    if layout == "channels_last" and source.size(1) > 1 and source[0, 0].numel() > 1:
        assert result.is_contiguous(memory_format=torch.channels_last)
        assert not result.is_contiguous() or result.size(1) == 1 or result[0, 0].numel() == 1
    else:
        assert result.is_contiguous()


# ---------------------------------------------------------------------------------------------
# Hand-computed crops
# ---------------------------------------------------------------------------------------------

TWO_BY_TWO = [[1.0, 2.0], [3.0, 4.0]]


def crop_2x2(device, box, crop_size, extrapolation_value=0.0):
    image = torch.tensor([[TWO_BY_TWO]], device=device)
    boxes = torch.tensor([box], dtype=torch.float32, device=device)
    box_ind = torch.zeros(1, dtype=torch.int64, device=device)
    return crop_and_resize(image, boxes, box_ind, crop_size, extrapolation_value)[0, 0].cpu()


@pytest.mark.parametrize(
    "box, crop_size, expected",
    [
        ([0, 0, 1, 1], 2, TWO_BY_TWO),
        ([0, 0, 1, 1], 3, [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]]),
        ([0, 0, 1, 1], 1, [[2.5]]),  # one sample: the box centre
        ([0, 0, 0, 0], 1, [[1]]),
        ([0, 0, 1, 0.5], (1, 3), [[2, 2.25, 2.5]]),  # one row at y = 0.5, x from 0 to 0.5
        ([1, 1, 0, 0], 2, [[4, 3], [2, 1]]),  # flipped box: samples run backwards
        ([0.5, 1, 0.5, 0], (1, 2), [[3, 2]]),
        ([-1, 0, 1, 1], (3, 2), [[-7, -7], [1, 2], [3, 4]]),  # first row above the image
        ([0, 0.5, 1, 1.5], (2, 3), [[1.5, 2, -7], [3.5, 4, -7]]),  # last column right of it
        ([2, 0, 3, 1], 2, [[-7, -7], [-7, -7]]),  # fully outside
    ],
)
def test_hand_computed(device, box, crop_size, expected):
    crops = crop_2x2(device, box, crop_size, extrapolation_value=-7.0)
    assert torch.equal(crops, torch.tensor(expected, dtype=torch.float32))


def test_no_blending_at_the_border(device):
    # Row y = -0.01 is just outside: the whole row is extrapolated, not blended with row 0.
    crops = crop_2x2(device, [-0.01, 0, 0.99, 1], (2, 2), extrapolation_value=100.0)
    assert torch.equal(crops[0], torch.tensor([100.0, 100.0]))
    assert torch.all(crops[1] < 4)


def test_multichannel_image_and_box_ind(device):
    image = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32, device=device).reshape(2, 3, 2, 2)
    boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], device=device)
    box_ind = torch.tensor([1, 0, 1], device=device)
    crops = crop_and_resize(image, boxes, box_ind, (2, 2))
    assert crops.shape == (3, 3, 2, 2)
    assert torch.equal(crops[0], image[1])
    assert torch.equal(crops[1], image[0])
    assert torch.equal(crops[2, :, 0, 0], image[1, :, 0, 0])
    assert torch.equal(crops[2, :, 1, 1], image[1, :, 0, 0])


def test_non_finite_boxes_are_extrapolated(device):
    nan, inf = float("nan"), float("inf")
    boxes = [[nan, 0, 1, 1], [0, 0, inf, 1], [-inf, -inf, inf, inf], [0, nan, 1, 1]]
    for box in boxes:
        assert torch.all(crop_2x2(device, box, 3, extrapolation_value=-7.0) == -7.0), box


def test_hand_computed_gradient(device):
    image = torch.tensor([[TWO_BY_TWO]], dtype=torch.float64, device=device, requires_grad=True)
    boxes = torch.tensor([[0, 0, 0.5, 1], [0, 0.5, 0, 2]], dtype=torch.float64, device=device)
    crops = crop_and_resize(image, boxes, torch.tensor([0, 0], device=device), (2, 2))
    grad = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]], [[[16.0, 32.0], [16.0, 32.0]]]])
    crops.backward(grad.to(device, torch.float64))
    # Box 0 samples rows 0 and 0.5 at columns 0 and 1: 1 and 2 go to pixels (0, 0) and (0, 1),
    # 4 and 8 half to row 0, half to row 1. Box 1 samples (0, 0.5) twice, its 16s shared between
    # (0, 0) and (0, 1), and (0, 2), outside the image, where its 32s are lost.
    expected = [[1 + 4 / 2 + 2 * 16 / 2, 2 + 8 / 2 + 2 * 16 / 2], [4 / 2, 8 / 2]]
    assert torch.equal(image.grad[0, 0].cpu(), torch.tensor(expected, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Against TF's kernels transcribed in numpy
# ---------------------------------------------------------------------------------------------

# (batch, channels, height, width, num random boxes, crop_size)
SHAPES = [
    (2, 3, 9, 7, 6, (7, 7)),
    (1, 1, 5, 6, 8, (1, 1)),
    (2, 4, 6, 11, 5, (1, 3)),
    (3, 2, 16, 13, 4, (14, 14)),
    (2, 3, 1, 1, 3, (3, 2)),  # one-pixel images
    (3, 1, 4, 4, 8, (3, 1)),
    (2, 64, 10, 12, 4, (14, 14)),  # several parallel_for chunks in both directions
    # Channels last: 300 channels (a vector tail) make 14-pixel tiles, 9 an image, and enough
    # work for threads; boxes cross the tiles.
    (2, 300, 40, 36, 30, (7, 7)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_float32_equals_tf_bit_for_bit(device, shape, layout):
    batch, channels, height, width, num_boxes, crop_size = shape
    image, boxes, box_ind = random_case(1, batch, channels, height, width, num_boxes)
    expected = tf_crop_and_resize(image, boxes, box_ind, *crop_size, extrapolation_value=-0.5)
    image_t, boxes_t, box_ind_t = to_torch(device, image, boxes, box_ind)
    crops = crop_and_resize(laid_out(image_t, layout), boxes_t, box_ind_t, crop_size, -0.5)
    assert crops.dtype == torch.float32
    assert_layout(crops, image_t, layout)
    np.testing.assert_array_equal(crops.cpu().numpy(), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_float64_matches_tf_in_double(device, shape, layout):
    batch, channels, height, width, num_boxes, crop_size = shape
    image, boxes, box_ind = random_case(2, batch, channels, height, width, num_boxes, np.float64)
    boxes = boxes.astype(np.float64) + np.random.default_rng(3).uniform(-1e-3, 1e-3, boxes.shape)
    expected = tf_crop_and_resize(image, boxes, box_ind, *crop_size, extrapolation_value=0.25)
    image_t, boxes_t, box_ind_t = to_torch(device, image, boxes, box_ind)
    crops = crop_and_resize(laid_out(image_t, layout), boxes_t, box_ind_t, crop_size, 0.25)
    assert crops.dtype == torch.float64
    np.testing.assert_allclose(crops.cpu().numpy(), expected, rtol=0, atol=1e-12)


def test_float64_image_with_float32_boxes(device):
    image, boxes, box_ind = random_case(4, 2, 3, 8, 9, 6, np.float64)
    expected = tf_crop_and_resize(image, boxes.astype(np.float64), box_ind, 5, 4)
    crops = crop_and_resize(*to_torch(device, image, boxes, box_ind), (5, 4))
    np.testing.assert_allclose(crops.cpu().numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_tf(device, shape, layout):
    batch, channels, height, width, num_boxes, crop_size = shape
    image, boxes, box_ind = random_case(5, batch, channels, height, width, num_boxes)
    grad = np.random.default_rng(6).standard_normal(
        (len(boxes), channels, *crop_size)).astype(np.float32)
    expected = tf_crop_and_resize_grad(grad, boxes, box_ind, image.shape)
    image_t, boxes_t, box_ind_t, grad_t = to_torch(device, image, boxes, box_ind, grad)
    image_t = laid_out(image_t, layout).requires_grad_(True)
    # The gradient arrives NCHW whatever the layout: the op hands it over in the image's.
    crop_and_resize(image_t, boxes_t, box_ind_t, crop_size).backward(grad_t)
    if device.type == "cpu":  # each value summed on one thread: TF's summation order exactly
        assert_layout(image_t.grad, image_t, layout)
        np.testing.assert_array_equal(image_t.grad.numpy(), expected)
    else:  # atomics sum in any order
        np.testing.assert_allclose(image_t.grad.cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Against a differentiable PyTorch implementation; gradcheck
# ---------------------------------------------------------------------------------------------


def float64_case(device, seed, crop_size=(4, 5)):
    image, boxes, box_ind = random_case(seed, 2, 3, 6, 7, 5, np.float64)
    # Jitter off the exact grid points of the fixed boxes: bilinear sampling is not
    # differentiable where a sample lands on a pixel, and gradcheck perturbs around it.
    boxes = boxes.astype(np.float64) + np.random.default_rng(seed).uniform(0.01, 0.02, boxes.shape)
    image, boxes, box_ind = to_torch(device, image, boxes, box_ind)
    return image.requires_grad_(True), boxes, box_ind, crop_size


def test_forward_and_backward_match_gather_implementation(device):
    image, boxes, box_ind, crop_size = float64_case(device, 7)
    crops = crop_and_resize(image, boxes, box_ind, crop_size, extrapolation_value=3.0)
    grad = torch.randn(crops.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    (grad_image,) = torch.autograd.grad(crops, image, grad.to(device))

    image_cpu = image.detach().cpu().requires_grad_(True)
    expected = torch_reference.crop_and_resize(image_cpu, boxes.cpu(), box_ind.cpu(), crop_size,
                                               3.0)
    (expected_grad,) = torch.autograd.grad(expected, image_cpu, grad)
    torch.testing.assert_close(crops.detach().cpu(), expected.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_image.cpu(), expected_grad, rtol=0, atol=1e-12)
    assert expected_grad.abs().sum() > 0


def test_gradcheck(device):
    image, boxes, box_ind, crop_size = float64_case(device, 9)
    assert torch.autograd.gradcheck(
        lambda x: crop_and_resize(x, boxes, box_ind, crop_size, 1.5), (image,))
    assert torch.autograd.gradgradcheck(
        lambda x: crop_and_resize(x, boxes, box_ind, crop_size, 1.5), (image,))


def test_boxes_get_no_gradient(device):
    image, boxes, box_ind, crop_size = float64_case(device, 10)
    boxes.requires_grad_(True)
    crops = crop_and_resize(image, boxes, box_ind, crop_size)
    crops.sum().backward()
    assert boxes.grad is None
    assert image.grad is not None


# ---------------------------------------------------------------------------------------------
# Shapes, layouts, dtypes
# ---------------------------------------------------------------------------------------------


def test_no_boxes(device):
    image = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    boxes = torch.zeros(0, 4, device=device)
    crops = crop_and_resize(image, boxes, torch.zeros(0, dtype=torch.int64, device=device), (7, 6))
    assert crops.shape == (0, 3, 7, 6)
    crops.sum().backward()
    assert torch.equal(image.grad, torch.zeros_like(image))


def test_no_channels(device):
    image = torch.zeros(2, 0, 5, 5, device=device)
    boxes = torch.tensor([[0.0, 0, 1, 1]], device=device)
    crops = crop_and_resize(image, boxes, torch.tensor([1], device=device), 3)
    assert crops.shape == (1, 0, 3, 3)


def test_non_contiguous_inputs(device):
    image, boxes, box_ind = to_torch(device, *random_case(11, 2, 4, 9, 8, 6))
    expected = crop_and_resize(image, boxes, box_ind, (5, 3))
    image_nhwc = image.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    boxes_strided = torch.stack([boxes, -boxes], dim=2).reshape(len(boxes), 8)[:, ::2]
    box_ind_strided = torch.stack([box_ind, box_ind], dim=1)[:, 0]
    assert not (image_nhwc.is_contiguous() or boxes_strided.is_contiguous()
                or box_ind_strided.is_contiguous())
    crops = crop_and_resize(image_nhwc, boxes_strided, box_ind_strided, (5, 3))
    assert torch.equal(crops, expected)


def test_int32_box_ind_and_int_crop_size(device):
    image, boxes, box_ind = to_torch(device, *random_case(12, 3, 2, 7, 7, 5))
    expected = crop_and_resize(image, boxes, box_ind, (4, 4))
    assert torch.equal(crop_and_resize(image, boxes, box_ind.int(), 4), expected)


def test_large_channels_last_crops_equal_nchw():
    # Crops of over 16 MB are written past the caches, when aligned: into a fresh tensor, into an
    # out= tensor one element off alignment, and into an NCHW out= tensor (through a copy).
    generator = torch.Generator().manual_seed(17)
    image = torch.randn(2, 256, 40, 48, generator=generator)
    boxes = torch.rand(70, 4, generator=generator) * 1.2 - 0.1
    box_ind = torch.randint(0, 2, (70,), generator=generator)
    expected = crop_and_resize(image, boxes, box_ind, 16)
    image_nhwc = laid_out(image, "channels_last")
    crops = crop_and_resize(image_nhwc, boxes, box_ind, 16)
    assert crops.nbytes > 16 << 20 and crops.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(crops, expected)
    misaligned = torch.empty(crops.numel() + 1)[1:].view(70, 16, 16, 256).permute(0, 3, 1, 2)
    assert crop_and_resize(image_nhwc, boxes, box_ind, 16, out=misaligned) is misaligned
    assert torch.equal(misaligned, expected)
    nchw_out = torch.empty_like(expected)
    crop_and_resize(image_nhwc, boxes, box_ind, 16, out=nchw_out)
    assert torch.equal(nchw_out, expected)


def test_large_results_reuse_freed_memory_only():
    # Results of 16 MB and more come from memory that freed results give back: never while a
    # result that holds it is alive, and then with the values of the new call. (22 MB: no other
    # test makes results of about this size, whose freed memory could be handed out instead.)
    generator = torch.Generator().manual_seed(19)
    image = laid_out(torch.randn(1, 64, 32, 32, generator=generator), "channels_last")
    boxes = torch.rand(300, 4, generator=generator)
    box_ind = torch.zeros(300, dtype=torch.int64)
    first = crop_and_resize(image, boxes, box_ind, 17)
    assert first.nbytes >= 16 << 20
    kept = first.clone()
    second = crop_and_resize(image, boxes.flip(0), box_ind, 17)
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, kept)
    address = first.data_ptr()
    del first
    third = crop_and_resize(image, boxes.flip(0), box_ind, 17)
    assert third.data_ptr() == address and torch.equal(third, second)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_is_written_and_returned(device, layout):
    image, boxes, box_ind = to_torch(device, *random_case(18, 2, 5, 9, 8, 6))
    image = laid_out(image, layout)
    expected = crop_and_resize(image, boxes, box_ind, (4, 3), 0.5)
    out = torch.full_like(expected, 7.0)
    assert crop_and_resize(image, boxes, box_ind, (4, 3), 0.5, out=out) is out
    assert torch.equal(out, expected)
    out_other_layout = torch.full(expected.shape, 7.0, device=device)
    crop_and_resize(image, boxes, box_ind, (4, 3), 0.5, out=out_other_layout)
    assert torch.equal(out_other_layout, expected)


def valid_args(device):
    return dict(image=torch.zeros(2, 3, 4, 5, device=device), boxes=torch.zeros(6, 4, device=device),
                box_ind=torch.zeros(6, dtype=torch.int64, device=device), crop_size=(3, 3))


def test_out_may_not_overlap_the_image(device):
    args = valid_args(device)
    args["image"] = torch.zeros(6 * 3 * 3 * 3, device=device)
    with pytest.raises(RuntimeError, match="unsupported operation"):
        crop_and_resize(args["image"].view(2, 3, 9, 3), args["boxes"], args["box_ind"], (3, 3),
                        out=args["image"].view(6, 3, 3, 3))


def test_out_refuses_autograd(device):
    args = valid_args(device)
    args["image"].requires_grad_(True)
    out = torch.zeros(6, 3, 3, 3, device=device)
    with pytest.raises(RuntimeError, match="out= does not support autograd"):
        crop_and_resize(**args, out=out)
    with torch.no_grad():
        crop_and_resize(**args, out=out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@CUDA
def test_reduced_precision_on_cuda(dtype):
    image, boxes, box_ind = to_torch("cuda", *random_case(13, 2, 5, 9, 10, 6))
    image = image.to(dtype).requires_grad_(True)
    crops = crop_and_resize(image, boxes, box_ind, (6, 4))
    # Read as float, computed in float, rounded once.
    expected = crop_and_resize(image.detach().float(), boxes, box_ind, (6, 4)).to(dtype)
    assert crops.dtype == dtype and torch.equal(crops, expected)

    grad = torch.randn(crops.shape, generator=torch.Generator().manual_seed(16)).to("cuda", dtype)
    crops.backward(grad)
    image_float = image.detach().float().requires_grad_(True)
    crop_and_resize(image_float, boxes, box_ind, (6, 4)).backward(grad.float())
    assert image.grad.dtype == dtype
    torch.testing.assert_close(image.grad, image_float.grad.to(dtype))


@CUDA
def test_cuda_matches_cpu_bit_for_bit():
    image, boxes, box_ind = to_torch("cpu", *random_case(14, 2, 8, 23, 31, 40))
    for crop_size in [(7, 7), (14, 14), (1, 1), (1, 3)]:
        cpu = crop_and_resize(image, boxes, box_ind, crop_size)
        cuda = crop_and_resize(image.cuda(), boxes.cuda(), box_ind.cuda(), crop_size)
        assert torch.equal(cuda.cpu(), cpu)


# Bad arguments: tests/test_op_arguments.py (each case in a child process).


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels
# ---------------------------------------------------------------------------------------------


def test_fake_kernels_give_shapes_without_data():
    with FakeTensorMode():
        image = torch.empty(2, 3, 10, 12)
        boxes = torch.empty(5, 4)
        box_ind = torch.empty(5, dtype=torch.int64)
        crops = crop_and_resize(image, boxes, box_ind, (7, 6))
        grad_image = torch.ops.mrcnn.crop_and_resize_backward(crops, boxes, box_ind, 2, 3, 10, 12)
    assert crops.shape == (5, 3, 7, 6) and crops.dtype == torch.float32
    assert grad_image.shape == (2, 3, 10, 12)


def test_fake_kernels_give_the_layout_of_the_kernels():
    image = laid_out(torch.zeros(2, 3, 10, 12), "channels_last")
    boxes = torch.rand(5, 4)
    box_ind = torch.zeros(5, dtype=torch.int64)
    crops = crop_and_resize(image, boxes, box_ind, (7, 6))
    grad_image = torch.ops.mrcnn.crop_and_resize_backward(crops, boxes, box_ind, 2, 3, 10, 12)
    with FakeTensorMode() as mode:
        fake_crops = crop_and_resize(mode.from_tensor(image), mode.from_tensor(boxes),
                                     mode.from_tensor(box_ind), (7, 6))
        fake_grad = torch.ops.mrcnn.crop_and_resize_backward(
            fake_crops, mode.from_tensor(boxes), mode.from_tensor(box_ind), 2, 3, 10, 12)
    assert fake_crops.stride() == crops.stride() and fake_grad.stride() == grad_image.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(device, layout):
    image, boxes, box_ind, crop_size = float64_case(device, 15)
    image = laid_out(image.detach(), layout).requires_grad_(True)
    torch.library.opcheck(
        torch.ops.mrcnn.crop_and_resize.default, (image, boxes, box_ind, *crop_size, 0.5))
    out = torch.empty(len(boxes), 3, *crop_size, dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.mrcnn.crop_and_resize.out,
        (image.detach(), boxes, box_ind, *crop_size, 0.5), {"out": out})
    grad = laid_out(torch.randn(len(boxes), 3, *crop_size, dtype=torch.float64, device=device),
                    layout)
    torch.library.opcheck(
        torch.ops.mrcnn.crop_and_resize_backward.default, (grad, boxes, box_ind, 2, 3, 6, 7))
