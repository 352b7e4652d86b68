"""Does the MaskIoU head earn its place? Trains on synthetic shapes, then ranks the masks both ways.

    python benchmarks/train_shapes.py            # the GPU preset (needs CUDA); appends to RESULTS.md
    CUDA_VISIBLE_DEVICES=1 python benchmarks/train_shapes.py     # on another GPU
    python benchmarks/train_shapes.py --smoke    # every step, tiny, on the CPU: checks the plumbing

Accuracy. preprocess.synthetic writes the shapes dataset (seed 0); train.py trains the detector on
it from scratch (--weights none: no download) with AMP; eval.py scores the last checkpoint on the
validation split twice, at Matterport's COCO threshold (--min-confidence 0): masks ranked by the
class score (--mask-score cls, plain Mask R-CNN) and by the mask score, class score x the MaskIoU
head's predicted IoU (--mask-score maskiou, Mask Scoring R-CNN). The goals: box AP >= 50 (the
detector is trained well enough for the comparison to mean something) and a mask score ranking at
least 1.0 mask AP above the class score ranking (the official code's gain on COCO minival is 1.3 to 1.4).

Throughput. Short train.py runs at 512 and 1024 px with AMP: images per second of training, the
median step wall time (data loading included) after the warm-up steps.

train.py and eval.py run as subprocesses with the options of their --help, so this script depends
on their command lines and on two files train.py documents (metrics.csv with a `seconds` column,
and epoch_NNNN.pth), not on their code. AP is in points (COCO AP x 100).
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table, record  # noqa: E402
from preprocess.synthetic import write_dataset  # noqa: E402

BOX_AP_GOAL = 50.0
MASK_SCORE_GAIN_GOAL = 1.0
THROUGHPUT_LR = 0.001  # Matterport's LEARNING_RATE

# A model small enough for CPU steps of a second or so.
TINY_MODEL = {"BACKBONE": "resnet50", "MINI_MASK_SHAPE": [28, 28], "TOP_DOWN_PYRAMID_SIZE": 32,
              "FPN_CLASSIF_FC_LAYERS_SIZE": 64, "TRAIN_ROIS_PER_IMAGE": 16,
              "POST_NMS_ROIS_TRAINING": 128, "PRE_NMS_LIMIT": 512,
              "RPN_TRAIN_ANCHORS_PER_IMAGE": 64}

# The GPU preset's model is ResNet-50 FPN from scratch, so its BatchNorms learn (TRAIN_BN) with 16
# images per batch; anchors fit the shapes, 6% to 22% of the 256 px side. Its throughput runs use
# train.py's defaults (Matterport's Config: ResNet-101, 200 RoIs per image) at each size.
PRESETS = {
    "gpu": {
        "device": "cuda", "amp": True, "workers": min(8, os.cpu_count() or 1), "threads": None,
        "size": 256, "train_images": 2000, "val_images": 200,
        "epochs": 3, "steps_per_epoch": 500, "lr": 0.02, "warmup_steps": 200, "lr_drop": [2],
        "config": {"BACKBONE": "resnet50", "IMAGES_PER_GPU": 16, "TRAIN_BN": True,
                   "RPN_ANCHOR_SCALES": [16, 32, 64, 128, 256], "TRAIN_ROIS_PER_IMAGE": 128,
                   "POST_NMS_ROIS_TRAINING": 1000, "POST_NMS_ROIS_INFERENCE": 500,
                   "DETECTION_MAX_INSTANCES": 20},
        "throughput": {"sizes": {512: 8, 1024: 4}, "images": 64, "steps": 60, "warmup": 20,
                       "config": {}},
    },
    "smoke": {
        # One thread per process: on shared cores the threads of an operation wait on each other.
        "device": "cpu", "amp": False, "workers": 0, "threads": 1,
        "size": 64, "train_images": 2, "val_images": 2,
        "epochs": 1, "steps_per_epoch": 2, "lr": 0.01, "warmup_steps": 0, "lr_drop": [],
        "config": dict(TINY_MODEL, IMAGES_PER_GPU=1, POST_NMS_ROIS_INFERENCE=64,
                       DETECTION_MAX_INSTANCES=10),
        "throughput": {"sizes": {64: 1, 128: 1}, "images": 2, "steps": 2, "warmup": 1,
                       "config": TINY_MODEL},
    },
}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny CPU preset: every step of the benchmark in a minute or two; "
                             "its numbers mean nothing and are never recorded")
    parser.add_argument("--epochs", type=positive, metavar="E",
                        help="training epochs (default: the preset's; the learning rate drops "
                             "after the preset's epochs that come before E)")
    parser.add_argument("--steps-per-epoch", type=positive, metavar="N",
                        help="optimisation steps per epoch (default: the preset's)")
    parser.add_argument("--workers", type=natural, metavar="W",
                        help="train.py's data-loading workers (default: the preset's; 0 loads "
                             "in the training process)")
    parser.add_argument("--skip-throughput", action="store_true",
                        help="train and evaluate only, without the 512/1024 px throughput runs")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="folder of the synthetic datasets, written once and reused (default: "
                             "mrcnn_train_shapes under the system temporary directory)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder of the training runs and evaluations (default: a fresh "
                             "temporary directory)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars from train.py and eval.py")
    parser.add_argument("--no-record", action="store_true",
                        help="print only; do not append to benchmarks/RESULTS.md")
    return parser


def integer_from(low):
    """An argparse type: an integer >= low."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


positive, natural = integer_from(1), integer_from(0)


def run_script(script, arguments, threads=None):
    """Runs ROOT/script with this Python (with `threads` OpenMP threads unless the environment
    sets OMP_NUM_THREADS); exits with an error naming the script when it fails."""
    command = [sys.executable, str(ROOT / script), *map(str, arguments)]
    environment = dict(os.environ)
    if threads:
        environment.setdefault("OMP_NUM_THREADS", str(threads))
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=ROOT, env=environment)
    if completed.returncode != 0:
        sys.exit(f"error: {script} failed with exit status {completed.returncode} (its output is "
                 "above)")


def shapes_dataset(folder, size, train_images, val_images):
    """The synthetic shapes of these dimensions (seed 0) under `folder`, written once."""
    path = folder / f"shapes_{size}px_{train_images}_{val_images}"
    if not (path / "annotations" / "instances_val.json").exists():
        try:
            write_dataset(path, train_images, val_images, seed=0, size=size, overwrite=True)
        except OSError as error:
            sys.exit(f"error: cannot write the shapes dataset to {path}: {error}")
    return path


def train(run_dir, dataset, config, preset, epochs, steps_per_epoch, quiet):
    """Trains from scratch with train.py -> (the last checkpoint, the step seconds, wall time)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.with_suffix(".json")
    config_path.write_text(json.dumps(config))
    arguments = ["--dataset", dataset, "--train-split", "train", "--val-split", "none",
                 "--config", config_path, "--weights", "none", "--layers", "all",
                 "--epochs", epochs, "--steps-per-epoch", steps_per_epoch, "--lr", preset["lr"],
                 "--warmup-steps", preset["warmup_steps"], "--workers", preset["workers"],
                 "--device", preset["device"], "--seed", 0, "--keep-last", 1, "--out", run_dir]
    if preset["lr_drop"]:
        arguments += ["--lr-drop", *preset["lr_drop"]]
    if preset["amp"]:
        arguments.append("--amp")
    if quiet:
        arguments.append("--quiet")
    start = time.perf_counter()
    run_script("train.py", arguments, preset["threads"])
    seconds = time.perf_counter() - start
    checkpoint = run_dir / f"epoch_{epochs:04d}.pth"
    if not checkpoint.exists():
        sys.exit(f"error: train.py finished without writing {checkpoint}")
    with open(run_dir / "metrics.csv", newline="") as f:
        steps = [float(row["seconds"]) for row in csv.DictReader(f)]
    return checkpoint, steps, seconds


def evaluate(checkpoint, dataset, out_dir, preset, mask_score, quiet):
    """eval.py's summary.json for the validation split, masks ranked by `mask_score`."""
    arguments = ["--dataset", dataset, "--split", "val", "--weights", checkpoint,
                 "--min-confidence", 0, "--mask-score", mask_score, "--device", preset["device"],
                 "--out", out_dir]
    if quiet:
        arguments.append("--quiet")
    run_script("eval.py", arguments, preset["threads"])
    return json.loads((out_dir / "summary.json").read_text())


def median_after(step_seconds, warmup):
    """Median step time after `warmup` steps (all of them when there are no more)."""
    return statistics.median(step_seconds[warmup:] or step_seconds)


def accuracy(preset, args, data, out):
    """Trains and evaluates -> dict of the accuracy numbers (AP in points) and wall times."""
    start = time.perf_counter()
    dataset = shapes_dataset(data, preset["size"], preset["train_images"], preset["val_images"])
    dataset_seconds = time.perf_counter() - start
    config = dict(preset["config"], IMAGE_MIN_DIM=preset["size"], IMAGE_MAX_DIM=preset["size"])
    epochs, steps_per_epoch = preset["epochs"], preset["steps_per_epoch"]
    checkpoint, _, train_seconds = train(out / "accuracy", dataset, config, preset, epochs,
                                         steps_per_epoch, args.quiet)
    start = time.perf_counter()
    summaries = {score: evaluate(checkpoint, dataset, out / f"eval_{score}", preset, score,
                                 args.quiet)
                 for score in ("cls", "maskiou")}
    result = {"steps": epochs * steps_per_epoch, "dataset_seconds": dataset_seconds,
              "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start,
              "images": summaries["cls"]["image_count"]}
    result["box"], result["box50"] = (100 * summaries["cls"]["bbox"][k] for k in ("AP", "AP50"))
    for score, summary in summaries.items():
        result[f"mask_{score}"] = 100 * summary["segm"]["AP"]
        result[f"mask50_{score}"] = 100 * summary["segm"]["AP50"]
    result["gain"] = result["mask_maskiou"] - result["mask_cls"]
    return result


def throughput(preset, args, data, out):
    """Short training runs at each size -> [(size, images per step, s/step, images/s)]."""
    settings = preset["throughput"]
    rows = []
    for size, batch in settings["sizes"].items():
        dataset = shapes_dataset(data, size, settings["images"], 1)
        config = dict(settings["config"], IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size,
                      IMAGES_PER_GPU=batch)
        # Only the step times count: a small learning rate keeps the losses from scratch finite
        # (train.py stops at a non-finite one).
        timing = dict(preset, lr=THROUGHPUT_LR, warmup_steps=0, lr_drop=[])
        _, steps, _ = train(out / f"throughput_{size}", dataset, config, timing, 1,
                            settings["steps"], args.quiet)
        seconds = median_after(steps, settings["warmup"])
        rows.append((size, batch, seconds, batch / seconds))
    return rows


def report(preset_name, preset, result, speeds, loads):
    """The tables and notes of a run -> (tables, notes)."""
    goals_met = result["box"] >= BOX_AP_GOAL and result["gain"] >= MASK_SCORE_GAIN_GOAL
    tables = [markdown_table(
        ["preset", "image", "images/step", "steps", "training wall s", "box AP (AP50)",
         "mask AP, class score (AP50)", "mask AP, mask score (AP50)", "mask score gain",
         "goals met"],
        [[preset_name, f"{preset['size']} px", preset["config"]["IMAGES_PER_GPU"],
          result["steps"], f"{result['train_seconds']:.0f}",
          f"{result['box']:.1f} ({result['box50']:.1f})",
          f"{result['mask_cls']:.1f} ({result['mask50_cls']:.1f})",
          f"{result['mask_maskiou']:.1f} ({result['mask50_maskiou']:.1f})",
          f"{result['gain']:+.1f}", "yes" if goals_met else "no"]])]
    if speeds:
        backbone = preset["throughput"]["config"].get("BACKBONE", "resnet101 (default)")
        tables.append(markdown_table(
            ["image", "backbone", "images/step", "AMP", "s/step", "images/s"],
            [[f"{size} px", backbone, batch, "yes" if preset["amp"] else "no",
              f"{seconds:.3f}", f"{rate:.1f}"] for size, batch, seconds, rate in speeds]))
    drops = "".join(f", divided by 10 after epoch {epoch}" for epoch in preset["lr_drop"])
    notes = [
        f"Synthetic shapes (preprocess.synthetic, seed 0, {preset['size']} px): "
        f"{preset['train_images']} training images; AP (COCO AP x 100) on the "
        f"{result['images']} validation images, detections kept from class score 0. Trained "
        f"from scratch by train.py: lr {preset['lr']} after a {preset['warmup_steps']}-step "
        f"warm-up{drops}, {'AMP' if preset['amp'] else 'float32'}, {preset['workers']} "
        f"data-loading workers. Config: {json.dumps(preset['config'])}.",
        f"Goals: box AP >= {BOX_AP_GOAL:.0f}, mask score gain (mask AP ranked by the mask score "
        f"minus ranked by the class score) >= +{MASK_SCORE_GAIN_GOAL:.1f}.",
        f"Wall time (process start-up included): dataset {result['dataset_seconds']:.0f} s, "
        f"training {result['train_seconds']:.0f} s, the two evaluations "
        f"{result['eval_seconds']:.0f} s, throughput runs {result['throughput_seconds']:.0f} s.",
        f"1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end."]
    if speeds:
        settings = preset["throughput"]
        notes.append("Throughput: train.py from scratch on the shapes at each size, s/step = "
                     "median step wall time (data loading included) after "
                     f"{settings['warmup']} warm-up steps of {settings['steps']} at lr "
                     f"{THROUGHPUT_LR}; config: "
                     f"{json.dumps(settings['config']) if settings['config'] else 'defaults'}.")
    return tables, notes


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    preset_name = "smoke" if args.smoke else "gpu"
    preset = dict(PRESETS[preset_name])
    for option in ("workers", "epochs", "steps_per_epoch"):
        if getattr(args, option) is not None:
            preset[option] = getattr(args, option)
    preset["lr_drop"] = [epoch for epoch in preset["lr_drop"] if epoch < preset["epochs"]]
    if not args.smoke:
        import torch
        if not torch.cuda.is_available():
            parser.error("the preset trains for minutes on a CUDA GPU, and none is available; "
                         "--smoke runs every step tiny on the CPU")
    data = args.data or Path(tempfile.gettempdir()) / "mrcnn_train_shapes"
    out = args.out or Path(tempfile.mkdtemp(prefix="train_shapes_"))
    load_start = os.getloadavg()[0]
    result = accuracy(preset, args, data, out)
    start = time.perf_counter()
    speeds = [] if args.skip_throughput else throughput(preset, args, data, out)
    result["throughput_seconds"] = time.perf_counter() - start
    tables, notes = report(preset_name, preset, result, speeds,
                           (load_start, os.getloadavg()[0]))
    if args.smoke or args.no_record:
        print("\n" + "\n\n".join(tables + ["\n".join(notes)]))
    else:
        record("train_shapes.py: the MaskIoU head's worth, and training throughput", "cuda",
               "\n\n".join(tables), notes)
    return result, speeds


if __name__ == "__main__":
    main()
