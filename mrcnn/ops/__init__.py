"""Detection operators with hand-written C++/CUDA kernels (csrc/), dispatched through torch.ops.mrcnn."""
from mrcnn.ops import _ext  # noqa: F401
from mrcnn.ops.crop_and_resize import crop_and_resize, crop_and_resize_decomposed
from mrcnn.ops.nms import batched_nms, nms
from mrcnn.ops.roi_align import roi_align

__all__ = [
    "batched_nms",
    "crop_and_resize",
    "crop_and_resize_decomposed",
    "nms",
    "roi_align",
]
