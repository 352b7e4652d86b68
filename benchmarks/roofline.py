"""Where detect()'s time goes on the CPU, against what the machine can do: per stage, the
multiply-adds it computes, its time and its rate, beside the rate of one large convolution.

    python benchmarks/roofline.py                         # R101 and R50 at 512 and 1024
    python benchmarks/roofline.py --backbones resnet101 --sizes 512

Multiply-adds are counted with torch.utils.flop_counter on the plain PyTorch path of the same
call (autograd on, so that conv2d does not fuse), per top-level module; the times are those of
detect()'s own stages (the fused float32 path), median of --repeat calls after one warm-up. The
reference rate is mrcnn.layers.conv2d on a 3x3, 256-to-256-channel convolution of a 128x128
channels-last map, the network's commonest layer; a stage near it is bound by arithmetic, and only
fewer multiply-adds make it faster. Matterport's graph computes the same multiply-adds minus the
MaskIoU head, and its mask head always runs on DETECTION_MAX_INSTANCES rows with every class's
last layer: the table gives that count too. Same image and synthetic weights as inference.py.
"""
import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrcnn  # noqa: E402,F401  (before torch: mrcnn's thread settings)
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import add_record_options, publish  # noqa: E402
from benchmarks.inference import load_model, synthetic_weights, test_image_file  # noqa: E402
from mrcnn.layers import conv2d  # noqa: E402
from mrcnn.molding import mold_inputs  # noqa: E402

# detect()'s timed stages and the model's modules whose work each one runs.
# (flop_counter names the modules infer() calls by their class.)
STAGES = {"backbone+fpn": ("ResNet", "FPN"), "rpn+proposals": ("RPN",),
          "box head": ("BoxHead",), "mask+maskiou heads": ("MaskHead", "MaskIoUHead")}


def stage_macs(model, images):
    """Multiply-adds (billions) per stage of one detect() call, and the MaskIoU head's."""
    molded, metas, _ = mold_inputs(images, model.config)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        outputs = model.infer(molded, metas)
    per_module = {name: sum(counts.values())
                  for name, counts in counter.get_flop_counts().items() if "." not in name}
    macs = {stage: sum(per_module.get(m, 0) for m in modules) / 2e9
            for stage, modules in STAGES.items()}
    rows = len(outputs["mask_rows"])
    return macs, per_module.get("MaskIoUHead", 0) / 2e9, rows


def matterport_mask_head_macs(model, rows):
    """Multiply-adds (billions) of Matterport's mask head on DETECTION_MAX_INSTANCES rows with
    every class's last layer, 14x14 pooled maps of 256 channels."""
    config = model.config
    per_row = 4 * 14 * 14 * 256 * 256 * 9 + 14 * 14 * 256 * 256 * 4 \
        + 28 * 28 * 256 * config.NUM_CLASSES
    return config.DETECTION_MAX_INSTANCES * per_row / 1e9


def stage_times(model, images, repeat):
    """Median seconds per stage of detect() (the fused path), and of the whole call ("total")."""
    times = defaultdict(list)

    @contextmanager
    def timer(name):
        start = time.perf_counter()
        yield
        times[name].append(time.perf_counter() - start)

    with torch.inference_mode():
        for _ in range(repeat + 1):
            with timer("total"):
                model.run_batch(images, timer=timer)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def reference_rate(repeat):
    """Multiply-adds per second (billions) of conv2d on a 3x3 256->256 conv, 128x128 map."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.randn(1, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    seconds = []
    with torch.inference_mode():
        for _ in range(repeat + 1):
            start = time.perf_counter()
            conv2d(x, conv, relu=True)
            seconds.append(time.perf_counter() - start)
    return 128 * 128 * 256 * 256 * 9 / 1e9 / statistics.median(seconds[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet101", "resnet50"],
                        choices=["resnet50", "resnet101"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--repeat", type=int, default=3, help="timed calls after one warm-up")
    add_record_options(parser)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    load_before = os.getloadavg()[0]
    peak = reference_rate(args.repeat)
    header = ["backbone", "size", "detections", "stage", "GMAC", "ms", "GMAC/s",
              "share of the reference rate"]
    rows, notes = [], []
    for backbone in args.backbones:
        for size in args.sizes:
            model, images = load_model(backbone, size, "cpu", synthetic_weights(backbone),
                                       test_image_file(size), 1)
            times = stage_times(model, images, args.repeat)
            macs, maskiou_macs, detections = stage_macs(model, images)
            for stage, gmac in macs.items():
                ms = times[stage] * 1000
                rows.append([backbone, size, detections, stage, f"{gmac:.1f}", f"{ms:.0f}",
                             f"{gmac / times[stage]:.0f}",
                             f"{gmac / times[stage] / peak:.0%}"])
            total_macs = sum(macs.values())
            rows.append([backbone, size, detections, "whole call", f"{total_macs:.1f}",
                         f"{times['total'] * 1000:.0f}",
                         f"{total_macs / times['total']:.0f}",
                         f"{total_macs / times['total'] / peak:.0%}"])
            ours_mask = macs["mask+maskiou heads"] - maskiou_macs
            matterport = total_macs - macs["mask+maskiou heads"] \
                + matterport_mask_head_macs(model, detections)
            notes.append(f"{backbone} {size}: the MaskIoU head computes {maskiou_macs:.1f} of "
                         f"the {total_macs:.1f} GMAC ({maskiou_macs / total_macs:.0%}); "
                         f"the mask head {ours_mask:.1f}. Matterport's graph computes about "
                         f"{matterport:.1f} GMAC (no MaskIoU head, its mask head on "
                         f"{model.config.DETECTION_MAX_INSTANCES} rows with every class).")
            del model
    notes = [f"Reference rate: conv2d on a 3x3 256->256 convolution of a 128x128 channels-last "
             f"map, {peak:.0f} GMAC/s (median of {args.repeat} after one warm-up), torch "
             f"{torch.get_num_threads()} threads."] + notes + [
        f"GMAC: billions of multiply-adds (torch.utils.flop_counter on the plain path of the same "
        f"call); ms: median of {args.repeat} detect() calls after one warm-up, by stage; the "
        f"whole call also molds, runs the detection layer and unmolds."]
    publish("detect() against the machine's convolution rate (CPU)", "cpu", header, rows, notes,
            load_before, args)


if __name__ == "__main__":
    main()
