"""Command-line plumbing shared by the scripts (demo.py, realtime_demo.py, eval.py, train.py).

    @reports_errors
    def main(argv=None):
        parser = argparse.ArgumentParser(...)
        add_model_arguments(parser)                # --weights, --config, --device
        args = parser.parse_args(argv)
        device = resolve_device(args.device)
        config = build_config(args.config, args.weights)
        model = load_model(config, args.weights, device)
        ...
        return 0

Errors meant for the user (a missing file, no CUDA, offline without --weights, weights that do
not fit the config) are raised as CliError or as the library's own error types, and
`reports_errors` prints them as one line `error: ...` instead of a traceback.
"""
import argparse
import errno
import functools
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from mrcnn.atomic import remove_stale_temporaries
from mrcnn.config import PRECISIONS, CocoConfig, Config, read_json_fields
from mrcnn.images import DEFAULT_MAX_PIXELS
from mrcnn.weights import (CHECKPOINT_VERSION, DownloadError, MaskIoUHeadNotInFileWarning,
                           WeightsError, cache_dir, cached_converted_weights, checkpoint_config,
                           coco_weights_path, describe_weights, is_hdf5, load_weights,
                           save_weights)

INIT_SEED = 0
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
# Mixed into the key of the converted COCO weights: a new checkpoint format converts again.
CONVERTED_TAG = f"mrcnn-checkpoint-v{CHECKPOINT_VERSION}"

WEIGHTS_HELP = (
    "model weights: a Matterport Keras .h5 or an mrcnn .pth checkpoint. Default: Matterport's "
    "COCO weights (ResNet-101, 80 classes), downloaded once from the Mask_RCNN v2.0 release into "
    "the cache ($MRCNN_CACHE, else $XDG_CACHE_HOME/mrcnn, else ~/.cache/mrcnn) and converted to "
    ".pth once. Offline, download mask_rcnn_coco.h5 elsewhere and pass it here")
CONFIG_HELP = (
    "JSON object of Config fields (any subset; the others keep Matterport's Config defaults, "
    "BACKBONE and NUM_CLASSES those a Keras .h5 given as --weights was made for; CLASS_NAMES "
    "names the classes). Default: the config saved in a .pth checkpoint given as --weights; for "
    "a Keras .h5 its BACKBONE and NUM_CLASSES (with COCO's class names for 81 classes); else "
    "the COCO config")
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available, else cpu)"
PRECISION_HELP = (
    "arithmetic of the forward pass: exact (float32 with TF32 off: Matterport's numbers), tf32 "
    "(TF32 convolutions and matmuls on recent GPUs; the same as exact on a CPU) or bf16 "
    "(bfloat16 network layers: fastest on GPUs and on CPUs with AVX512-BF16/AMX, detections "
    "close to exact's but not equal)")


class CliError(Exception):
    """An error with a message for the user; scripts print it without a traceback."""


# OSError: a file that is missing, unreadable, a directory, on a full disk...; its message names
# the file (error_message).
USER_ERRORS = (CliError, DownloadError, WeightsError, OSError)


def reports_errors(main):
    """Decorates a script's `main(argv) -> exit status`.

    Errors meant for the user (USER_ERRORS) are printed as one line `error: ...` on stderr and
    give status 1; Ctrl-C gives status 130 after the script's own clean-up has run. Anything else
    is a bug and keeps its traceback.
    """
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except USER_ERRORS as error:
            print(f"error: {error_message(error)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapper


def error_message(error):
    """One readable line for an exception: OSError's '[Errno 2] ...' becomes 'message: path',
    and a KeyError gives its message, not the message's repr."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


def add_max_pixels_argument(parser):
    """Adds --max-pixels N (the pixel budget of image files; 0: no budget) to an ArgumentParser;
    args.max_pixels is then an int, or None for no budget."""
    parser.add_argument(
        "--max-pixels", type=_pixel_budget, default=DEFAULT_MAX_PIXELS, metavar="N",
        help=f"skip images of more than N pixels (height x width), told from the file's header "
             f"before decoding, against decompression bombs (default: {DEFAULT_MAX_PIXELS:,} "
             "= 2^27, e.g. 16384x8192; 0: no limit but OpenCV's own, 2^30)")
    return parser


def add_dataset_check_arguments(parser):
    """Adds how a COCO dataset is checked: --strict, --allow-external-images and --max-pixels.
    dataset_options(args) gives them as CocoDataset keyword arguments."""
    parser.add_argument(
        "--strict", action="store_true",
        help="refuse an annotation file with boxes or polygons past their image or unusable "
             "annotations (unreadable, degenerate, empty), instead of clipping and skipping "
             "them with a warning that counts them")
    parser.add_argument(
        "--allow-external-images", action="store_true",
        help="let image file_names of the annotation file be absolute or lead out of the image "
             "folder with '..' (refused by default)")
    add_max_pixels_argument(parser)
    return parser


def dataset_options(args):
    """The CocoDataset keyword arguments of add_dataset_check_arguments' options."""
    return {"strict": args.strict, "max_pixels": args.max_pixels,
            "allow_external_paths": args.allow_external_images}


def _pixel_budget(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a pixel count >= 0, got {text!r}")
    return value or None


def add_model_arguments(parser):
    """Adds --weights, --config and --device (with the help texts above) to an ArgumentParser."""
    parser.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    parser.add_argument("--config", metavar="C", help=CONFIG_HELP)
    parser.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    return parser


def add_precision_argument(parser, default_help="the config's PRECISION, exact unless set"):
    """Adds --precision (mrcnn.precision) to an ArgumentParser; None when not given."""
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"{PRECISION_HELP}. Default: {default_help}")
    return parser


def resolve_device(name=None):
    """The torch.device for --device (None: cuda when available, else cpu).

    Raises CliError for a malformed name, or for CUDA when no CUDA device is usable.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(name):
        raise CliError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = (f"built with CUDA {torch.version.cuda}, but no CUDA device is visible"
                     if torch.version.cuda else "built without CUDA")
            raise CliError(f"--device {name} was asked for but CUDA is not available (torch "
                           f"{torch.__version__} is {build}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CliError(f"--device {name}: there are only {count} CUDA device(s), "
                           f"cuda:0 to cuda:{count - 1}")
    return device


def join_processes(device_name=None):
    """This process's device; under torchrun (WORLD_SIZE set) it also joins the process group:
    one GPU per process on CUDA (LOCAL_RANK) with NCCL, gloo on the CPU."""
    device = resolve_device(device_name)
    if "WORLD_SIZE" not in os.environ:
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise CliError(f"process {local_rank} of this machine has no GPU: torch sees "
                           f"{torch.cuda.device_count()}; start at most that many processes")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         init_method="env://")
    return device


def build_config(config_path=None, weights=None, defaults=None, **overrides):
    """The model's Config, then `overrides` (Config fields) applied.

    - config_path given: its JSON fields over Matterport's Config defaults (Config.from_json);
      BACKBONE and NUM_CLASSES, where the file does not set them, come from a Keras .h5 given as
      `weights` (what its weights were made for, as the converter reads it);
    - else, weights an mrcnn .pth checkpoint: the config saved in it;
    - else, a Keras .h5: its BACKBONE and NUM_CLASSES, over CocoConfig for COCO's 81 classes and
      over Config otherwise;
    - else (Matterport's COCO weights): CocoConfig.
    `defaults` ({field: value}, e.g. a dataset's NUM_CLASSES and CLASS_NAMES) fill the fields
    that none of these set; CLASS_NAMES only when it has NUM_CLASSES names.

    Raises CliError for a bad config file or values, FileNotFoundError for missing weights, and
    WeightsError for a weights file that is neither a Keras .h5 nor an mrcnn checkpoint.
    """
    try:
        if config_path is None and weights is not None and not is_hdf5(_existing(weights)):
            return checkpoint_config(weights).update(**overrides)
        values = {} if config_path is None else read_json_fields(config_path)
        # The weights file is read only for what the config file does not say.
        needs_file = weights is not None and not {"BACKBONE", "NUM_CLASSES"} <= set(values)
        from_weights = _keras_fields(_existing(weights)) if needs_file else {}
        if config_path is not None:
            base = Config
        else:
            base = CocoConfig if from_weights.get("NUM_CLASSES", 81) == 81 else Config
        values = dict(from_weights, **values)
        values.update({field: value for field, value in _fitting(defaults or {}, values, base)
                       .items() if field not in values})
        if config_path is not None:
            return Config.from_json(config_path, defaults=values, **overrides)
        return base.from_dict(values, **overrides)
    except (KeyError, ValueError) as error:
        if isinstance(error, WeightsError):
            raise
        raise CliError(error.args[0] if error.args else str(error)) from None


def _keras_fields(path):
    """{BACKBONE, NUM_CLASSES} a Keras .h5 was made for, where it tells; {} for other files."""
    if not is_hdf5(path):
        return {}
    return {field: value for field, value in describe_weights(path).items() if value is not None}


def _fitting(defaults, values, base):
    """`defaults` without a CLASS_NAMES whose length is not the NUM_CLASSES of the config."""
    num_classes = values.get("NUM_CLASSES", defaults.get("NUM_CLASSES", base.NUM_CLASSES))
    names = defaults.get("CLASS_NAMES")
    if names is not None and len(names) != num_classes:
        return {field: value for field, value in defaults.items() if field != "CLASS_NAMES"}
    return defaults


def load_model(config, weights=None, device="cpu", progress=True):
    """MaskScoringRCNN(config) in eval mode on `device`, with its weights loaded.

    The model is built under torch seed INIT_SEED, so that the layers a weights file lacks get the
    same initialisation in every run.

    Args:
        config: the model's Config (see build_config).
        weights: a Keras .h5 or an mrcnn .pth; None: Matterport's COCO weights, downloaded and
            converted once (see coco_checkpoint).
        device: torch.device or its name.
        progress: progress bars and notes on stderr while weights are downloaded or read.
    Raises:
        CliError (compiled ops missing), FileNotFoundError, DownloadError (offline: the message
        says how to pass --weights), WeightsError (the weights do not fit the config).
    """
    path = coco_checkpoint(progress) if weights is None else _existing(weights)
    try:
        from mrcnn.detector import MaskScoringRCNN
    except ImportError as error:
        raise CliError(str(error)) from None
    # Seeded so that what a weights file lacks (the MaskIoU head of Matterport's .h5 files) is
    # initialised the same in every run, without touching the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = MaskScoringRCNN(config)
    with warnings.catch_warnings():
        # Said once below, in words, instead of as a warning with a source line.
        warnings.simplefilter("ignore", MaskIoUHeadNotInFileWarning)
        try:
            load_weights(model, path, progress=progress and is_hdf5(path))
        except WeightsError as error:
            hint = "" if weights is None else " (pass --config with the model's settings)"
            raise WeightsError(f"{error}{hint}") from None
    if progress and not model.maskiou_head.trained:
        print("note: these weights have no trained MaskIoU head (Matterport's files have none), "
              "so mask scores mean nothing until it is trained (train.py --layers maskiou); "
              "they are not drawn", file=sys.stderr)
    return model.to(device).eval()


def coco_checkpoint(progress=True):
    """Path of Matterport's COCO weights as an mrcnn .pth, downloaded and converted only once.

    Raises DownloadError when the .h5 is not cached and cannot be downloaded (offline); its
    message says to pass --weights.
    """
    from mrcnn.detector import MaskScoringRCNN

    def convert(h5_path, out_path):
        if progress:
            print(f"Converting {h5_path} to an mrcnn checkpoint (once) in {cache_dir()}",
                  file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MaskIoUHeadNotInFileWarning)
            model = MaskScoringRCNN.from_weights(h5_path, progress=progress)
        save_weights(model, model.config, out_path)

    return cached_converted_weights(coco_weights_path(progress), convert, tag=CONVERTED_TAG)


def _existing(path):
    path = Path(path).expanduser()
    if path.is_dir():
        raise CliError(f"--weights {path} is a directory, not a weights file")
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "weights file not found", str(path))
    return path


def make_out_dir(out):
    """Path(out), created with its parents, without the temporary files that writers killed
    there left (mrcnn.atomic); CliError when that is impossible."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"cannot create the output folder {out_dir}: "
                       f"{error_message(error)}") from None
    if not os.access(out_dir, os.W_OK):
        raise CliError(f"--out {out_dir} is not writable")
    remove_stale_temporaries(out_dir)
    return out_dir


def check_no_overwrite(out_dir, names, inputs):
    """Raises CliError when a file `names` (file names) in out_dir would replace one of the
    `inputs` (paths), links followed."""
    inputs = {os.path.realpath(path): path for path in inputs if path is not None}
    for name in names:
        clash = inputs.get(os.path.realpath(Path(out_dir) / name))
        if clash is not None:
            raise CliError(f"--out {out_dir} would overwrite the input {clash}; choose another "
                           "output folder")


def drawable(result, model):
    """The result to draw: without mask scores when the model's MaskIoU head is untrained."""
    if model.maskiou_head.trained:
        return result
    return {name: value for name, value in result.items() if name != "mask_scores"}
