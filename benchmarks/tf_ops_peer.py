"""TensorFlow's side of benchmarks/ops.py: tf.image.non_max_suppression and
tf.image.crop_and_resize (forward, and forward + gradient with respect to the image) on the
inputs of benchmarks/op_inputs.py, run one at a time as ops.py asks (benchmarks/common.serve),
so that its runs alternate with ours.

Needs only TensorFlow and numpy (TensorFlow is not a dependency of mrcnn, so it lives in an
environment of its own); ops.py starts it with the interpreter given by --tensorflow-python. Its
first line on stdout holds the versions, threads and the inputs' fingerprints; each line read
from stdin names a case and a count (e.g. "crop_and_resize/7/forward 3", "nms/1000 40") and is
answered with the milliseconds of that many runs of it in a row. When stdin closes it saves every result in --outputs as .npy
(kept indices, crops and image gradients in NCHW) for ops.py to compare with its own, and
prints a last line.

    /path/to/tf/python benchmarks/tf_ops_peer.py --outputs /tmp/peer < cases.txt
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter off stderr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import op_inputs  # noqa: E402
from benchmarks.common import serve  # noqa: E402


def nhwc(array):
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def nchw(tensor):
    return np.ascontiguousarray(tensor.numpy().transpose(0, 3, 1, 2))


def crop_gradient(image, boxes, box_ind, crop_size, upstream):
    """The gradient of the crops with respect to the image, for the upstream gradient."""
    with tf.GradientTape() as tape:
        tape.watch(image)
        crops = tf.image.crop_and_resize(image, boxes, box_ind, [crop_size, crop_size])
    return tape.gradient(crops, image, output_gradients=upstream)


def cases():
    """({case name: zero-argument function returning TF's result}, {input name: fingerprint},
    {crop size: (image, boxes, box_ind, upstream gradient)})."""
    runs, fingerprints = {}, {}
    for num_boxes in op_inputs.NMS_SIZES:
        boxes_np, scores_np = op_inputs.nms_inputs(num_boxes)
        fingerprints[f"nms/{num_boxes}"] = op_inputs.fingerprint(boxes_np, scores_np)
        boxes, scores = tf.constant(boxes_np), tf.constant(scores_np)
        runs[f"nms/{num_boxes}"] = (
            lambda boxes=boxes, scores=scores, n=num_boxes: tf.image.non_max_suppression(
                boxes, scores, max_output_size=n, iou_threshold=op_inputs.NMS_IOU_THRESHOLD))

    feature_np = op_inputs.feature_map()
    boxes_np, box_ind_np = op_inputs.crop_boxes()
    fingerprints["crop"] = op_inputs.fingerprint(feature_np, boxes_np, box_ind_np)
    image = tf.constant(nhwc(feature_np))
    boxes, box_ind = tf.constant(boxes_np), tf.constant(box_ind_np)
    crop_inputs = {}
    for size in op_inputs.CROP_SIZES:
        upstream_np = op_inputs.upstream_gradient(size)
        fingerprints[f"upstream/{size}"] = op_inputs.fingerprint(upstream_np)
        upstream = tf.constant(nhwc(upstream_np))
        crop_inputs[size] = (image, boxes, box_ind, upstream)
        runs[f"crop_and_resize/{size}/forward"] = (
            lambda size=size: tf.image.crop_and_resize(image, boxes, box_ind, [size, size]))
        runs[f"crop_and_resize/{size}/forward+backward"] = (
            lambda size=size, upstream=upstream: crop_gradient(image, boxes, box_ind, size,
                                                               upstream))
    return runs, fingerprints, crop_inputs


def save_results(runs, crop_inputs, outputs):
    """Saves every result under `outputs`: kept indices, crops, the gradient of the timed
    (threaded) runs, and the gradient under op determinism (TF's summation order)."""
    for name, run in runs.items():
        op, *rest = name.split("/")
        if op == "nms":
            np.save(outputs / f"nms_{rest[0]}.npy", run().numpy().astype(np.int64))
        elif rest[1] == "forward":
            np.save(outputs / f"crops_{rest[0]}.npy", nchw(run()))
        else:
            np.save(outputs / f"grad_timed_{rest[0]}.npy", nchw(run()))
    # By default TF's image gradient shards the boxes over its threads, which add into shared
    # pixels unsynchronised (nondeterministic by TF's own account). With op determinism it runs
    # on one thread, in the summation order ops.py compares against. It cannot be turned off
    # again, so it comes last.
    tf.config.experimental.enable_op_determinism()
    for size, (image, boxes, box_ind, upstream) in crop_inputs.items():
        np.save(outputs / f"grad_{size}.npy",
                nchw(crop_gradient(image, boxes, box_ind, size, upstream)))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int,
                        help="threads of TF's intra-op and inter-op pools (default: TF's own)")
    parser.add_argument("--outputs", type=Path, required=True,
                        help="existing directory to save every result in, as .npy")
    args = parser.parse_args()
    if not args.outputs.is_dir():
        parser.error(f"--outputs {args.outputs} is not a directory")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if tf.config.list_physical_devices("GPU"):
        tf.config.set_visible_devices([], "GPU")  # the CPU kernels are the ones compared

    runs, fingerprints, crop_inputs = cases()

    def run(request):
        name, _, count = request.partition(" ")
        if name not in runs:
            sys.exit(f"error: tf_ops_peer.py has no case {name!r} (it has {sorted(runs)})")
        for _ in range(int(count or 1)):
            runs[name]()

    serve(run, ready={
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        # 0 means TF's default: a pool as large as the number of cores.
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "fingerprints": fingerprints,
        "cases": sorted(runs),
    })
    save_results(runs, crop_inputs, args.outputs)
    print(json.dumps({"saved": str(args.outputs)}), flush=True)


if __name__ == "__main__":
    main()
