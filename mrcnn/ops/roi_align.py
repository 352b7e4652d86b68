"""RoIAlign with torchvision.ops.roi_align semantics (kernels in csrc/roi_align_*)."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from mrcnn.ops import _ext  # noqa: F401  (registers torch.ops.mrcnn.roi_align)
from mrcnn.ops._layout import memory_format, new_empty
from mrcnn.ops.crop_and_resize import _check_out_without_grad


def roi_align(
    input: Tensor,
    rois: Union[Tensor, List[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    *,
    out: Optional[Tensor] = None,
) -> Tensor:
    """Pools each roi of `input` into a fixed grid of bins by averaging bilinear samples.

    Computes torchvision.ops.roi_align (Mask R-CNN's RoIAlign), with `aligned` defaulting to True.
    Differentiable with respect to `input`. `input` may be stored NCHW or channels last; the
    result (and the input's gradient) comes out in the same layout, with the same values.
    Channels last is the fast layout on the CPU.

    Args:
        input: Tensor[N, C, H, W] of float32 or float64, or also float16 or bfloat16 on CUDA
            (computed in float32).
        rois: Tensor[K, 5] of (batch_index, x1, y1, x2, y2) in input-image coordinates, or a
            list of N per-image Tensor[L_i, 4] of (x1, y1, x2, y2). Any floating dtype; read in
            float32 for half-precision input and in the input's dtype otherwise.
        output_size: the number of bins, an int for square output or (height, width).
        spatial_scale: the ratio of `input`'s size to the image's size, which maps box
            coordinates onto `input` (e.g. 1/16 for a stride-16 feature map).
        sampling_ratio: bilinear samples per bin along each axis; <= 0 takes
            ceil(roi_size / output_size) samples, per roi and axis.
        aligned: shift boxes by -0.5 pixel so that pixel centres fall on integer + 0.5
            coordinates (Detectron2). When False (the original Mask R-CNN op), rois are at
            least one pixel wide and high.
        out: Tensor[K, C, output_size[0], output_size[1]] of `input`'s dtype and device to write
            the result into and return, e.g. the result of an earlier call (written in place
            when laid out as the result would be, else copied). Not differentiable: `input` must
            not require a gradient.

    Returns:
        Tensor[K, C, output_size[0], output_size[1]] of `input`'s dtype and layout.

    Raises:
        RuntimeError: for malformed arguments, including batch indices outside [0, N) (checked
            on the host, so on CUDA the call waits for the rois).
        ValueError: for an output_size or list of boxes of the wrong form.
    """
    pooled_height, pooled_width = _pair(output_size)
    if not isinstance(rois, Tensor):
        rois = _boxes_to_rois(rois, input)
    args = (input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    if out is None:
        return torch.ops.mrcnn.roi_align(*args)
    _check_out_without_grad("roi_align", input)
    torch.ops.mrcnn.roi_align.out(*args, out=out)
    return out


def _pair(output_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    if (
        isinstance(output_size, Sequence)
        and len(output_size) == 2
        and all(isinstance(size, int) for size in output_size)
    ):
        return output_size[0], output_size[1]
    raise ValueError(
        f"output_size must be an int or a pair (height, width) of ints, got {output_size!r}"
    )


def _boxes_to_rois(boxes: List[Tensor], input: Tensor) -> Tensor:
    """List of N Tensor[L_i, 4] -> Tensor[sum L_i, 5] with each box's image index in front."""
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(
            f"rois must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    for i, image_boxes in enumerate(boxes):
        is_tensor = isinstance(image_boxes, Tensor)
        if not (is_tensor and image_boxes.dim() == 2 and image_boxes.size(1) == 4):
            found = f"shape {list(image_boxes.shape)}" if is_tensor else type(image_boxes).__name__
            raise ValueError(f"rois[{i}] must be a Tensor[L, 4] of (x1, y1, x2, y2), got {found}")
    if not boxes:
        return input.new_zeros((0, 5))
    return torch.cat(
        [torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)]
    )


@torch.library.register_fake("mrcnn::roi_align")
def _roi_align_fake(
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
):
    torch._check(
        input.dim() == 4,
        lambda: "roi_align: input must be a 4-D tensor [N, C, H, W], "
        f"got shape {list(input.shape)}",
    )
    _check_fake_args(rois, input, "input", pooled_height, pooled_width)
    return new_empty(input, (rois.size(0), input.size(1), pooled_height, pooled_width))


@torch.library.register_fake("mrcnn::roi_align.out")
def _roi_align_out_fake(
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, *, out
):
    pooled = _roi_align_fake(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
    )
    torch._check(
        out.shape == pooled.shape and out.dtype == pooled.dtype,
        lambda: f"roi_align: out must be a {pooled.dtype} tensor of shape "
        f"{tuple(pooled.shape)}, got {out.dtype} {tuple(out.shape)}",
    )


@torch.library.register_fake("mrcnn::roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch, channels, height, width,
    sampling_ratio, aligned,
):
    _check_fake_args(rois, grad, "grad", pooled_height, pooled_width)
    expected = [rois.size(0), channels, pooled_height, pooled_width]
    torch._check(
        list(grad.shape) == expected,
        lambda: f"roi_align_backward: grad must have shape {expected}, got {list(grad.shape)}",
    )
    return new_empty(grad, (batch, channels, height, width))


def _check_fake_args(rois, other, other_name, pooled_height, pooled_width):
    """The kernels' shape and device checks; batch indices cannot be checked without data."""
    torch._check(
        pooled_height > 0 and pooled_width > 0,
        lambda: f"roi_align: output size must be positive, got ({pooled_height}, {pooled_width})",
    )
    torch._check(
        rois.dim() == 2 and rois.size(1) == 5,
        lambda: "roi_align: rois must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2), "
        f"got shape {list(rois.shape)}",
    )
    torch._check(
        rois.device == other.device,
        lambda: f"roi_align: {other_name} and rois must be on the same device, "
        f"got {other.device} and {rois.device}",
    )


# roi_align is linear in `input`, so its backward is the transposed op and the backward's own
# backward (for double differentiation) is roi_align again. rois get no gradient. The backward's
# result takes the layout of the gradient it is given, handed over in the input's layout.

def _save_roi_align_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)
    ctx.memory_format = memory_format(input)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    grad_input = torch.ops.mrcnn.roi_align_backward(
        grad.contiguous(memory_format=ctx.memory_format), rois, spatial_scale, pooled_height,
        pooled_width, *ctx.input_shape, sampling_ratio, aligned,
    )
    return (grad_input,) + (None,) * 6


def _save_roi_align_backward_context(ctx, inputs, output):
    _, rois, spatial_scale, pooled_height, pooled_width, *_, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward_grad(ctx, grad_grad_input):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.mrcnn.roi_align(grad_grad_input, rois, *ctx.params)
    return (grad_grad,) + (None,) * 10


torch.library.register_autograd(
    "mrcnn::roi_align", _roi_align_grad, setup_context=_save_roi_align_context
)
torch.library.register_autograd(
    "mrcnn::roi_align_backward",
    _roi_align_backward_grad,
    setup_context=_save_roi_align_backward_context,
)
