"""Time Matterport's Keras/TensorFlow `MaskRCNN.detect()` per image: the peer of inference.py.

Run it with a TensorFlow 2 interpreter that has tf_keras, h5py and scikit-image (no torch needed):

    /work/tfvenv/bin/python benchmarks/matterport_tf.py --matterport ~/Mask_RCNN \\
        --backbone resnet101 --size 1024 --weights W.h5 [--image IMG.png] [--repeat 5]

This file holds none of Matterport's code. --matterport points at the user's copy of Matterport's
`mrcnn` package (commit 3deaec5, March 2019, written for TF 1.x and Keras 2.2). Its model.py,
utils.py and config.py are copied to a temporary directory and COMPAT_EDITS below are applied to
the copy: the compatibility edits of tests/data/reference/README.md, which leave the graph and its
arithmetic unchanged. An edit that does not find exactly the text it expects stops the run, so a
different Matterport version is reported instead of silently benchmarked.

The model is built in inference mode with the configuration that benchmarks/inference.py gives
ours (CocoConfig: 81 classes, one image per call, square resize to SIZE x SIZE, detection
threshold 0.7), the weights are loaded by layer name (every layer with weights must be in the
file), and `model.detect([image])` is timed: one warm-up call (it builds the tf.function), then the
median of --repeat calls (with --serve, of the calls inference.py requests one at a time,
alternating with ours). TensorFlow runs with its defaults: oneDNN on unless the environment says
TF_ENABLE_ONEDNN_OPTS=0, default thread pools. The last line on stdout is one JSON object:
ms_per_image, ms_runs, warmup_ms, detections, rois, class_ids, scores, peak_rss_mb,
image_sha256 (of the RGB pixels fed), and the TensorFlow set-up.
"""
import argparse
import hashlib
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import types
from collections import namedtuple
from pathlib import Path

REFERENCE_IMAGE = (Path(__file__).resolve().parents[1] / "tests" / "data" / "reference"
                   / "public_r50_256" / "input_0_astronaut.png")
MATTERPORT_FILES = ("__init__.py", "config.py", "model.py", "utils.py")

Edit = namedtuple("Edit", "file pattern replacement count reason")

# Regular expressions (re.MULTILINE) and the number of matches each must find in commit 3deaec5.
COMPAT_EDITS = [
    Edit("model.py", r"^import keras$", "import tf_keras as keras", 1,
         "Keras 2 API from tf_keras (TF 2.16+ ships Keras 3)"),
    Edit("model.py", r"^import keras\.(backend|layers|models) as (\w+)$",
         r"import tf_keras.\1 as \2", 3, "Keras 2 API from tf_keras"),
    Edit("model.py", r"^import keras\.engine as KE$", "import tf_keras.layers as KE", 1,
         "KE is only used for KE.Layer; tf_keras has no public `engine` module"),
    Edit("model.py", r"^( +)from keras\.engine import saving$",
         r"\1import matterport_hdf5_loader as saving", 1,
         "the HDF5 loader at its current module path (see hdf5_loader_module)"),
    Edit("model.py", r"\btf\.log\(", "tf.math.log(", 2, "tf.log was renamed"),
    Edit("utils.py", r"\btf\.log\(", "tf.math.log(", 2, "tf.log was renamed"),
    Edit("model.py", r"\btf\.to_float\((tf\.gather\(class_ids, keep\))\)",
         r"tf.cast(\1, tf.float32)", 1, "tf.to_float was removed"),
    Edit("model.py", r"\btf\.sets\.set_intersection\(", "tf.sets.intersection(", 2,
         "tf.sets.set_intersection was renamed"),
    Edit("model.py", r"\btf\.sparse_tensor_to_dense\(", "tf.sparse.to_dense(", 2,
         "tf.sparse_tensor_to_dense was renamed"),
    Edit("model.py", r"\bnp\.bool\b", "bool", 2, "numpy 1.24 removed the np.bool alias"),
    Edit("utils.py", r"\bnp\.bool\b", "bool", 4, "numpy 1.24 removed the np.bool alias"),
    Edit("model.py",
         r"^( +)(proposals = utils\.batch_slice\(\[boxes, scores\], nms,\n"
         r"\s+self\.config\.IMAGES_PER_GPU\))$",
         r"\1\2\n\1proposals.set_shape((None, self.proposal_count, 4))", 1,
         "Keras 2.0.8 took the proposals' static shape (batch, POST_NMS_ROIS_INFERENCE, 4) from "
         "compute_output_shape; tf_keras takes it from call(), and the classifier's Reshape "
         "needs it"),
]


def hdf5_loader_module():
    """Keras 2.2's `keras.engine.saving` loaders, which take a list of layers, on tf_keras's.

    tf_keras's legacy loaders take a model: they read its `layers`, its own top-level weights
    (Matterport's model has none; its files store an empty group for them) and finalize the
    layers they loaded.
    """
    from tf_keras.src.saving.legacy import hdf5_format

    def as_model(layers):
        layers = list(layers)
        return types.SimpleNamespace(layers=layers, _trainable_weights=[],
                                     _non_trainable_weights=[],
                                     _flatten_layers=lambda: iter(layers))

    module = types.ModuleType("matterport_hdf5_loader")
    module.load_weights_from_hdf5_group_by_name = (
        lambda f, layers: hdf5_format.load_weights_from_hdf5_group_by_name(f, as_model(layers)))
    module.load_weights_from_hdf5_group = (
        lambda f, layers: hdf5_format.load_weights_from_hdf5_group(f, as_model(layers)))
    return module


def find_package(path):
    """The directory holding Matterport's model.py, utils.py and config.py."""
    path = Path(path).expanduser()
    for candidate in (path / "mrcnn", path):
        if all((candidate / name).is_file() for name in MATTERPORT_FILES[1:]):
            return candidate
    sys.exit(f"error: --matterport {path}: no Matterport mrcnn package there (expected "
             f"model.py, utils.py and config.py in it or in its mrcnn/ folder)")


def patched_copy(package, destination):
    """Copies Matterport's package into destination/mrcnn with COMPAT_EDITS applied."""
    target = Path(destination) / "mrcnn"
    target.mkdir(parents=True)
    texts = {}
    for name in MATTERPORT_FILES:
        source = package / name
        texts[name] = source.read_text(encoding="utf-8") if source.exists() else ""
    for edit in COMPAT_EDITS:
        texts[edit.file], found = re.subn(edit.pattern, edit.replacement, texts[edit.file],
                                          flags=re.MULTILINE)
        if found != edit.count:
            sys.exit(f"error: {package / edit.file} is not the Matterport version this script "
                     f"patches (commit 3deaec5): the edit '{edit.reason}' expects {edit.count} "
                     f"match(es) of /{edit.pattern}/, found {found}")
    for name, text in texts.items():
        (target / name).write_text(text, encoding="utf-8")
    return target


def load_rgb_image(path):
    """An image file as uint8 RGB, as Matterport's Dataset.load_image reads it."""
    import numpy as np
    import skimage.color
    import skimage.io

    try:
        image = skimage.io.imread(path)
    except (OSError, ValueError) as error:
        sys.exit(f"error: cannot read the image {path}: {error}")
    if image.dtype != np.uint8:
        sys.exit(f"error: {path}: expected 8-bit samples, got {image.dtype}")
    if image.ndim == 2:
        image = skimage.color.gray2rgb(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        sys.exit(f"error: {path}: expected an RGB(A) or grayscale image, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def default_image(size):
    """The reference astronaut photo resized to size x size (bilinear, skimage)."""
    import numpy as np
    import skimage.transform

    if not REFERENCE_IMAGE.exists():
        sys.exit(f"error: {REFERENCE_IMAGE} not found; pass --image")
    image = skimage.transform.resize(load_rgb_image(REFERENCE_IMAGE), (size, size), order=1,
                                     preserve_range=True, anti_aliasing=False)
    return np.round(image).astype(np.uint8)


def timed_runs(detect, serve, repeat):
    """Times detect(): one warm-up call, then `repeat` calls or, with `serve`, one call per line
    read from stdin until it closes, each answered on stdout with {"ms": ...}; inference.py
    drives both frameworks this way to interleave their runs. Returns (warm-up seconds, list of
    seconds, the last result)."""
    start = time.perf_counter()
    result = detect()
    warmup = time.perf_counter() - start
    if serve:
        print(json.dumps({"ready": True}), flush=True)
    times = []
    for _ in iter(sys.stdin.readline, "") if serve else range(repeat):
        start = time.perf_counter()
        result = detect()
        times.append(time.perf_counter() - start)
        if serve:
            print(json.dumps({"ms": times[-1] * 1000}), flush=True)
    if not times:
        sys.exit("error: no timed run was requested")
    return warmup, times, result


def image_sha256(image):
    """Identifies the exact pixels fed to detect(); inference.py uses it for its own run too."""
    return hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest()


def bench_config(config_module, backbone, size):
    """Matterport's Config with the values benchmarks/inference.py gives ours."""

    class BenchConfig(config_module.Config):
        NAME = "coco"
        NUM_CLASSES = 81
        BACKBONE = backbone
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        IMAGE_RESIZE_MODE = "square"
        IMAGE_MIN_DIM = size
        IMAGE_MAX_DIM = size
        DETECTION_MIN_CONFIDENCE = 0.7

    return BenchConfig()


def check_weights_cover(keras_model, path):
    """Loading by name skips layers missing from the file; here that is an error."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f \
                else f
            if "layer_names" not in root.attrs:
                sys.exit(f"error: {path} is not a Keras weights file (no layer_names)")
            in_file = {name.decode() if isinstance(name, bytes) else str(name)
                       for name in root.attrs["layer_names"]}
            in_file = {name for name in in_file if len(root[name].attrs["weight_names"])}
    except OSError as error:
        sys.exit(f"error: cannot read the weights {path}: {error}")
    missing = sorted(layer.name for layer in keras_model.layers
                     if layer.weights and layer.name not in in_file)
    if missing:
        sys.exit(f"error: {path} has no weights for {len(missing)} layer(s) of this model "
                 f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); is it for "
                 f"another backbone?")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matterport", required=True,
                        help="Matterport's Mask_RCNN checkout (or its mrcnn/ package)")
    parser.add_argument("--backbone", required=True, choices=["resnet50", "resnet101"])
    parser.add_argument("--size", required=True, type=int,
                        help="molded image size (square mode, a multiple of 64)")
    parser.add_argument("--weights", required=True,
                        help="Matterport .h5 weights with 81 classes for this backbone")
    parser.add_argument("--image", help="uint8 RGB image file to detect on (default: the "
                        "reference astronaut photo resized to SIZE x SIZE with skimage)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--serve", action="store_true",
                        help="instead of --repeat, time one call per line read from stdin, "
                        "answering each with a JSON line (used by benchmarks/inference.py)")
    args = parser.parse_args()
    if args.size <= 0 or args.size % 64:
        parser.error("--size must be a positive multiple of 64 (Matterport's requirement)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: no such file")
    package = find_package(args.matterport)
    image = load_rgb_image(args.image) if args.image else default_image(args.size)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # logging only; kernels are unaffected
    with tempfile.TemporaryDirectory(prefix="matterport_tf_") as workdir:
        patched_copy(package, workdir)
        sys.path.insert(0, workdir)
        sys.modules["matterport_hdf5_loader"] = hdf5_loader_module()
        import tensorflow as tf
        from mrcnn import config as mp_config
        from mrcnn import model as mp_model
        if not Path(mp_model.__file__).resolve().is_relative_to(Path(workdir).resolve()):
            sys.exit(f"error: imported mrcnn from {mp_model.__file__}, not the patched copy; "
                     f"remove other mrcnn packages from PYTHONPATH")

        config = bench_config(mp_config, args.backbone, args.size)
        model = mp_model.MaskRCNN(mode="inference", config=config, model_dir=workdir)
        check_weights_cover(model.keras_model, args.weights)
        try:
            model.load_weights(args.weights, by_name=True)
        except ValueError as error:
            sys.exit(f"error: {args.weights} does not fit Matterport's {args.backbone} model "
                     f"with 81 classes: {error}")

        warmup, times, (result,) = timed_runs(lambda: model.detect([image]), args.serve,
                                              args.repeat)

    print(json.dumps({
        "backbone": args.backbone, "size": args.size, "repeat": len(times),
        "ms_per_image": statistics.median(times) * 1000,
        "ms_runs": [t * 1000 for t in times], "warmup_ms": warmup * 1000,
        "detections": len(result["class_ids"]),
        "rois": result["rois"].tolist(), "class_ids": result["class_ids"].tolist(),
        "scores": result["scores"].tolist(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "image_sha256": image_sha256(image),
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
    }))


if __name__ == "__main__":
    main()
