"""tf.image.crop_and_resize (bilinear) for [N, C, H, W] tensors, differentiable in the image."""
import operator
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from mrcnn.ops import _ext  # noqa: F401  (registers torch.ops.mrcnn)
from mrcnn.ops._layout import memory_format, new_empty


def crop_and_resize(
    image: Tensor,
    boxes: Tensor,
    box_ind: Tensor,
    crop_size: Union[int, Sequence[int]],
    extrapolation_value: float = 0.0,
    *,
    out: Optional[Tensor] = None,
) -> Tensor:
    """Crops boxes out of a batch of images and resizes them bilinearly, exactly as
    ``tf.image.crop_and_resize(method="bilinear")`` does, for [N, C, H, W] tensors.

    Box coordinates are normalised: 0 and 1 are the centres of the first and last pixel rows
    (columns), so ``[0, 0, 1, 1]`` with ``crop_size = (H, W)`` returns the image itself. The
    ``crop_size`` samples of a box are spread evenly from its first to its second corner (a single
    sample sits at the box centre); a box with ``y1 > y2`` (``x1 > x2``) samples backwards. A
    sample row or column whose coordinate falls outside the image, or is NaN, takes
    ``extrapolation_value`` as a whole, with no blending at the border. The arithmetic is TF's, in
    the image's precision: float32 results equal TF's CPU kernel bit for bit, on the CPU and on
    CUDA.

    Gradients flow to ``image`` only (Matterport stops the gradient of the boxes); an
    extrapolated sample passes none.

    The image may be stored NCHW or channels last (``torch.channels_last``, as convolutions
    give it on the CPU); the crops (and the image's gradient) come out in the same layout, with
    the same values. On the CPU channels last is the fast layout: every sample then reads its
    pixels' channels as contiguous vectors.

    Args:
        image: ``[N, C, H, W]`` float32 or float64 (CUDA also float16 and bfloat16, computed in
            float32).
        boxes: ``[K, 4]`` rows ``(y1, x1, y2, x2)``; float32, or float64 with a float64 image.
        box_ind: ``[K]`` int32 or int64, the image of each box, in ``[0, N)``.
        crop_size: ``(crop_height, crop_width)``, or one int for a square crop; positive.
        extrapolation_value: value of samples outside the image.
        out: ``[K, C, crop_height, crop_width]`` tensor of the image's dtype and device to write
            the crops into and return, e.g. the crops of an earlier call: large results then
            need no fresh memory (written in place when laid out as the crops would be, else
            copied). Not differentiable: ``image`` must not require a gradient.

    Returns:
        ``[K, C, crop_height, crop_width]``, the dtype and layout of ``image``.
    """
    crop_height, crop_width = _pair(crop_size)
    args = (image, boxes, box_ind, crop_height, crop_width, float(extrapolation_value))
    if out is None:
        return torch.ops.mrcnn.crop_and_resize(*args)
    _check_out_without_grad("crop_and_resize", image)
    torch.ops.mrcnn.crop_and_resize.out(*args, out=out)
    return out


def _check_out_without_grad(op: str, input: Tensor) -> None:
    if torch.is_grad_enabled() and input.requires_grad:
        raise RuntimeError(
            f"{op}: out= does not support autograd, and the input requires a gradient; call it "
            "without out=, or under torch.no_grad()")


def crop_and_resize_decomposed(
    image: Tensor,
    boxes: Tensor,
    box_ind: Tensor,
    crop_height: int,
    crop_width: int,
    extrapolation_value: float = 0.0,
) -> Tensor:
    """``torch.ops.mrcnn.crop_and_resize`` written with plain torch operations (gathers and
    arithmetic), for graphs that cannot carry the compiled operator (the ONNX export).

    Same arguments, result and float arithmetic as the operator (TF's, each operation rounded on
    its own), so results equal it bit for bit; autograd differentiates it in the image. Memory:
    four gathered ``[K, crop_height, crop_width, C]`` corner tensors.
    """
    count = boxes.shape[0]
    _, channels, height, width = image.shape
    rows_inside, top, bottom, y_lerp = _axis_samples(boxes[:, 0], boxes[:, 2], crop_height, height)
    cols_inside, left, right, x_lerp = _axis_samples(boxes[:, 1], boxes[:, 3], crop_width, width)
    pixels = image.permute(0, 2, 3, 1).reshape(-1, channels)
    plane = box_ind.to(torch.int64)[:, None, None] * (height * width)

    def corners(rows, cols):
        """[K, crop_height, crop_width, C] pixels at rows [K, crop_height], cols [K, crop_width]."""
        index = plane + rows[:, :, None] * width + cols[:, None, :]
        return pixels[index.reshape(-1)].reshape(count, crop_height, crop_width, channels)

    x_lerp = x_lerp[:, None, :, None]
    upper = corners(top, left)
    upper = upper + (corners(top, right) - upper) * x_lerp
    lower = corners(bottom, left)
    lower = lower + (corners(bottom, right) - lower) * x_lerp
    crops = upper + (lower - upper) * y_lerp[:, :, None, None]
    inside = (rows_inside[:, :, None] & cols_inside[:, None, :])[..., None]
    crops = torch.where(inside, crops, torch.full_like(crops, extrapolation_value))
    return crops.permute(0, 3, 1, 2)


def _axis_samples(start: Tensor, end: Tensor, crop_size: int, size: int):
    """The samples of boxes running from start [K] to end [K] along an axis of `size` pixels
    (the kernel's axis_sample, csrc/crop_and_resize.h) -> (inside [K, crop_size] bool, low and
    high pixel [K, crop_size] int64 (0 outside), lerp [K, crop_size] the weight of high)."""
    last = float(size - 1)
    if crop_size > 1:
        step = (end - start) * last / float(crop_size - 1)
        index = torch.arange(crop_size, dtype=start.dtype, device=start.device)
        position = start[:, None] * last + index * step[:, None]
    else:
        # TF's 0.5 * (start + end) * (size - 1): a double product of the sum, rounded back.
        position = ((start + end).double() * 0.5 * last).to(start.dtype)[:, None]
    # NaN fails both comparisons, so it is outside too.
    inside = (position >= 0) & (position <= last)
    position = torch.where(inside, position, torch.zeros_like(position))
    low = torch.floor(position)
    return inside, low.to(torch.int64), torch.ceil(position).to(torch.int64), position - low


def _pair(crop_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    pair = tuple(crop_size) if isinstance(crop_size, Sequence) else (crop_size, crop_size)
    try:
        height, width = map(operator.index, pair)
    except (TypeError, ValueError):
        raise ValueError(
            f"crop_size must be an int or a pair of ints (height, width), got {crop_size!r}"
        ) from None
    return height, width


@torch.library.register_fake("mrcnn::crop_and_resize")
def _crop_and_resize_fake(image, boxes, box_ind, crop_height, crop_width, extrapolation_value):
    torch._check(image.dim() == 4, lambda: f"image must be 4-D [N, C, H, W], got {image.dim()}-D")
    torch._check(
        boxes.dim() == 2 and boxes.size(1) == 4,
        lambda: f"boxes must be a [K, 4] tensor, got {tuple(boxes.shape)}",
    )
    torch._check(
        crop_height > 0 and crop_width > 0,
        lambda: f"crop size must be positive, got {crop_height} x {crop_width}",
    )
    return new_empty(image, (boxes.size(0), image.size(1), crop_height, crop_width))


@torch.library.register_fake("mrcnn::crop_and_resize.out")
def _crop_and_resize_out_fake(image, boxes, box_ind, crop_height, crop_width,
                              extrapolation_value, *, out):
    crops = _crop_and_resize_fake(image, boxes, box_ind, crop_height, crop_width,
                                  extrapolation_value)
    torch._check(
        out.shape == crops.shape and out.dtype == crops.dtype,
        lambda: f"out must be a {crops.dtype} tensor of shape {tuple(crops.shape)}, "
        f"got {out.dtype} {tuple(out.shape)}",
    )


@torch.library.register_fake("mrcnn::crop_and_resize_backward")
def _crop_and_resize_backward_fake(grad, boxes, box_ind, batch, channels, height, width):
    torch._check(
        grad.dim() == 4,
        lambda: f"grad must be 4-D [K, C, crop_height, crop_width], got {grad.dim()}-D",
    )
    return new_empty(grad, (batch, channels, height, width))


# The backward's result takes the layout of the gradient it is given, which is handed over in
# the image's layout so that the image's gradient has it too.
def _setup_context(ctx, inputs, output):
    image, boxes, box_ind, *_ = inputs
    ctx.save_for_backward(boxes, box_ind)
    ctx.image_shape = tuple(image.shape)
    ctx.memory_format = memory_format(image)


def _backward(ctx, grad):
    boxes, box_ind = ctx.saved_tensors
    grad_image = None
    if ctx.needs_input_grad[0]:
        grad_image = torch.ops.mrcnn.crop_and_resize_backward(
            grad.contiguous(memory_format=ctx.memory_format), boxes, box_ind, *ctx.image_shape
        )
    return grad_image, None, None, None, None, None


# The backward is linear in `grad` and is the adjoint of the forward's linear map of the image
# (extrapolated samples are constants), so its own gradient is a crop with extrapolation 0.
def _setup_backward_context(ctx, inputs, output):
    grad, boxes, box_ind, *_ = inputs
    ctx.save_for_backward(boxes, box_ind)
    ctx.crop_size = tuple(grad.shape[2:])


def _backward_of_backward(ctx, grad_grad_image):
    boxes, box_ind = ctx.saved_tensors
    grad_grad = None
    if ctx.needs_input_grad[0]:
        grad_grad = torch.ops.mrcnn.crop_and_resize(
            grad_grad_image, boxes, box_ind, *ctx.crop_size, 0.0
        )
    return grad_grad, None, None, None, None, None, None


torch.library.register_autograd(
    "mrcnn::crop_and_resize", _backward, setup_context=_setup_context
)
torch.library.register_autograd(
    "mrcnn::crop_and_resize_backward",
    _backward_of_backward,
    setup_context=_setup_backward_context,
)
