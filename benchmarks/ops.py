"""Times mrcnn.ops against a peer library and plain-PyTorch references, and checks that all of
them compute the same thing.

Cases (inputs from benchmarks/op_inputs.py, fixed seeds; float32):
  nms              1,000 / 6,000 / 12,000 clustered boxes at IoU 0.7, max_output_size = N
  crop_and_resize  1,000 boxes (3 to 128 pixels a side) to 7x7 and 14x14 from a 256-channel
                   256x256 map, forward and forward+backward (the gradient w.r.t. the map)
  roi_align        the same regions, aligned=True, sampling_ratio=2, forward and forward+backward

Ours runs on the map laid out channels last (as the model's pyramid is), into a fresh result
and (forward) into a reused out= tensor, and on the map laid out NCHW. The peer on the CPU is
TensorFlow (tf.image.non_max_suppression and crop_and_resize, NHWC), run by
benchmarks/tf_ops_peer.py in a process of the Python given by --tensorflow-python; on CUDA it is
torchvision.ops.nms and roi_align, if torchvision imports. Ours and the peer run in alternating
rounds (calls of ours, then calls of the peer, the order swapped every round; a round repeats a
fast op for 50 ms), so that both see the same load on a shared machine; the table gives the
median time per call of each and the median over the rounds of peer time / ours. The plain-PyTorch reference (tests/torch_reference.py) is timed on
its own. The table also says whether ours and the others agree: the same kept indices for NMS,
the largest absolute difference otherwise (0 means bit for bit). It is printed and appended,
with the machine, date and load, to benchmarks/RESULTS.md.

    python benchmarks/ops.py --tensorflow-python /path/to/tf-env/bin/python
    python benchmarks/ops.py --device cuda --repeat 50
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrcnn  # noqa: E402,F401  first: it sets OpenMP's thread settings before torch loads
import numpy as np  # noqa: E402
import torch  # noqa: E402

import mrcnn.ops  # noqa: E402
from benchmarks import op_inputs  # noqa: E402
from benchmarks.common import (Worker, add_record_options, is_cuda, markdown_table,  # noqa: E402
                               median_seconds, record, synchronize)
from tests import torch_reference  # noqa: E402

PEER_SCRIPT = Path(__file__).resolve().parent / "tf_ops_peer.py"
OPS = ("nms", "crop_and_resize", "roi_align")


@dataclass
class Case:
    """One row of the table: an op on one input, in one direction, with one way of calling ours.
    Rows of the same op, input and direction share `reference`, timed once."""

    op: str
    size: str
    direction: str
    layout: str
    ours: Callable[[], torch.Tensor]
    reference: Callable[[], torch.Tensor]
    tensorflow: Optional[str] = None  # the case's name in the TensorFlow peer
    peer: Optional[Callable[[], torch.Tensor]] = None  # in-process peer (torchvision)

    @property
    def group(self):
        return self.op, self.size, self.direction


def nms_cases(device, torchvision):
    threshold = op_inputs.NMS_IOU_THRESHOLD
    for num_boxes in op_inputs.NMS_SIZES:
        boxes, scores = (torch.from_numpy(a).to(device) for a in op_inputs.nms_inputs(num_boxes))
        peer = None
        if torchvision is not None:  # takes (x1, y1, x2, y2) and keeps all boxes
            peer = partial(torchvision.ops.nms, boxes[:, [1, 0, 3, 2]], scores, threshold)
        yield Case("nms", f"{num_boxes:,} boxes, IoU {threshold}", "forward", "—",
                   partial(mrcnn.ops.nms, boxes, scores, threshold, num_boxes),
                   partial(torch_reference.nms, boxes, scores, threshold, num_boxes),
                   f"nms/{num_boxes}", peer)


def layouts(device):
    """The layouts ours is timed in: on the CPU channels last (the model's) first, then NCHW;
    the CUDA kernels read NCHW."""
    if is_cuda(device):
        return {"NCHW": torch.contiguous_format}
    return {"channels last": torch.channels_last, "NCHW": torch.contiguous_format}


def pooling_cases(device, torchvision):
    """crop_and_resize and roi_align of the same regions, forward and forward+backward."""
    feature = torch.from_numpy(op_inputs.feature_map()).to(device)
    boxes_np, box_ind_np = op_inputs.crop_boxes()
    boxes, box_ind = torch.from_numpy(boxes_np).to(device), torch.from_numpy(box_ind_np).to(device)
    rois = torch.from_numpy(op_inputs.rois_from_crop_boxes(boxes_np, box_ind_np)).to(device)
    images = {name: feature.contiguous(memory_format=layout)
              for name, layout in layouts(device).items()}
    for crop_size in op_inputs.CROP_SIZES:
        upstream = torch.from_numpy(op_inputs.upstream_gradient(crop_size)).to(device)
        # A pipeline of a layout hands back gradients in it.
        gradients = {name: upstream.contiguous(memory_format=layout)
                     for name, layout in layouts(device).items()}
        crop = dict(boxes=boxes, box_ind=box_ind, crop_size=crop_size)
        align = dict(output_size=crop_size, spatial_scale=1.0, aligned=True,
                     sampling_ratio=op_inputs.ROI_ALIGN_SAMPLING_RATIO)
        pools = {  # functions of the map: ours, the reference, the in-process peer
            "crop_and_resize": (partial(mrcnn.ops.crop_and_resize, **crop),
                                partial(torch_reference.crop_and_resize, **crop), None),
            "roi_align": (partial(mrcnn.ops.roi_align, rois=rois, **align),
                          partial(torch_reference.roi_align, rois=rois, **align),
                          None if torchvision is None
                          else partial(torchvision.ops.roi_align, boxes=rois, **align)),
        }
        size = f"{len(boxes):,} boxes to {crop_size}x{crop_size}"
        for op, (ours, reference, peer) in pools.items():
            key = f"{op}/{crop_size}" if op == "crop_and_resize" else None
            forward_key = key and f"{key}/forward"
            backward_key = key and f"{key}/forward+backward"
            reference_forward = forward(feature, reference)
            reference_backward = forward_backward(feature, upstream, reference)
            peer_forward = peer and forward(feature, peer)
            peer_backward = peer and forward_backward(feature, upstream, peer)
            for index, (name, image) in enumerate(images.items()):
                yield Case(op, size, "forward", name, forward(image, ours), reference_forward,
                           forward_key, peer_forward)
                if index == 0:  # the model's layout
                    yield Case(op, size, "forward", f"{name}, out=", forward_into(image, ours),
                               reference_forward, forward_key, peer_forward)
            for name, image in images.items():
                yield Case(op, size, "forward+backward", name,
                           forward_backward(image, gradients[name], ours), reference_backward,
                           backward_key, peer_backward)


def forward(image, pool):
    """A zero-argument call of pool(image) without autograd."""
    def run():
        with torch.no_grad():
            return pool(image)
    return run


def forward_into(image, pool):
    """A zero-argument call of pool(image, out=...) into the same tensor every time (the result
    of the first call)."""
    out = []

    def run():
        with torch.no_grad():
            if not out:
                out.append(pool(image))
            return pool(image, out=out[0])
    return run


def forward_backward(image, upstream, pool):
    """A zero-argument call that pools `image` and returns the gradient of the pooled values
    with respect to it, for the upstream gradient `upstream`."""
    image = image.detach().requires_grad_()
    return lambda: torch.autograd.grad(pool(image), image, upstream)[0]


def timed(fn, device, count=1):
    """(seconds per call, last result) of `count` calls of fn() in a row."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        result = fn()
    synchronize(device)
    return (time.perf_counter() - start) / count, result


# A round runs each side for at least this long: calls of a fast op repeat within the round, so
# that both sides are timed warm (a single call of 0.1 ms right after the other process ran
# would mostly time caches refilling).
ROUND_SECONDS = 0.05


def alternating(ours, peer, device, repeat, warmup):
    """Times ours() and peer(count) (which returns its own seconds for `count` calls in a row)
    in alternating rounds, the order swapped every round, after `warmup` calls of each. A round
    times as many calls of each side in a row as ours takes ROUND_SECONDS for. Returns (median
    seconds per call of ours, the same of the peer, median over the rounds of the peer's time /
    ours, ours' last result)."""
    for _ in range(warmup):
        ours()
        peer(1)
    count = max(1, math.ceil(ROUND_SECONDS / timed(ours, device)[0]))
    ours_times, peer_times, ratios = [], [], []
    for round_ in range(repeat):
        if round_ % 2:
            peer_seconds = peer(count) / count
            ours_seconds, result = timed(ours, device, count)
        else:
            ours_seconds, result = timed(ours, device, count)
            peer_seconds = peer(count) / count
        ours_times.append(ours_seconds)
        peer_times.append(peer_seconds)
        ratios.append(peer_seconds / ours_seconds)
    return (statistics.median(ours_times), statistics.median(peer_times),
            statistics.median(ratios), result)


def alone(fn, device, repeat, warmup):
    """(median seconds, last result) of fn() over `repeat` calls after `warmup` calls."""
    results = []

    def run():
        results[:] = [fn()]
    return median_seconds(run, device, repeat=repeat, warmup=warmup), results[0]


def agreement(ours, other):
    """How `other`'s result matches ours: the kept indices for NMS, else the largest absolute
    difference (0 means equal bit for bit)."""
    other = torch.as_tensor(other).to(ours.device)
    if not ours.is_floating_point():
        if torch.equal(ours, other):
            return f"same {len(ours):,} kept"
        return f"**differ**: {len(ours):,} vs {len(other):,} kept"
    if ours.shape != other.shape:
        return f"**shape {tuple(other.shape)}**"
    difference = (ours - other).abs().max().item()
    return "max abs diff 0" if difference == 0 else f"max abs diff {difference:.1e}"


def start_tensorflow_peer(python, args, outputs):
    """The TensorFlow peer (tf_ops_peer.py) started with `python`, ready to serve."""
    print(f"TensorFlow peer ({python}) ...", flush=True)
    command = [python, str(PEER_SCRIPT), "--outputs", str(outputs)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    worker = Worker(command, f"the TensorFlow peer ({' '.join(command)})")
    check_peer_inputs(worker.ready)
    return worker


def check_peer_inputs(report):
    """Stops unless the peer generated the very inputs this process did."""
    ours = {f"nms/{n}": op_inputs.fingerprint(*op_inputs.nms_inputs(n))
            for n in op_inputs.NMS_SIZES}
    ours["crop"] = op_inputs.fingerprint(op_inputs.feature_map(), *op_inputs.crop_boxes())
    for crop_size in op_inputs.CROP_SIZES:
        ours[f"upstream/{crop_size}"] = op_inputs.fingerprint(
            op_inputs.upstream_gradient(crop_size))
    differing = [key for key, value in ours.items() if report["fingerprints"].get(key) != value]
    if differing:
        sys.exit(f"error: the TensorFlow peer's inputs differ from ours for {differing} (numpy "
                 f"{report['numpy']} there, {np.__version__} here): the timings would not be "
                 "comparable")


def tensorflow_results(key, outputs):
    """TF's saved results for case `key`: kept indices or crops, or the image gradient computed
    with op determinism and the gradient of TF's timed (threaded) runs."""
    op, *rest = key.split("/")
    if op == "nms":
        return np.load(outputs / f"nms_{rest[0]}.npy"), None
    crop_size, direction = rest
    if direction == "forward":
        return np.load(outputs / f"crops_{crop_size}.npy"), None
    return (np.load(outputs / f"grad_{crop_size}.npy"),
            np.load(outputs / f"grad_timed_{crop_size}.npy"))


def import_torchvision():
    """(torchvision, None), or (None, the reason it cannot be used). Only CUDA runs call this:
    torchvision is optional and must never be imported elsewhere."""
    try:
        import torchvision
        import torchvision.ops  # noqa: F401  (loads its compiled ops)
    except Exception as error:  # ImportError, or a build that fails to load its kernels
        return None, f"{type(error).__name__}: {error}"
    return torchvision, None


def milliseconds(seconds):
    return "—" if seconds is None else f"{seconds * 1000:.2f}"


def ratio(value):
    return "—" if value is None else f"{value:.2f}x"


class Measurements:
    """Times every case: ours against the peer, and each reference once (the rows of a group
    come one after the other)."""

    def __init__(self, args, tensorflow):
        self.args, self.tensorflow = args, tensorflow
        self.reference = (None, None, None)  # group, seconds, result
        self.ours = {}  # group + (layout,) -> seconds

    def row(self, case):
        args, device = self.args, self.args.device
        print(f"{case.op}, {case.size}, {case.direction}, {case.layout} ...", flush=True)
        peer_seconds = peer_ratio = None
        if case.tensorflow and self.tensorflow is not None:
            def peer(count):
                return self.tensorflow.run(f"{case.tensorflow} {count}") / 1000
        elif case.peer is not None:
            def peer(count):
                return timed(case.peer, device, count)[0] * count
        else:
            peer = None
        if peer is None:
            ours_seconds, ours = alone(case.ours, device, args.repeat, args.warmup)
        else:
            ours_seconds, peer_seconds, peer_ratio, ours = alternating(
                case.ours, peer, device, args.repeat, args.warmup)
        self.ours[case.group + (case.layout,)] = ours_seconds
        if self.reference[0] != case.group:
            self.reference = (None, None, None)  # frees the last group's result first
            self.reference = (case.group, *alone(case.reference, device, args.reference_repeat,
                                                 min(args.warmup, 1)))
        _, reference_seconds, reference = self.reference
        return [case.op, case.size, case.direction, case.layout, milliseconds(ours_seconds),
                milliseconds(peer_seconds), ratio(peer_ratio),
                agreement(ours, case.peer()) if case.peer is not None else "—",
                milliseconds(reference_seconds), ratio(reference_seconds / ours_seconds),
                agreement(ours, reference)]

    def roi_align_note(self):
        """roi_align's time against crop_and_resize's, channels last, fresh results."""
        parts = []
        for (op, size, direction, layout), seconds in self.ours.items():
            crop = self.ours.get(("crop_and_resize", size, direction, layout))
            if op == "roi_align" and layout == "channels last" and crop:
                parts.append(f"{size.split(' to ')[-1]} {direction} {seconds / crop:.2f}")
        return ("roi_align's time / crop_and_resize's on the same regions (channels last): "
                + ", ".join(parts) + "." if parts else None)


def check_against_tensorflow(cases, rows, outputs):
    """Fills the 'ours vs peer' cells of the TensorFlow cases from TF's saved results."""
    for case, row in zip(cases, rows):
        if case.tensorflow is None:
            continue
        expected, threaded = tensorflow_results(case.tensorflow, outputs)
        ours = case.ours()
        row[7] = agreement(ours, expected)
        if threaded is not None:
            row[7] += f" ({agreement(ours, threaded)} from TF's timed runs)"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS),
                        help="the ops to time (default: all)")
    parser.add_argument("--repeat", type=int, default=20,
                        help="timed rounds of ours and the peer per row (default 20)")
    parser.add_argument("--reference-repeat", type=int, default=3,
                        help="timed runs of the plain-PyTorch reference, which takes up to "
                             "seconds per run (default 3)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed runs before the timed ones (default 2; at most 1 for the "
                             "reference)")
    parser.add_argument("--threads", type=int,
                        help="threads for torch and for each of TensorFlow's pools (default: "
                             "each library's own default)")
    parser.add_argument("--tensorflow-python", default=os.environ.get("MRCNN_TF_PYTHON"),
                        metavar="PATH",
                        help="Python interpreter of an environment with TensorFlow and numpy, "
                             "for the CPU peer (default: $MRCNN_TF_PYTHON; without either, the "
                             "peer columns stay empty)")
    add_record_options(parser)
    args = parser.parse_args()
    if min(args.repeat, args.reference_repeat) < 1 or args.warmup < 0:
        parser.error("--repeat and --reference-repeat must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    return args


def main():
    args = parse_args()
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    notes = []
    torchvision = tensorflow = None
    if is_cuda(device):
        torchvision, reason = import_torchvision()
        if torchvision is None:
            peer_name = "torchvision"
            notes.append(f"No torchvision peer: it does not import here ({reason}).")
        else:
            peer_name = f"torchvision {torchvision.__version__}"
        if args.tensorflow_python:
            notes.append("TensorFlow is the CPU peer only; it was not run for this CUDA run.")
    else:
        peer_name = "TensorFlow"
        if not args.tensorflow_python:
            notes.append("No TensorFlow peer: pass --tensorflow-python PATH or set "
                         "MRCNN_TF_PYTHON to include it (README, Benchmarks).")
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="mrcnn-ops-bench-") as scratch:
        peer_outputs = Path(scratch)
        if not is_cuda(device) and args.tensorflow_python:
            tensorflow = start_tensorflow_peer(args.tensorflow_python, args, peer_outputs)
            peer_name = f"TensorFlow {tensorflow.ready['tensorflow']}"
        cases = [case for case in [*nms_cases(device, torchvision),
                                   *pooling_cases(device, torchvision)] if case.op in args.ops]
        if tensorflow is None:
            for case in cases:
                case.tensorflow = None
        measurements = Measurements(args, tensorflow)
        rows = [measurements.row(case) for case in cases]
        if tensorflow is not None:
            print("TensorFlow peer: saving its results ...", flush=True)
            tensorflow.finish()
            check_against_tensorflow(cases, rows, peer_outputs)

    header = ["op", "input", "pass", "ours: layout", "ours ms", f"{peer_name} ms",
              "peer / ours", "ours vs peer", "PyTorch ref. ms", "ref. / ours", "ours vs ref."]
    table = markdown_table(header, rows)
    notes = describe_run(args, tensorflow, load_before) + notes
    roi_align_note = measurements.roi_align_note()
    if roi_align_note:
        notes.append(roi_align_note)
    notes += args.note
    if args.no_record:
        print("\n" + table + "\n\n" + "\n".join(notes))
    else:
        record(f"mrcnn.ops against {peer_name.split()[0]} and plain PyTorch", device, table,
               notes)


def describe_run(args, tensorflow, load_before):
    """The notes under the table: method, threads, load, what the columns compare."""
    device = args.device
    chosen = "set by --threads" if args.threads else "its default"
    threads = f"torch {torch.get_num_threads()} ({chosen})"
    if tensorflow is not None:
        ready = tensorflow.ready
        intra, inter = ready["intra_op_threads"], ready["inter_op_threads"]
        threads += (f"; TensorFlow intra-op pool {intra or 'default'}, inter-op pool "
                    f"{inter or 'default'} (a default pool has one thread per core, "
                    f"{ready['cpu_count']} here)")
    notes = [
        f"{args.repeat} rounds after {args.warmup} warm-up runs per row, ours and the peer "
        f"alternating (the order swapped every round; a round repeats an op faster than "
        f"{ROUND_SECONDS * 1000:.0f} ms until ours has run that long, and the peer as many "
        f"times): the medians of the time per call of each, and the median over the rounds of "
        f"the peer's time / ours (above 1: ours is faster). The plain-PyTorch "
        f"reference (tests/torch_reference.py): median of {args.reference_repeat} runs after "
        f"{min(args.warmup, 1)}, once per op, input and pass. Inputs: benchmarks/op_inputs.py "
        f"(seed {op_inputs.SEED}), float32, device {device}. roi_align pools the regions "
        f"crop_and_resize crops, with aligned=True and "
        f"sampling_ratio={op_inputs.ROI_ALIGN_SAMPLING_RATIO}.",
        "Ours: 'channels last' pools the map stored channels last (torch.channels_last, as the "
        "model's pyramid is) into a fresh result; 'out=' writes into the same tensor every call "
        "(forward only; autograd needs fresh results); 'NCHW' pools the map stored NCHW. The "
        "gradient of a forward+backward row arrives in the row's layout.",
        f"Threads: {threads}.",
        "roi_align computes its sample positions in float32, as torchvision does: at 256 pixels "
        "a rounding moves a sample by up to 1.5e-5 pixel, which on this map of standard normal "
        "values changes a result by up to about 1e-4; the reference rounds differently (it goes "
        "through grid_sample's normalised coordinates), hence its differences of that order.",
    ]
    if not is_cuda(device):
        load_after = os.getloadavg()
        notes.append(
            f"Load average (1, 5, 15 min) {', '.join(f'{x:.1f}' for x in load_before)} before "
            f"and {', '.join(f'{x:.1f}' for x in load_after)} after the run on "
            f"{os.cpu_count()} cores: above {os.cpu_count()}, other processes were competing for "
            "the cores and the times are noisier and slower than on an idle machine.")
    if tensorflow is not None:
        notes.append(
            "TensorFlow runs eagerly in its own process on the same inputs (checked by hash) in "
            "its native NHWC layout. nms passes max_output_size = N to both. roi_align has no "
            "TensorFlow counterpart. For crop_and_resize forward+backward, 'ours vs peer' "
            "compares with TF's gradient computed under op determinism (one thread, TF's "
            "summation order). With more than one thread TF's timed runs shard the boxes over "
            "them, and they add into shared pixels without synchronisation, so their gradient "
            "(in brackets) can lose updates: differences far above rounding there are TF's.")
    if is_cuda(device):
        notes.append("torchvision has no crop_and_resize; its nms takes (x1, y1, x2, y2) boxes "
                     "and keeps all boxes (ours: max_output_size = N, the same here).")
    return notes


if __name__ == "__main__":
    main()
