"""Runs every compiled op (nms, crop_and_resize, roi_align; forward and backward) once per dtype on
odd sizes, and every bad-argument case of tests/test_op_arguments.py, on one device.

Meant to run under compute-sanitizer (tools/gpu_check.sh): it touches every kernel and every
argument-check path with small inputs, checks what can be checked cheaply (shapes, finite
values, NMS equal on CUDA and on the CPU), and exits 1 on the first failure.

    python tools/ops_smoke.py --device cuda
    compute-sanitizer --tool memcheck python tools/ops_smoke.py --device cuda
    compute-sanitizer --tool racecheck python tools/ops_smoke.py --device cuda --only nms
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrcnn  # noqa: E402,F401  first: it sets OpenMP's thread settings before torch loads
import torch  # noqa: E402

from mrcnn.ops import batched_nms, crop_and_resize, nms, roi_align  # noqa: E402

BOX_COUNTS = (0, 1, 63, 64, 65, 6000)


def dtypes(device):
    half = (torch.float16, torch.bfloat16) if device.type == "cuda" else ()
    return (torch.float32, torch.float64) + half


def random_boxes(count, generator, device, dtype):
    """[count, 4] (y1, x1, y2, x2) in [0, 1], clustered so that NMS suppresses some."""
    centres = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    sizes = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 0.2 + 0.01
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).clamp(0, 1)
    return boxes.to(device=device, dtype=dtype)


def check_nms(device, generator):
    for dtype in dtypes(device):
        for count in BOX_COUNTS:
            boxes = random_boxes(count, generator, device, dtype)
            scores = torch.rand(count, generator=generator).to(device=device, dtype=dtype)
            groups = torch.randint(0, 3, (count,), generator=generator).to(device)
            kept = nms(boxes, scores, 0.5)
            grouped = batched_nms(boxes, scores, groups, 0.5, max_output_size=10)
            assert kept.dtype == torch.int64 and kept.device == boxes.device
            assert len(grouped) <= 30 and len(kept) <= count
            if device.type == "cuda" and dtype in (torch.float32, torch.float64):
                assert torch.equal(kept.cpu(), nms(boxes.cpu(), scores.cpu(), 0.5)), (dtype, count)
                assert torch.equal(grouped.cpu(), batched_nms(boxes.cpu(), scores.cpu(),
                                                              groups.cpu(), 0.5, 10))


def check_pooling(device, generator):
    for dtype in dtypes(device):
        for count in BOX_COUNTS[:5]:
            image = torch.randn(2, 5, 13, 17, generator=generator).to(device=device, dtype=dtype)
            image.requires_grad_()
            boxes = random_boxes(count, generator, device, torch.float32)
            box_ind = torch.randint(0, 2, (count,), generator=generator).to(device)
            for crop_size in ((7, 7), (1, 3)):
                crops = crop_and_resize(image, boxes, box_ind, crop_size)
                assert crops.shape == (count, 5) + crop_size and crops.dtype == dtype
                grad, = torch.autograd.grad(crops.float().sum(), image, allow_unused=True)
                assert grad is None or (grad.shape == image.shape and grad.isfinite().all())
            rois = torch.cat([box_ind[:, None].float(), boxes[:, [1, 0, 3, 2]] * 16], dim=1)
            pooled = roi_align(image, rois.to(device), (4, 5), spatial_scale=0.5,
                               sampling_ratio=-1, aligned=True)
            assert pooled.shape == (count, 5, 4, 5) and pooled.dtype == dtype
            grad, = torch.autograd.grad(pooled.float().sum(), image, allow_unused=True)
            assert grad is None or grad.isfinite().all()


def check_bad_arguments(device, only):
    """Every bad-argument case: each must raise an exception, none may touch memory."""
    from tests.test_op_arguments import CASES, NEEDS_OTHER_DEVICE, case_namespace

    namespace = case_namespace(str(device))
    for name, (expression, error, _) in CASES.items():
        if (device.type == "cpu" and name in NEEDS_OTHER_DEVICE) or not name.startswith(only):
            continue
        try:
            eval(expression, dict(namespace))
        except error:
            continue
        if device.type != "cuda" or "half" not in name:
            raise AssertionError(f"{name}: {expression} raised no {error.__name__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=("nms", "pooling"),
                        help="run only the NMS cases or only crop_and_resize and roi_align")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    if args.only != "pooling":
        check_nms(device, generator)
        check_bad_arguments(device, "nms")
        check_bad_arguments(device, "batched_nms")
    if args.only != "nms":
        check_pooling(device, generator)
        check_bad_arguments(device, "crop")
        check_bad_arguments(device, "roi_align")
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"ops smoke test passed on {device}")


if __name__ == "__main__":
    main()
