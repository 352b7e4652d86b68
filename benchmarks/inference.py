"""Time per image of MaskScoringRCNN.detect(), with a breakdown by stage and the peak memory.

Each (backbone, size) runs in its own process so that its peak memory is its own. By default
the model carries deterministic synthetic weights (convert_weights.synthetic, 81 classes, seed
1), which give realistic detection counts; pass --weights for a real .h5/.pth. The image is the
reference astronaut photo resized to SIZE x SIZE, written once as a PNG that every run reads.

With --matterport and a TensorFlow interpreter (--tensorflow-python, or $MRCNN_TF_PYTHON), each
row also times Matterport's Keras/TensorFlow detect() on the same image and weights
(benchmarks/matterport_tf.py, in a process of that interpreter), gives the speed-up, and the
notes say whether both found the same detections (count, class, boxes within a pixel). Both
models stay loaded and their timed runs alternate, so that both see the same load on a shared
machine.

With --competing-jobs N, N more processes run our detect() on the same setting in a loop while
the timed runs of each setting go on, as other users' jobs would on a shared machine.

    python benchmarks/inference.py                       # R50 and R101 at 256/512/1024, CPU
    python benchmarks/inference.py --device cuda --repeat 20
    python benchmarks/inference.py --matterport ~/Mask_RCNN --tensorflow-python ~/tf/bin/python
    python benchmarks/inference.py --sizes 512 --competing-jobs 1    # the cores shared
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Read before mrcnn sets its default: the notes tell the user's setting from mrcnn's, and the
# Matterport peer runs in the user's environment.
USERS_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

import mrcnn  # noqa: E402,F401  first: it sets OpenMP's thread settings before torch loads
from benchmarks.common import Worker, add_record_options, publish, synchronize  # noqa: E402
from benchmarks.matterport_tf import REFERENCE_IMAGE, image_sha256, timed_runs  # noqa: E402
from convert_weights.synthetic import write_synthetic_weights  # noqa: E402
from mrcnn.atomic import atomic_write  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mrcnn" / "bench"
STAGES = ["molding", "backbone+fpn", "rpn+proposals", "box head", "detection",
          "mask+maskiou heads", "unmolding"]
PRECISIONS = ("exact", "tf32", "bf16")


def synthetic_weights(backbone):
    """Deterministic synthetic weights for `backbone` with 81 classes (seed 1), generated once."""
    path = CACHE / f"synthetic_{backbone}_nc81_seed1.h5"
    if not path.exists():
        write_synthetic_weights(f"mrcnn_{backbone}_nc81", 1, path, progress=True)
    return path


def test_image_file(size):
    """A PNG of the reference astronaut photo resized to size x size, written once.

    Both our run and Matterport's read this file, so they are fed the same pixels."""
    import cv2
    path = CACHE / f"astronaut_{size}.png"
    if not path.exists():
        image = cv2.imread(str(REFERENCE_IMAGE))
        if image is None:
            sys.exit(f"error: the reference image {REFERENCE_IMAGE} is missing or unreadable")
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        with atomic_write(path) as f:
            f.write(cv2.imencode(".png", resized)[1].tobytes())
    return path


def load_model(backbone, size, device, weights, image_path, batch):
    """The benchmark's model on `device` and its input: `batch` copies of the image."""
    from mrcnn.config import CocoConfig
    from mrcnn.detector import MaskScoringRCNN
    from preprocess.images import load_image

    config = CocoConfig(BACKBONE=backbone, IMAGES_PER_GPU=batch, IMAGE_MIN_DIM=size,
                        IMAGE_MAX_DIM=size)
    model = MaskScoringRCNN(config).load_weights(weights)
    model.to(device)
    return model, [load_image(image_path)] * batch


def compete(backbone, size, device, weights, image_path, batch):
    """Runs in a competing-load child: exact detect() of the setting's images in a loop, until
    it is killed or its parent goes away (its stdin closes). Says ready after the first call."""
    import torch

    def exit_with_parent():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    model, images = load_model(backbone, size, device, weights, image_path, batch)
    with torch.inference_mode():
        model.run_batch(images, precision="exact")
        print(json.dumps({"ready": True}), flush=True)
        while True:
            model.run_batch(images, precision="exact")


def measure(backbone, size, device, weights, image_path, precisions=("exact",), batch=1):
    """Runs in the child process: times detect() in each precision, one after the other in an
    order that swaps every time, once per request of the parent (see matterport_tf.timed_runs),
    then returns per precision the median seconds per stage and per image, the detections and
    their agreement with exact's, and the peak memory. Each call detects `batch` copies of the
    image in one batch."""
    import torch

    model, images = load_model(backbone, size, device, weights, image_path, batch)
    image = images[0]
    times = {precision: defaultdict(list) for precision in precisions}
    results = {}

    def detect(precision):
        @contextmanager
        def timer(name):
            synchronize(device)
            start = time.perf_counter()
            yield
            synchronize(device)
            times[precision][name].append(time.perf_counter() - start)

        with timer("total"):
            results[precision] = model.run_batch(images, timer=timer,
                                                  precision=precision).results[0]

    calls = []

    def detect_all():
        order = precisions if len(calls) % 2 == 0 else precisions[::-1]
        calls.append(order)
        for precision in order:
            detect(precision)
        return results[precisions[0]]

    with torch.inference_mode():
        _, totals, result = timed_runs(detect_all, serving=True, repeat=None)
    # Read before the agreement below, whose mask products are the benchmark's, not detect()'s.
    peak = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    summary = {}
    for precision in precisions:
        # The first call is the warm-up; per image: a call detects `batch` images.
        medians = {name: statistics.median(values[1:]) / batch
                   for name, values in times[precision].items()}
        summary[precision] = {
            "seconds": medians, "ms_runs": [t * 1000 / batch for t in
                                            times[precision]["total"][1:]],
            "detections": len(results[precision]["class_ids"]),
            "agreement": precision_agreement(results["exact"], results[precision])
            if "exact" in results else None}
    speedups = {precision: statistics.median(
        exact / fast for exact, fast in zip(times["exact"]["total"][1:],
                                            times[precision]["total"][1:]))
        for precision in precisions if "exact" in precisions}
    if torch.device(device).type == "cuda":
        peak["gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    first = summary[precisions[0]]
    return {"seconds": first["seconds"], "ms_runs": first["ms_runs"], "peak": peak,
            "detections": first["detections"], "precisions": summary,
            "speedup_vs_exact": speedups,
            "rois": result["rois"].tolist(), "class_ids": result["class_ids"].tolist(),
            "image_sha256": image_sha256(image), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def precision_agreement(exact, fast):
    """How close a fast mode's detections are to exact's: exact's detections matched one to one
    to fast ones of the same class, greedily by mask IoU (highest first, IoU >= 0.5), and the
    smallest mask IoU among the matched pairs (None when nothing matches)."""
    exact_masks = exact["masks"].reshape(-1, exact["masks"].shape[-1]).astype(np.float32)
    fast_masks = fast["masks"].reshape(-1, fast["masks"].shape[-1]).astype(np.float32)
    # Pixel counts: exact in float32 up to 2^24 pixels; the ratios in float64.
    inter = (exact_masks.T @ fast_masks).astype(np.float64)
    union = exact_masks.sum(0)[:, None] + fast_masks.sum(0)[None, :] - inter
    iou = np.where(exact["class_ids"][:, None] == fast["class_ids"][None, :],
                   inter / np.maximum(union, 1), 0.0)
    matched = []
    while iou.size and iou.max() >= 0.5:
        row, col = np.unravel_index(np.argmax(iou), iou.shape)
        matched.append(float(iou[row, col]))
        iou[row, :] = -1
        iou[:, col] = -1
    return {"matched": len(matched), "exact": len(exact["class_ids"]),
            "fast": len(fast["class_ids"]), "smallest_mask_iou": min(matched, default=None)}


def agreement(ours, peer):
    """Do both runs find the same detections? Count, then a one-to-one match of each of our
    boxes to Matterport's nearest box of the same class, within a pixel."""
    if ours["detections"] != peer["detections"]:
        return f"DIFFER: {ours['detections']} vs {peer['detections']} detections"
    if not ours["detections"]:
        return "agree: no detections on either side"
    boxes, peer_boxes = np.array(ours["rois"]), np.array(peer["rois"])
    distance = np.abs(boxes[:, None, :] - peer_boxes[None, :, :]).max(axis=2).astype(float)
    distance[np.array(ours["class_ids"])[:, None] != np.array(peer["class_ids"])[None, :]] = np.inf
    nearest = distance.argmin(axis=1)
    worst = distance[np.arange(len(boxes)), nearest].max()
    if np.isinf(worst):
        return f"DIFFER: {len(boxes)} detections each, of different classes"
    one_to_one = len(set(nearest.tolist())) == len(boxes)
    verdict = "agree" if one_to_one and worst <= 1 else "DIFFER"
    return (f"{verdict}: {len(boxes)} detections each, "
            f"{'matched one to one' if one_to_one else 'not matched one to one'} by class, "
            f"largest box difference {worst:g} px")


def time_setting(backbone, size, weights, args, tf_python):
    """Times our detect() on one setting and, with --matterport, Matterport's in alternation;
    with --competing-jobs, while that many competing loads run (see compete).

    Returns (our summary, Matterport's summary or None, Matterport's time / ours per pair)."""
    image = test_image_file(size)
    child = [sys.executable, __file__, "--child", backbone, str(size), str(image), "--device",
             args.device, "--weights", str(weights), "--batch", str(args.batch)]
    ours = Worker(child + ["--precision", *args.precision], f"the {backbone} {size} run")
    matterport = Worker(
        [tf_python, str(ROOT / "benchmarks" / "matterport_tf.py"), "--serve", "--matterport",
         args.matterport, "--backbone", backbone, "--size", str(size), "--weights",
         str(weights), "--image", str(image)],
        f"the Matterport {backbone} {size} run", env=users_environment()
    ) if args.matterport else None
    speedups = []
    competitors = []
    try:
        # Started once both measured models are loaded and warmed up; each warms up before
        # the timed runs start.
        for job in range(args.competing_jobs):
            competitors.append(Worker(child + ["--loop"],
                                      f"competing job {job + 1} ({backbone} {size})"))
        for pair in tqdm(range(args.repeat), desc=f"{backbone} {size}x{size}", unit="run"):
            if matterport is None:
                ours.run()
                continue
            first, second = (ours, matterport) if pair % 2 == 0 else (matterport, ours)
            milliseconds = {first: first.run(), second: second.run()}
            speedups.append(milliseconds[matterport] / milliseconds[ours])
        for competitor in competitors:  # a load that stopped early would go unnoticed
            competitor.check_running()
    finally:
        for competitor in competitors:
            competitor.kill()
    summary = ours.finish()
    if matterport is None:
        return summary, None, speedups
    peer_summary = matterport.finish()
    if peer_summary["image_sha256"] != summary["image_sha256"]:
        sys.exit(f"error: the two {backbone} {size} runs were fed different pixels")
    return summary, peer_summary, speedups


def users_environment():
    """This process's environment with OMP_WAIT_POLICY as the user left it (mrcnn sets it)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if USERS_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = USERS_WAIT_POLICY
    return env


def thread_note(summary):
    """The torch threads and the OpenMP wait policy our runs had, and who set the policy."""
    policy = summary["omp_wait_policy"]
    source = "the environment's" if USERS_WAIT_POLICY is not None else "mrcnn's default"
    return (f"torch {summary['torch_threads']} threads, OMP_WAIT_POLICY {policy}"
            + ("" if policy == "unset" else f" ({source})"))


def competing_note(args):
    """What competed with the timed runs for the CPU (nothing without --competing-jobs)."""
    if not args.competing_jobs:
        return []
    jobs = args.competing_jobs
    return [f"Competing load: {jobs} other process{'es' if jobs > 1 else ''} ran our exact "
            f"detect() of the same setting ({args.batch} cop{'y' if args.batch == 1 else 'ies'} "
            f"of the same image, same weights, same threads and OMP_WAIT_POLICY) in a loop during "
            f"all the timed runs of each setting: started once the measured models were loaded "
            f"and warmed up, warmed up themselves before the first timed run, killed after the "
            f"last, so that the {os.cpu_count()} cores were shared as on a busy machine."]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024],
                        help="molded image sizes (square mode)")
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"],
                        choices=["resnet50", "resnet101"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs after one warm-up (with --matterport: of each side)")
    parser.add_argument("--weights", help="a Matterport .h5 or .pth with 81 classes "
                        "(default: the synthetic reference weights)")
    parser.add_argument("--matterport", metavar="PATH",
                        help="Matterport's Mask_RCNN checkout (or its mrcnn/ package): also time "
                        "its Keras/TensorFlow detect() on the same image and weights")
    parser.add_argument("--tensorflow-python", metavar="PATH",
                        help="a Python with TensorFlow 2, tf_keras, h5py and scikit-image that "
                        "runs benchmarks/matterport_tf.py (default: $MRCNN_TF_PYTHON)")
    add_record_options(parser)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["exact"],
                        help="precisions to time (mrcnn.precision); with a fast one, exact runs "
                        "too, in alternation in the same process, and the table gives each "
                        "one's speed-up over exact and its agreement with exact's detections "
                        "(default: exact)")
    parser.add_argument("--batch", type=int, default=1,
                        help="images per detect() call, run as one batch (times are per image)")
    parser.add_argument("--competing-jobs", type=int, default=0, metavar="N",
                        help="run N more processes of our detect() on the same setting in a loop "
                        "while each setting's timed runs go on (a machine shared with N other "
                        "jobs); the notes say so (default 0)")
    parser.add_argument("--child", nargs=3, metavar=("BACKBONE", "SIZE", "IMAGE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = list(dict.fromkeys(["exact", *args.precision]))

    if args.child and args.loop:
        return compete(args.child[0], int(args.child[1]), args.device, args.weights,
                       args.child[2], args.batch)
    if args.child:
        result = measure(args.child[0], int(args.child[1]), args.device, args.weights,
                         args.child[2], tuple(args.precision), args.batch)
        print(json.dumps(result))
        return

    tf_python = args.tensorflow_python or os.environ.get("MRCNN_TF_PYTHON")
    peer = args.matterport is not None
    if args.tensorflow_python and not peer:
        parser.error("--tensorflow-python needs --matterport PATH (Matterport's Mask_RCNN)")
    if peer and not tf_python:
        parser.error("--matterport needs --tensorflow-python PATH (or $MRCNN_TF_PYTHON): a "
                     "Python with TensorFlow 2 and tf_keras")
    if peer and not shutil.which(tf_python):
        parser.error(f"--tensorflow-python {tf_python}: no such executable")
    if peer and args.device != "cpu":
        parser.error("the Matterport peer runs on the CPU; compare with --device cpu")
    if peer and args.weights and not args.weights.endswith(".h5"):
        parser.error("the Matterport peer needs Matterport .h5 weights, not a .pth")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.competing_jobs < 0:
        parser.error("--competing-jobs must be 0 or more")
    if peer and (len(args.precision) > 1 or args.batch > 1):
        parser.error("--matterport compares one exact image per call; drop --precision/--batch")

    if len(args.precision) > 1 or args.batch > 1:
        return compare_precisions(args)
    load_before = os.getloadavg()[0]
    rows, checks, fastest_runs = [], [], []
    for backbone in args.backbones:
        weights = args.weights or synthetic_weights(backbone)
        for size in args.sizes:
            ours, matterport, speedups = time_setting(backbone, size, weights, args, tf_python)
            seconds = ours["seconds"]
            memory = f"{ours['peak']['cpu_rss_mb']:.0f}"
            if "gpu_mb" in ours["peak"]:
                memory += f" / {ours['peak']['gpu_mb']:.0f}"
            row = ([backbone, size, ours["detections"], f"{seconds['total'] * 1000:.0f}"]
                   + [f"{seconds[name] * 1000:.0f}" for name in STAGES] + [memory])
            if peer:
                row += [f"{matterport['ms_per_image']:.0f}",
                        f"{statistics.median(speedups):.2f}x",
                        f"{matterport['peak_rss_mb']:.0f}"]
                checks.append(f"{backbone} {size}: {agreement(ours, matterport)}")
                fastest = min(ours["ms_runs"]), min(matterport["ms_runs"])
                fastest_runs.append(f"{backbone} {size}: ours {fastest[0]:.0f} ms, Matterport "
                                    f"{fastest[1]:.0f} ms ({fastest[1] / fastest[0]:.2f}x)")
            rows.append(row)
    header = (["backbone", "size", "detections", "total ms"] + [f"{s} ms" for s in STAGES]
              + ["peak MB (RSS" + (" / GPU)" if args.device.startswith("cuda") else ")")])
    notes = [f"Median of {args.repeat} runs after one warm-up, one image per call, "
             f"device {args.device}, {thread_note(ours)}. Peak RSS is the whole process's "
             f"(model loading included)."] + competing_note(args)
    if peer:
        header += ["Matterport TF ms", "speed-up", "Matterport TF peak MB (RSS)"]
        notes += [
            f"Matterport TF: Matterport's own detect() (commit 3deaec5 with the compatibility "
            f"edits listed in benchmarks/matterport_tf.py) under TensorFlow "
            f"{matterport['tensorflow']} + tf_keras on the CPU, oneDNN {matterport['onednn']}, "
            f"thread pools intra-op {matterport['intra_op_threads']} / inter-op "
            f"{matterport['inter_op_threads']}; same image file (identical pixels, checked), "
            f"same weights file, same configuration. Both models stay loaded in their own "
            f"processes and their timed runs alternate (one of ours, one of Matterport's, the "
            f"order swapped every pair), so both see the same load. speed-up = the median over "
            f"the {args.repeat} pairs of Matterport's time / ours (above 1: ours is faster). "
            f"Both include molding and unmolding; ours also runs the MaskIoU head, which "
            f"Matterport lacks.",
            "Same detections (count; each of our boxes matched to Matterport's nearest box of "
            "the same class): " + "; ".join(checks) + ".",
            "Fastest single run of each side (the least disturbed by other load on the machine): "
            + "; ".join(fastest_runs) + "."]
    else:
        notes.append("The Matterport Keras/TensorFlow peer was not run (pass --matterport and "
                     "--tensorflow-python to add it).")
    publish("detect() per image", args.device, header, rows, notes, load_before, args)


def compare_precisions(args):
    """The --precision/--batch table: per setting and precision, the time per image, the
    speed-up over exact and the agreement with exact's detections."""
    load_before = os.getloadavg()[0]
    rows = []
    for backbone in args.backbones:
        weights = args.weights or synthetic_weights(backbone)
        for size in args.sizes:
            summary, _, _ = time_setting(backbone, size, weights, args, None)
            memory = f"{summary['peak']['cpu_rss_mb']:.0f}"
            if "gpu_mb" in summary["peak"]:
                memory += f" / {summary['peak']['gpu_mb']:.0f}"
            for precision in args.precision:
                mode = summary["precisions"][precision]
                agreement = mode["agreement"]
                smallest = agreement["smallest_mask_iou"]
                rows.append(
                    [backbone, size, args.batch, precision, mode["detections"],
                     f"{mode['seconds']['total'] * 1000:.0f}",
                     f"{summary['speedup_vs_exact'][precision]:.2f}x",
                     f"{agreement['matched']} of {agreement['exact']}",
                     "—" if smallest is None else f"{smallest:.3f}"]
                    + [f"{mode['seconds'][name] * 1000:.0f}" for name in STAGES] + [memory])
    header = (["backbone", "size", "batch", "precision", "detections", "ms per image",
               "speed-up vs exact", "matched (of exact's)", "smallest mask IoU"]
              + [f"{s} ms" for s in STAGES]
              + ["peak MB (RSS" + (" / GPU)" if args.device.startswith("cuda") else ")")])
    notes = [
        f"Median of {args.repeat} calls after one warm-up, device {args.device}, "
        f"{thread_note(summary)}; each call detects {args.batch} "
        f"cop{'y' if args.batch == 1 else 'ies'} of the image in one batch, times are per "
        "image. The precisions run in one process, alternating: each call runs every precision "
        "once, in an order swapped from call to call; speed-up = the median over the calls of "
        "exact's time / this precision's.",
        "matched: exact's detections paired one to one with this precision's detections of the "
        "same class, greedily by mask IoU (pairs with IoU >= 0.5); smallest mask IoU: over the "
        "pairs. The weights are synthetic (random): their activations amplify rounding far more "
        "than trained weights do. On a CPU tf32 is exact's arithmetic."] + competing_note(args)
    publish("detect() per image by precision", args.device, header, rows, notes, load_before,
            args)


if __name__ == "__main__":
    main()
