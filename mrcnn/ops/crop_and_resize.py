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
