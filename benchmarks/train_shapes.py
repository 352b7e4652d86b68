"""Trains on the synthetic shapes for a fixed budget; reports seconds per iteration and COCO AP.

The dataset is preprocess.synthetic's random shapes (fixed seed). Training runs train.py from
scratch (--weights none: the benchmark needs no download) for a fixed number of steps, then the
last checkpoint is evaluated on the validation split with postprocess.coco_eval (eval.py's code)
at DETECTION_MIN_CONFIDENCE 0, as COCO evaluations run: box AP, and mask AP with the masks ranked
by the class score (plain Mask R-CNN) and by the mask score (class score x predicted mask IoU,
Mask Scoring R-CNN).

    python benchmarks/train_shapes.py                    # the CPU preset: 128 px, short budget
    python benchmarks/train_shapes.py --device cuda      # the GPU preset: 512 px, AMP
    python benchmarks/train_shapes.py --steps 200 --no-record
"""
import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import train  # noqa: E402
from benchmarks.common import markdown_table, record  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.detector import MaskScoringRCNN  # noqa: E402
from postprocess import coco_eval  # noqa: E402
from preprocess.coco import CocoDataset, coco_layout  # noqa: E402
from preprocess.synthetic import write_dataset  # noqa: E402

# Shapes are 6% to 22% of the image side: anchors an eighth of Matterport's COCO ones fit them
# at 128 px (Matterport's own shapes sample does the same), a quarter at 512 px.
PRESETS = {
    "cpu": {"size": 128, "train_images": 500, "val_images": 50, "steps": 600, "lr": 0.01,
            "config": {"BACKBONE": "resnet50", "IMAGES_PER_GPU": 2,
                       "RPN_ANCHOR_SCALES": [8, 16, 32, 64, 128], "TOP_DOWN_PYRAMID_SIZE": 128,
                       "FPN_CLASSIF_FC_LAYERS_SIZE": 256, "TRAIN_ROIS_PER_IMAGE": 32,
                       "POST_NMS_ROIS_TRAINING": 500, "POST_NMS_ROIS_INFERENCE": 250,
                       "PRE_NMS_LIMIT": 2000, "RPN_TRAIN_ANCHORS_PER_IMAGE": 128,
                       "MINI_MASK_SHAPE": [28, 28], "DETECTION_MAX_INSTANCES": 20}},
    "gpu": {"size": 512, "train_images": 5000, "val_images": 500, "steps": 5000, "lr": 0.02,
            "config": {"BACKBONE": "resnet50", "IMAGES_PER_GPU": 8,
                       "RPN_ANCHOR_SCALES": [16, 32, 64, 128, 256],
                       "TRAIN_ROIS_PER_IMAGE": 128, "DETECTION_MAX_INSTANCES": 20}},
}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="budget and model size (default: gpu on cuda, else cpu)")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the preset's)")
    parser.add_argument("--layers", default="all", help="layers to train (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers")
    parser.add_argument("--data", type=Path,
                        help="where the synthetic dataset is (re)used (default: a cache "
                             "directory per preset under the system temporary directory)")
    parser.add_argument("--out", type=Path,
                        help="run directory (default: a fresh temporary directory)")
    parser.add_argument("--no-record", action="store_true",
                        help="print only; do not append to benchmarks/RESULTS.md")
    return parser


def dataset_dir(path, preset_name, preset):
    """The shapes dataset of the preset, written once (fixed seed 0)."""
    path = path or Path(tempfile.gettempdir()) / f"mrcnn_shapes_{preset_name}_{preset['size']}"
    if not (path / "annotations" / "instances_val.json").exists():
        write_dataset(path, preset["train_images"], preset["val_images"], seed=0,
                      size=preset["size"], overwrite=True)
    return path


def seconds_per_iteration(run_dir, skip=10):
    """Median step time of metrics.csv, after `skip` warm-up steps."""
    with open(run_dir / train.METRICS_FILE, newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return statistics.median(seconds[skip:] or seconds)


def evaluate(checkpoint, data, device):
    """{"box": AP, "mask_cls": AP, "mask_maskiou": AP} (and AP50s) of a training checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = Config.from_dict(state["config"]).update(DETECTION_MIN_CONFIDENCE=0.0,
                                                       IMAGES_PER_GPU=1, GPU_COUNT=1)
    model = MaskScoringRCNN(config)
    model.load_state_dict(state["state_dict"])
    model.to(device)
    dataset = CocoDataset(*coco_layout(data, "val"))
    results = {}
    for mask_score in ("cls", "maskiou"):
        summary = coco_eval.evaluate(model, dataset, batch_size=4, mask_score=mask_score,
                                     print_tables=False)
        results["box"], results["box50"] = summary["bbox"]["AP"], summary["bbox"]["AP50"]
        results[f"mask_{mask_score}"] = summary["segm"]["AP"]
        results[f"mask50_{mask_score}"] = summary["segm"]["AP50"]
        results["images"] = summary["image_count"]
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    preset_name = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    steps = args.steps or preset["steps"]
    data = dataset_dir(args.data, preset_name, preset)
    out = args.out or Path(tempfile.mkdtemp(prefix="train_shapes_"))
    config_path = out / "benchmark_config.json"
    out.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(dict(preset["config"], IMAGE_MIN_DIM=preset["size"],
                                           IMAGE_MAX_DIM=preset["size"])))
    command = ["--dataset", str(data), "--train-split", "train", "--val-split", "none",
               "--config", str(config_path), "--weights", "none", "--layers", args.layers,
               "--epochs", "1", "--steps-per-epoch", str(steps), "--lr", str(preset["lr"]),
               "--warmup-steps", str(min(500, steps // 10)),
               "--workers", str(args.workers), "--device", args.device, "--seed", "0",
               "--out", str(out / "run")]
    if device.type == "cuda":
        command.append("--amp")
        torch.cuda.reset_peak_memory_stats(device)
    if train.main(command) != 0:
        sys.exit("error: training failed (see above)")
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" \
        if device.type == "cuda" else "-"
    seconds = seconds_per_iteration(out / "run")
    results = evaluate(out / "run" / "epoch_0001.pth", data, device)

    config = preset["config"]
    header = ["preset", "image", "images/step", "steps", "layers", "s/iter", "peak GPU memory",
              "box AP (AP50)", "mask AP, class score (AP50)", "mask AP, mask score (AP50)"]
    row = [preset_name, f"{preset['size']} px", config["IMAGES_PER_GPU"], steps, args.layers,
           f"{seconds:.3f}", peak, f"{results['box']:.3f} ({results['box50']:.3f})",
           f"{results['mask_cls']:.3f} ({results['mask50_cls']:.3f})",
           f"{results['mask_maskiou']:.3f} ({results['mask50_maskiou']:.3f})"]
    table = markdown_table(header, [row])
    notes = [f"Synthetic shapes (preprocess.synthetic, seed 0): {preset['train_images']} "
             f"training and {preset['val_images']} validation images; AP on the "
             f"{results['images']} validation images. Trained from scratch (no pretrained "
             f"weights), lr {preset['lr']} after a linear warm-up, "
             f"{'AMP, ' if device.type == 'cuda' else ''}seconds per iteration = median step "
             f"wall time (data loading included) after 10 steps. Config: {json.dumps(config)}."]
    if args.no_record:
        print(table)
        print(*notes, sep="\n")
    else:
        record("train.py on synthetic shapes", args.device, table, notes)


if __name__ == "__main__":
    main()
