"""The memory layout the CPU kernels read a map in (the rule of csrc/cpu_kernels.h), for the
fake kernels and the autograd formulas, which must give their results the kernels' layout."""
import torch
from torch import Tensor


def is_channels_last(map: Tensor) -> bool:
    """Whether a 4-D map is stored exactly as contiguous NHWC (and not also as NCHW: a map with
    one channel or one pixel is both, and is read as NCHW)."""
    return (map.dim() == 4 and not map.is_contiguous()
            and map.is_contiguous(memory_format=torch.channels_last))


def memory_format(map: Tensor) -> torch.memory_format:
    """The layout of the kernels' results for `map`: channels last or contiguous (NCHW)."""
    return torch.channels_last if is_channels_last(map) else torch.contiguous_format


def new_empty(map: Tensor, size) -> Tensor:
    """An uninitialised [.., .., .., ..] tensor of `size` with `map`'s dtype and device, laid out
    as the kernels lay out their results for `map`."""
    return torch.empty(size, dtype=map.dtype, device=map.device,
                       memory_format=memory_format(map))
