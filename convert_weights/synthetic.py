"""Deterministic synthetic Mask R-CNN weights in Matterport's Keras HDF5 layout.

The file has the layout `keras_model.save_weights()` gives Matterport's inference model, read from
a manifest (convert_weights/manifests/mrcnn_<backbone>_nc<N>.json): root attributes
`layer_names`, `backend`, `keras_version`; one group per layer (created in sorted name order)
with a `weight_names` attribute and one float32 dataset per weight at `<layer>/<weight>`; the
manifest's extra groups (tf_keras' empty `top_level_model_weights`). Matterport's
`MaskRCNN.load_weights(path, by_name=True)` and `python -m convert_weights` read it.

Values depend only on (seed, layer name, weight name): every dataset draws from its own stream
`Generator(PCG64(SeedSequence([seed, crc32(layer), crc32(weight)])))` in float64, stored as
float32. Kernels are He-normal (std = gain * sqrt(2 / fan_in)) with their mean over the fan-in
axes subtracted per output unit: the inputs of most layers are ReLU outputs (all >= 0), and an
uncentred kernel would give each unit a large constant offset (one class winning every ROI, masks
all on or all off). The gains keep activations of order 1 through up to 33 residual blocks and
make the heads decisive. These are the values of the Keras reference cases in
tests/data/reference (the tests check them against recorded checksums).
"""
import argparse
import json
import math
import re
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from mrcnn.atomic import atomic_path

MANIFEST_DIR = Path(__file__).resolve().with_name("manifests")
MANIFEST_FORMAT = "mrcnn-keras2-hdf5-weights-manifest/1"

# Kernel layouts in the file -> the axes that feed one output unit (fan-in).
FAN_IN_AXES = {
    "conv_kernel": (0, 1, 2),          # Conv2D (kh, kw, in, out)
    "conv_transpose_kernel": (3,),     # Conv2DTranspose (kh, kw, out, in); kernel == stride
    "dense_kernel": (0,),              # Dense (in, out)
}
KERNEL_RANKS = {"conv_kernel": 4, "conv_transpose_kernel": 4, "dense_kernel": 2}

# (full-match pattern on the layer owning the kernel, gain); the first match wins, else 1.
KERNEL_GAINS = (
    (r"conv1", 1 / 64),                # the input is pixels minus MEAN_PIXEL, std ~60
    (r"res\d+[a-z]+_branch2c", 0.35),  # last conv of each residual branch
    (r"res\d+a_branch1", 0.5),         # projection shortcuts
    (r"fpn_c\dp\d", 0.5),              # FPN lateral 1x1 convs
    (r"mrcnn_class_logits", 2.5),      # a peaky class softmax
    (r"mrcnn_mask", 4.0),              # soft masks well away from 0.5
)

UNIFORM_RANGES = {
    "bias": (-0.05, 0.05),
    "bn_gamma": (0.5, 1.5),
    "bn_beta": (-0.2, 0.2),
    "bn_moving_mean": (-0.2, 0.2),
    "bn_moving_variance": (0.5, 1.5),
}
BIAS_RANGES = {"mrcnn_class_logits": (-1.0, 1.0)}  # class logits spread over classes


class ManifestError(ValueError):
    """A manifest that cannot be found or does not describe a weights layout."""


def manifest_names():
    """The manifests shipped with the package, e.g. ['mrcnn_resnet101_nc4', ...]."""
    return sorted(path.stem for path in MANIFEST_DIR.glob("*.json"))


def load_manifest(name_or_path):
    """The manifest dict from a JSON file path or a shipped name ('mrcnn_resnet50_nc4' or
    'resnet50_nc4'); raises ManifestError naming the choices when neither exists."""
    path = Path(name_or_path)
    if not path.is_file():
        stem = str(name_or_path)
        stem = stem if stem.startswith("mrcnn_") else f"mrcnn_{stem}"
        path = MANIFEST_DIR / f"{stem}.json"
        if not path.is_file():
            raise ManifestError(f"no manifest file or shipped manifest named {name_or_path!r}; "
                                f"shipped: {', '.join(manifest_names())}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not a readable JSON manifest ({error})") from None
    try:
        check_manifest(manifest)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from None
    return manifest


def check_manifest(manifest):
    """Raises ManifestError unless `manifest` describes a complete, consistent layout."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"not a weights manifest (expected format {MANIFEST_FORMAT!r})")
    try:
        layer_names = manifest["root_attrs"]["layer_names"]
        names = [group["name"] for group in manifest["groups"]]
        if names != layer_names or len(set(names)) != len(names):
            raise ManifestError("the groups do not follow root_attrs.layer_names one to one")
        for group in manifest["groups"]:
            _check_group(group)
    except (KeyError, TypeError) as error:
        raise ManifestError(f"malformed manifest ({type(error).__name__}: {error})") from None


def _check_group(group):
    if [dataset["name"] for dataset in group["datasets"]] != group["weight_names"]:
        raise ManifestError(f"layer {group['name']}: datasets do not follow weight_names")
    for dataset in group["datasets"]:
        where = f"{group['name']}/{dataset['name']}"
        if dataset["path"] != where:
            raise ManifestError(f"{where}: path {dataset['path']!r} is not <layer>/<weight>")
        if dataset["kind"] not in FAN_IN_AXES and dataset["kind"] not in UNIFORM_RANGES:
            raise ManifestError(f"{where}: unknown kind {dataset['kind']!r}")
        if dataset.get("dtype", "float32") != "float32":
            raise ManifestError(f"{where}: dtype {dataset['dtype']!r}, expected float32")
        shape = dataset["shape"]
        if not all(isinstance(size, int) and size > 0 for size in shape):
            raise ManifestError(f"{where}: bad shape {shape!r}")
        if len(shape) != KERNEL_RANKS.get(dataset["kind"], len(shape)):
            raise ManifestError(f"{where}: a {dataset['kind']} has {KERNEL_RANKS[dataset['kind']]} "
                                f"axes, not {len(shape)}")


def dataset_values(seed, layer_name, dataset):
    """The float32 values of one manifest dataset (shape dataset['shape']) for `seed`."""
    weight_name, kind, shape = dataset["name"], dataset["kind"], tuple(dataset["shape"])
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [seed, zlib.crc32(layer_name.encode()), zlib.crc32(weight_name.encode())])))
    owner = weight_name.split("/")[0]  # the inner layer for weights of a nested model (rpn_model)
    if kind in FAN_IN_AXES:
        axes = FAN_IN_AXES[kind]
        std = _kernel_gain(owner) * np.sqrt(2.0 / math.prod(shape[axis] for axis in axes))
        values = rng.standard_normal(shape) * std
        values = values - values.mean(axis=axes, keepdims=True)
    else:
        values = rng.uniform(*_uniform_range(kind, owner), size=shape)
    return values.astype(np.float32)


def _uniform_range(kind, owner):
    return BIAS_RANGES.get(owner, UNIFORM_RANGES[kind]) if kind == "bias" else UNIFORM_RANGES[kind]


def _kernel_gain(owner):
    return next((gain for pattern, gain in KERNEL_GAINS if re.fullmatch(pattern, owner)), 1.0)


def weight_values(manifest, seed):
    """Yields (dataset path, float32 values) for every weight of `manifest`, in manifest order."""
    for group in manifest["groups"]:
        for dataset in group["datasets"]:
            yield dataset["path"], dataset_values(seed, group["name"], dataset)


def write_synthetic_weights(manifest, seed, path, progress=False):
    """Writes the weights of `manifest` (a dict, a path or a shipped name) for `seed` to `path`
    atomically (a unique temporary file beside it, then a rename), so concurrent writers of the
    same file never see each other's partial output. Returns the manifest dict.

    The HDF5 calls follow Keras' save_weights, in its order: with the same HDF5 library the file
    has the same bytes as the one the Keras reference case was run with (MD5 in its README)."""
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    else:
        check_manifest(manifest)
    seed = _check_seed(seed)
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        root = manifest["root_attrs"]
        f.attrs["layer_names"] = [name.encode() for name in root["layer_names"]]
        f.attrs["backend"] = root["backend"].encode()
        f.attrs["keras_version"] = root["keras_version"].encode()
        layers = sorted(manifest["groups"], key=lambda group: group["name"])
        for layer in tqdm(layers, desc="writing weights", unit="layer", disable=not progress):
            group = f.create_group(layer["name"])
            group.attrs["weight_names"] = [name.encode() for name in layer["weight_names"]]
            for dataset in layer["datasets"]:
                group.create_dataset(dataset["name"], data=dataset_values(seed, layer["name"],
                                                                          dataset))
        for name in manifest.get("hdf5_conventions", {}).get("extra_groups", []):
            f.create_group(name).attrs["weight_names"] = []
    return manifest


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
    return int(seed)


DESCRIPTION = __doc__.split("\n\n", 1)[1] + """
MANIFEST is a shipped name (mrcnn_resnet50_nc4, or resnet50_nc4 for short) or the path of a
manifest JSON file. OUT.h5 is written atomically: it appears complete or not at all."""

EPILOG = """\
examples:
  python -m convert_weights.synthetic resnet50_nc4 1 weights.h5      # the public reference case
  python -m convert_weights.synthetic mrcnn_resnet101_nc81 1 coco_shaped.h5
  python -m convert_weights weights.h5 weights.pth                   # then convert it"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m convert_weights.synthetic",
        description="Writes deterministic synthetic Mask R-CNN weights in Matterport's Keras "
                    "HDF5 layout.\n\n" + DESCRIPTION,
        epilog=EPILOG + "\n\nshipped manifests: " + ", ".join(manifest_names()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", metavar="MANIFEST", help="shipped manifest name or JSON path")
    parser.add_argument("seed", metavar="SEED", type=_seed_argument,
                        help="non-negative integer; the public reference case uses 1")
    parser.add_argument("output", metavar="OUT.h5", help="weights file to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _seed_argument(text):
    try:
        return _check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        manifest = write_synthetic_weights(args.manifest, args.seed, args.output,
                                           progress=not args.no_progress)
    except (ManifestError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    datasets = sum(len(group["datasets"]) for group in manifest["groups"])
    parameters = sum(math.prod(dataset["shape"]) for group in manifest["groups"]
                     for dataset in group["datasets"])
    print(f"wrote {args.output}: {len(manifest['groups'])} layers, {datasets} weight datasets, "
          f"{parameters:,} parameters (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
