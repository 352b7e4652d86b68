"""The arithmetic the model's forward pass runs in: exact by default, faster on request.

- ``exact``: float32 everywhere, with TensorFloat-32 off for cuDNN convolutions and cuBLAS
  matmuls (PyTorch's default runs CUDA convolutions in TF32, which loses a quarter of Matterport's
  detections on the reference cases) and oneDNN's reduced-precision modes off on the CPU.
- ``tf32``: TF32 convolutions and matmuls on GPUs that have it (Ampere and later); on the CPU
  it computes exactly what ``exact`` does.
- ``bf16``: the network layers (backbone, FPN, RPN head, box, mask and MaskIoU heads) under
  bfloat16 autocast with channels-last activations; the stages whose numbers decide boxes and
  pixels (proposals, box decoding, the detection layer, unmolding) and the RoI pooling ops get
  float32 inputs. Fast on GPUs and on CPUs with AVX512-BF16 or AMX; slow elsewhere.

The flags are process-wide, so `precision_scope` sets them for the model's own call and restores
the caller's on the way out, exceptions included. Another thread running PyTorch work at the same
time sees them too.
"""
import contextlib

import torch

from mrcnn.config import PRECISIONS

# The (backend, operator) float32 precision settings a forward pass depends on.
_FLAGS = (("cuda", "matmul"), ("cuda", "conv"), ("mkldnn", "matmul"), ("mkldnn", "conv"))


def check_precision(precision):
    """Returns `precision` if it is one of PRECISIONS, else raises ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def float32_flags(tf32):
    """TF32 on (tf32=True) or off for CUDA convolutions and matmuls, and oneDNN's bf16/tf32
    float32 modes off, inside the block; the caller's settings are restored on exit."""
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:
        # torch refuses to read flags set through a mix of its legacy and new APIs. The legacy
        # matmul flag is then left alone, and the new-API values, which decide, are set and
        # restored all the same.
        legacy = None
    saved = {flag: torch._C._get_fp32_precision_getter(*flag) for flag in _FLAGS}
    try:
        if legacy is not None:
            # cuBLAS refuses to run when the legacy matmul flag and the new one disagree.
            torch.set_float32_matmul_precision("high" if tf32 else "highest")
        wanted = {("cuda", "matmul"): "tf32" if tf32 else "ieee",
                  ("cuda", "conv"): "tf32" if tf32 else "ieee",
                  ("mkldnn", "matmul"): "ieee", ("mkldnn", "conv"): "ieee"}
        for flag, value in wanted.items():
            torch._C._set_fp32_precision_setter(*flag, value)
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for flag, value in saved.items():
            torch._C._set_fp32_precision_setter(*flag, value)


class Precision:
    """How one forward pass computes: `flags()` around the whole pass, `network()` around the
    network layers (bfloat16 autocast in bf16 mode, nothing otherwise).

    Args:
        precision: one of PRECISIONS.
        device: the device the pass runs on.
    """

    def __init__(self, precision, device):
        self.name = check_precision(precision)
        self.device_type = torch.device(device).type

    def flags(self):
        return float32_flags(tf32=self.name == "tf32")

    def network(self):
        if self.name != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)


def fast_precision(device):
    """(precision, reason): "bf16" where bfloat16 has hardware support (CUDA GPUs of compute
    capability 8.0 and later, CPUs with AVX512-BF16 or AMX), else "exact"."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"{torch.cuda.get_device_name(device)} computes bfloat16 natively"
        return "exact", "this GPU has no native bfloat16"
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return "bf16", "this CPU has AVX512-BF16/AMX"
    return "exact", "this CPU has no bfloat16 instructions"
