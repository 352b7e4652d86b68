"""Time per image of the exported detector against eager detect(): ONNX through onnxruntime and
the AOTInductor .pt2 package, both run end to end by mrcnn.export.ExportedModel (molding and
unmolding included, as in detect()).

The model (by default the deterministic synthetic weights, 81 classes, as benchmarks/inference.py
uses them) is exported to both formats (the export times are reported too), then the runtimes
stay loaded in this process and their timed runs alternate, the order rotating every round, so
all see the same load on a shared machine. onnxruntime's threads are told not to spin while
idle, so that they leave the cores to the next runtime's turn.

The exported graph runs the mask and MaskIoU heads on all DETECTION_MAX_INSTANCES rows, padding
included, as Matterport's graph does; detect() runs them on the detected rows only. So the eager
model is also timed doing the exported graph's work (run_batch with mask_all_rows), the peer
that tells the runtimes apart.

    python benchmarks/export.py                          # R50 at 256 px on the CPU
    python benchmarks/export.py --backbone resnet101 --size 512 --repeat 10
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_record_options, publish  # noqa: E402
from benchmarks.inference import agreement, synthetic_weights, test_image_file  # noqa: E402


def summary(result):
    """The fields benchmarks.inference.agreement compares."""
    return {"detections": len(result["class_ids"]), "rois": result["rois"].tolist(),
            "class_ids": result["class_ids"].tolist()}


def export_all(model, folder, batch_size):
    """{format: (ExportedModel, export seconds, load seconds, MiB)} for onnx and pt2."""
    import onnxruntime

    from mrcnn.export import FORMATS, ExportedModel, export_model

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    exported = {}
    for format in FORMATS:
        path = Path(folder) / f"model.{format}"
        start = time.perf_counter()
        export_model(model, path, batch_size=batch_size,
                     log=lambda line: tqdm.write(f"{format}: {line}"))
        export_seconds = time.perf_counter() - start
        start = time.perf_counter()
        runtime = ExportedModel(path, session_options=options)
        exported[format] = (runtime, export_seconds, time.perf_counter() - start,
                            path.stat().st_size / 2**20)
    return exported


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--size", type=int, default=256, help="molded image size (square mode)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed rounds (one run of each runtime) after one warm-up")
    parser.add_argument("--weights", help="a Matterport .h5 or .pth with 81 classes (default: "
                        "the synthetic reference weights)")
    add_record_options(parser)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    import onnxruntime
    import torch

    from mrcnn.cli import load_model
    from mrcnn.config import CocoConfig
    from preprocess.images import load_image

    load_before = os.getloadavg()[0]
    config = CocoConfig(BACKBONE=args.backbone, IMAGES_PER_GPU=1, IMAGE_MIN_DIM=args.size,
                        IMAGE_MAX_DIM=args.size)
    model = load_model(config, args.weights or synthetic_weights(args.backbone), "cpu",
                       progress=False)
    image = load_image(test_image_file(args.size))
    with tempfile.TemporaryDirectory(prefix="mrcnn-export-bench-") as folder:
        exported = export_all(model, folder, batch_size=1)
        runtimes = {"eager detect()": model.detect,
                    "eager, masks of all rows": lambda images: model.run_batch(
                        images, mask_all_rows=True).results}
        runtimes.update({f"{name} ExportedModel.detect()": runtime.detect
                         for name, (runtime, *_) in exported.items()})
        names = list(runtimes)
        expected = summary(model.detect([image])[0])
        checks = {name: agreement(summary(detect([image])[0]), expected)  # also the warm-up
                  for name, detect in runtimes.items()}
        times = {name: [] for name in names}
        for round_index in tqdm(range(args.repeat), desc="rounds", unit="round"):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                with torch.inference_mode():
                    runtimes[name]([image])
                times[name].append(time.perf_counter() - start)

    def speedup(name, peer):
        return f"{statistics.median(p / t for p, t in zip(times[peer], times[name])):.2f}x"

    rows = []
    for name in names:
        _, export_seconds, load_seconds, mib = exported.get(name.split()[0], (None, 0, 0, 0))
        rows.append([name, f"{statistics.median(times[name]) * 1000:.0f}",
                     f"{min(times[name]) * 1000:.0f}", speedup(name, names[0]),
                     speedup(name, names[1]), f"{export_seconds:.0f}" if export_seconds else "-",
                     f"{load_seconds:.1f}" if load_seconds else "-",
                     f"{mib:.0f}" if mib else "-", checks[name]])
    header = ["runtime", "median ms", "fastest ms", "speed-up vs eager detect()",
              "speed-up vs eager, all rows", "export s", "load s", "file MiB",
              "detections vs eager detect()"]
    notes = [
        f"{args.backbone}, {args.size}x{args.size} molded image (the reference astronaut "
        f"photo), {config.NUM_CLASSES} classes, batch 1, {args.repeat} rounds after one "
        f"warm-up; each round runs every runtime once, the order rotating. speed-up = the "
        f"median over rounds of the peer's time / this runtime's time (above 1: faster). All "
        f"include molding and unmolding (the same Python helpers). The exported graphs run the "
        f"mask and MaskIoU heads on all {config.DETECTION_MAX_INSTANCES} rows, as Matterport's "
        f"graph does, detect() on the {len(expected['class_ids'])} detected ones; 'eager, masks "
        f"of all rows' is the eager model doing the exported graph's work.",
        f"CPU only: torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, default thread count, "
        f"no spinning). GPU: not measured (no GPU on this machine; the .pt2 would be compiled "
        f"with --device cuda and onnxruntime would need its CUDA provider).",
    ]
    publish("Exported models (ONNX, .pt2) against eager detect()", "cpu", header, rows, notes,
            load_before, args)


if __name__ == "__main__":
    main()
