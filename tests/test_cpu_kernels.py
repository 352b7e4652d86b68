"""The instruction-set variants of the CPU kernels (csrc/cpu_kernels.h: the channels-last pooling
kernels and NMS's IoU scan) compute the same values bit for bit. A process runs one variant, chosen by MRCNN_CPU_ISA, so each is run in a
child process and compared with this process's (by default the widest the CPU has)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mrcnn.ops

ROOT = Path(__file__).resolve().parents[1]


def kernel_results(dtype):
    """Crops, pooled bins and the image gradient of both, from a fixed channels-last case whose
    37 channels leave a vector tail at every width, and the boxes NMS keeps of 3,000 that
    overlap in clusters."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 37, 23, 29, generator=generator, dtype=dtype)
    image = image.contiguous(memory_format=torch.channels_last).requires_grad_()
    boxes = torch.rand(25, 4, generator=generator) * 1.4 - 0.2
    box_ind = torch.randint(0, 2, (25,), generator=generator)
    rois = torch.cat([box_ind[:, None].float(), boxes * 30], dim=1).to(dtype)
    crops = mrcnn.ops.crop_and_resize(image, boxes.to(dtype), box_ind, (5, 6), 0.5)
    pooled = mrcnn.ops.roi_align(image, rois, (3, 4), 1.0, -1, aligned=False)
    (grad,) = torch.autograd.grad([crops, pooled], image,
                                  [torch.ones_like(crops), torch.full_like(pooled, 0.25)])
    centres = torch.rand(60, 1, 2, generator=generator, dtype=dtype).expand(60, 50, 2)
    corners = centres + torch.randn(60, 50, 2, generator=generator, dtype=dtype) * 0.02
    nms_boxes = torch.cat([corners, corners + 0.1], dim=2).reshape(-1, 4)
    kept = mrcnn.ops.nms(nms_boxes, torch.rand(3000, generator=generator, dtype=dtype), 0.5)
    return [crops.detach(), pooled.detach(), grad, kept]


def run_child(tmp_path, isa):
    """Runs kernel_results in a child with MRCNN_CPU_ISA=isa; (process, saved file)."""
    path = tmp_path / f"{isa}.pt"
    script = ("import sys, torch\n"
              "from tests.test_cpu_kernels import kernel_results\n"
              "torch.save([kernel_results(t) for t in (torch.float32, torch.float64)],"
              " sys.argv[1])\n")
    environment = {**os.environ, "MRCNN_CPU_ISA": isa,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, env=environment,
                          capture_output=True, text=True)
    return done, path


def cpu_has(isa):
    if isa == "baseline":
        return True
    cpuinfo = Path("/proc/cpuinfo")
    flag = {"avx512": "avx512f", "avx2": "avx2"}[isa]
    return cpuinfo.exists() and flag in cpuinfo.read_text().split()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_instruction_set_variants_agree(tmp_path, isa):
    if not cpu_has(isa):
        pytest.skip(f"this CPU lacks {isa}")
    done, path = run_child(tmp_path, isa)
    assert done.returncode == 0, done.stderr
    for dtype, results in zip((torch.float32, torch.float64), torch.load(path)):
        *pooling, kept = results
        expected = kernel_results(dtype)
        for result, value in zip(pooling, expected):
            assert result.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(result, value) and result.abs().sum() > 0
        assert torch.equal(kept, expected[-1]) and 60 <= len(kept) < 3000


def test_unknown_instruction_set_is_refused(tmp_path):
    done, _ = run_child(tmp_path, "avx9")
    assert done.returncode != 0
    assert "MRCNN_CPU_ISA must be avx512, avx2 or baseline, got 'avx9'" in done.stderr
