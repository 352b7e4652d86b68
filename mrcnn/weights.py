"""Model weights: the checkpoint format, loading and saving, and the download cache.

Checkpoints (.pth) are torch.save'd dicts written atomically by `save_weights`:
    {"format": "mrcnn", "version": 1, "config": Config.to_dict(), "state_dict": {name: tensor}}

`load_weights(model, path)` takes such a checkpoint or a Matterport Keras .h5 (told apart by the
HDF5 signature, not the name). This module never reads HDF5 itself: the Keras reader is a plugin
that `convert_weights` registers under the package entry point group `mrcnn.weight_readers`
(name `keras_h5`), so the model's core depends on no converter. A reader module provides
`load(model, path, progress, layers=None, ignore=())` (fills the Keras layers `layers` of the
model, default all, strictly: each from the file, and every weight of the file used except
those of the `ignore` layers) and `describe(path)` ({"BACKBONE", "NUM_CLASSES"} the file was made
for, None where it does not say).

The model side of the contract: `model.config` is its Config, `model.keras_layers()` maps Keras
layer names to modules, and the MaskIoU head's parameters are named `maskiou_head.*`.

Downloaded and converted files live in `cache_dir()`:

- `$MRCNN_CACHE` when set (e.g. `MRCNN_CACHE=/data/mrcnn-cache`),
- else `$XDG_CACHE_HOME/mrcnn` when XDG_CACHE_HOME is an absolute path,
- else `~/.cache/mrcnn`.

A file enters the cache only whole: it is written under a temporary name in the same directory
and renamed once complete and checked, so an interrupted or failed download leaves nothing
behind (and what a killed process left is removed on the next use of the cache). A file with a
known SHA-256 is hashed once, after the download or the first time it is found without a record,
and the result recorded beside it in `<name>.verified` (size, modification time, SHA-256); a file
whose size or modification time no longer match its record is hashed again, and one whose
content is not the expected file is downloaded again. Offline, pass a file you downloaded
yourself (`--weights PATH` in the scripts).

Training runs (mrcnn.trainer) write into their run directory, per epoch N:

    epoch_NNNN.pth        a model checkpoint as above, plus "training": {"epoch", "global_step",
                          ...} (small, JSON-like), so that it is also weights for load_weights
    epoch_NNNN.state.pth  the rest of the training state that resume needs (optimiser,
                          schedule, gradient scaler, random generators):
                          {"format": "mrcnn-training-state", "version": 1, "epoch", "global_step",
                          ...}; kept for the newest checkpoint only

`save_epoch_checkpoint` writes the state file first and the model checkpoint second, each
atomically, so an epoch counts as complete (`latest_resumable`) only when both are there and
agree on epoch and step; a write cut short never leaves a pair that resume would pick.
`export_weights` turns any checkpoint into a weights-only file for inference.
"""
import hashlib
import http.client
import importlib.metadata
import json
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from mrcnn.atomic import atomic_path, atomic_write, remove_stale_temporaries
from mrcnn.config import Config

CHECKPOINT_FORMAT = "mrcnn"
CHECKPOINT_VERSION = 1
TRAINING_STATE_FORMAT = "mrcnn-training-state"
TRAINING_STATE_VERSION = 1
EPOCH_CHECKPOINT = re.compile(r"epoch_(\d{4,})\.pth")
VERIFIED_SUFFIX = ".verified"
MASKIOU_PREFIX = "maskiou_head."
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_SUFFIXES = (".h5", ".hdf5")
READER_GROUP = "mrcnn.weight_readers"
KERAS_READER = "keras_h5"
# Config fields that decide the shapes of the weights.
SHAPE_FIELDS = ("BACKBONE", "NUM_CLASSES", "IMAGE_CHANNEL_COUNT", "TOP_DOWN_PYRAMID_SIZE",
                "FPN_CLASSIF_FC_LAYERS_SIZE", "POOL_SIZE", "RPN_ANCHOR_RATIOS")
# Layers whose shapes depend on NUM_CLASSES: fine-tuning from weights of another class count
# re-initialises them.
CLASS_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask", "mrcnn_maskiou")
# Layers of Matterport's Keras model that hold no weights. Matterport's samples name some of them
# in load_weights(exclude=...) (e.g. "mrcnn_bbox"); excluding them changes nothing.
KERAS_LAYERS_WITHOUT_WEIGHTS = ("mrcnn_bbox", "mrcnn_class", "mrcnn_detection", "rpn_class",
                                "rpn_class_logits", "rpn_bbox", "ROI", "roi_align_classifier",
                                "roi_align_mask")
LIST_LIMIT = 12

COCO_WEIGHTS_URL = (
    "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5")
COCO_WEIGHTS_FILENAME = "mask_rcnn_coco.h5"
# Matterport publishes neither size nor checksum. The size is the Content-Length GitHub serves for
# this asset (seen in public download logs, and in h5py errors about truncated copies: "stored_eoa
# = 257557808"). The SHA-256 is the Git LFS object id of a copy of this file committed to
# github.com/marcusnk237/Mask-RCNN-GUI (weights/mask_rcnn_coco.h5, LFS size 257557808), whose
# README says it was downloaded from Matterport's releases. That is a third party's copy: it has
# not been checked against a fresh download here. If the release asset ever fails this check,
# the error says so and nothing is cached; compare with `sha256sum` before changing the value.
COCO_WEIGHTS_SIZE = 257_557_808
COCO_WEIGHTS_SHA256 = "ee7eeb918fe544c8bc1fd0f1f9588bf9f8e0e1055a4d12a98f83fa83c5f8b36d"

# Keras's ImageNet ResNet-50 without its classifier, the file Matterport's get_imagenet_weights
# downloads. The MD5 is the one Keras and Matterport check it against (keras get_file's md5_hash);
# the size is the Content-Length of the release asset that Keras's download logs print
# ("94658560/94653016").
IMAGENET_WEIGHTS_URL = ("https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
                        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_WEIGHTS_FILENAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_SIZE = 94_653_016
IMAGENET_WEIGHTS_MD5 = "a268eb855778b3df3c7506639542a6af"

# Seconds to wait for the connection and then for each read: an unreachable host fails fast.
DEFAULT_TIMEOUT = 10.0
CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed, or a cached file that is not the expected one."""


class WeightsError(ValueError):
    """A weights file that cannot be read, or whose weights do not fit the model."""


class MaskIoUHeadNotInFileWarning(UserWarning):
    """Loaded Keras weights leave the MaskIoU head at its initialisation."""


class PoolerMismatchWarning(UserWarning):
    """Loaded weights were trained with another Config.POOLER than the model pools with."""


def load_weights(model, path, progress=False, exclude=(), backbone_only=False,
                 allow_nonfinite=False):
    """Loads a Matterport Keras .h5 (converted on the fly) or an mrcnn .pth into `model`.

    An .h5 must fill every Keras layer of the model exactly; the MaskIoU head keeps its
    initialisation, which a MaskIoUHeadNotInFileWarning says. A .pth must come from
    save_weights for a config with the same weight shapes (SHAPE_FIELDS) and fills the whole
    model; a PoolerMismatchWarning says when it was trained with another POOLER. A weight
    holding NaN or infinite values is an error naming it, unless `allow_nonfinite`.
    `progress` shows a progress bar while an .h5 is read.

    exclude: layer names (model.named_layers(), Matterport's Keras names) that keep their
        current weights; the file's weights for them are ignored, so they may have another
        shape (the class layers, CLASS_LAYERS, of weights made for another class count). Every
        other layer loads as strictly as without `exclude`.
    backbone_only: the file holds the ResNet alone (Keras's ImageNet ResNet-50, see
        imagenet_weights_path): it fills the ResNet layers exactly and the FPN, RPN and heads
        keep their weights.

    Raises FileNotFoundError, ValueError for an `exclude` name that is no layer, or WeightsError
    saying what is wrong with the file; a file that does not fit leaves the model untouched.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    selected = _selected_layers(model, exclude, backbone_only)
    if is_keras_file(path):
        if selected is not None:
            selected = [name for name in selected if name in model.keras_layers()]
        keras_reader(path).load(model, path, progress=progress, layers=selected,
                                ignore=set(exclude), allow_nonfinite=allow_nonfinite)
        if not backbone_only and any(name.startswith(MASKIOU_PREFIX)
                                     for name, _ in model.named_parameters()):
            warnings.warn("the .h5 has no MaskIoU head; it keeps its initialisation",
                          MaskIoUHeadNotInFileWarning, stacklevel=2)
        return
    checkpoint = read_checkpoint(path)
    if selected is None:
        _check_config(checkpoint["config"], model.config, f"{path} was saved for")
        state = checkpoint["state_dict"]
        _check_state_dict(state, model.state_dict(), path)
    else:
        state = _state_of_layers(model, checkpoint["state_dict"], selected)
        _check_state_dict(state, _state_of_layers(model, model.state_dict(), selected), path)
    if not allow_nonfinite:
        for name, tensor in state.items():
            check_finite(tensor, f"{path}: weight {name}")
    model.load_state_dict(state, strict=selected is None)
    # Same shapes either way, but the features the heads learnt from differ.
    pooler = checkpoint["config"].get("POOLER", Config.POOLER)
    if pooler != model.config.POOLER:
        warnings.warn(f"{path} was trained with POOLER {pooler!r}; the model pools with "
                      f"{model.config.POOLER!r}, so its results differ from the trained model's",
                      PoolerMismatchWarning, stacklevel=2)


def check_finite(values, subject):
    """Raises WeightsError saying how many NaN and infinite values a floating-point array or
    tensor holds, if any; `subject` names it (file and weight)."""
    values = torch.as_tensor(values)
    if not values.is_floating_point():
        return
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        nan = int(torch.isnan(values).sum())
        infinite = values.numel() - int(finite.sum()) - nan
        raise WeightsError(f"{subject} holds {nan} NaN and {infinite} infinite values of "
                           f"{values.numel()}; the file is damaged or comes from a diverged "
                           "training (allow_nonfinite=True, or --allow-nonfinite of python -m "
                           "convert_weights, loads it anyway)")


def save_weights(model, config, path, training=None):
    """Writes the whole model and its config to an mrcnn checkpoint `path`, atomically.

    Either the complete file appears at `path` or, on any failure, `path` is left as it was.
    `config` must have the model's weight shapes (SHAPE_FIELDS). `training`, a small dict of
    plain values (epoch, step, settings of a training run), is stored under "training".
    """
    _check_config(config.to_dict(), model.config, "the config given to save_weights is for")
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    _write_checkpoint(path, config.to_dict(), state_dict, training)


def _write_checkpoint(path, config_dict, state_dict, training=None):
    checkpoint = {**checkpoint_header(), "config": config_dict, "state_dict": state_dict}
    if training is not None:
        checkpoint["training"] = training
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def checkpoint_header(format=CHECKPOINT_FORMAT):
    """The entries that identify an mrcnn file: {"format", "version"}."""
    version = TRAINING_STATE_VERSION if format == TRAINING_STATE_FORMAT else CHECKPOINT_VERSION
    return {"format": format, "version": version}


def read_checkpoint(path):
    """The dict saved by save_weights, checked for format and version; tensors on the CPU."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as error:  # torch.load raises many types for files that are not its own.
        raise WeightsError(f"{path} is neither a Keras .h5 file nor a PyTorch checkpoint "
                           f"({type(error).__name__}: {error})") from None
    if isinstance(checkpoint, dict) and checkpoint.get("format") == TRAINING_STATE_FORMAT:
        raise WeightsError(f"{path} is the training state of a run (optimiser and schedule, "
                           "for resuming), not model weights; use the epoch_NNNN.pth beside it")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is a PyTorch file but not an mrcnn checkpoint (no "
                           f"'format': {CHECKPOINT_FORMAT!r} entry); write checkpoints with "
                           "mrcnn.weights.save_weights")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise WeightsError(f"{path} is an mrcnn checkpoint of format version "
                           f"{checkpoint.get('version')!r}; this code reads version "
                           f"{CHECKPOINT_VERSION}")
    for key in ("config", "state_dict"):
        if not isinstance(checkpoint.get(key), dict):
            raise WeightsError(f"{path}: the checkpoint has no {key!r} dict; it is damaged")
    return checkpoint


def checkpoint_config(path):
    """The Config stored in an mrcnn checkpoint (to build the model it fits)."""
    return Config.from_dict(read_checkpoint(path)["config"])


def export_weights(source, dest):
    """Writes the weights and config of the checkpoint `source` (a training run's epoch_NNNN.pth
    or any mrcnn .pth) to `dest` as a weights-only checkpoint, atomically. Returns Path(dest)."""
    checkpoint = read_checkpoint(source)
    _write_checkpoint(dest, checkpoint["config"], checkpoint["state_dict"])
    return Path(dest)


# Training runs: a model checkpoint and the training state per epoch (see the module docstring).

def epoch_checkpoint_path(run_dir, epoch):
    return Path(run_dir) / f"epoch_{epoch:04d}.pth"


def training_state_path(run_dir, epoch):
    return Path(run_dir) / f"epoch_{epoch:04d}.state.pth"


def epoch_checkpoints(run_dir):
    """{epoch: path} of the model checkpoints epoch_NNNN.pth of a run directory, oldest first."""
    run_dir = Path(run_dir)
    found = {}
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = EPOCH_CHECKPOINT.fullmatch(path.name)
            if match:
                found[int(match[1])] = path
    return dict(sorted(found.items()))


def save_epoch_checkpoint(run_dir, model, config, training, state, keep_last=0):
    """Writes epoch training["epoch"] of a run: its training state, then its model checkpoint.

    training: small dict of plain values with at least "epoch" and "global_step", stored in the
        model checkpoint (see save_weights).
    state: what resuming needs beyond the weights (optimizer, scheduler, ... state dicts).
    keep_last: keep this many model checkpoints, the newest (0: all). The training state is
        kept for this newest checkpoint only.
    Returns the model checkpoint's path.
    """
    epoch = training["epoch"]
    state_file = training_state_path(run_dir, epoch)
    with atomic_write(state_file) as f:
        torch.save({**checkpoint_header(TRAINING_STATE_FORMAT), "epoch": epoch,
                    "global_step": training["global_step"], **state}, f)
    path = epoch_checkpoint_path(run_dir, epoch)
    save_weights(model, config, path, training)
    for old in Path(run_dir).glob("epoch_*.state.pth"):
        if old != state_file:
            old.unlink()
    if keep_last:
        for old in list(epoch_checkpoints(run_dir).values())[:-keep_last]:
            old.unlink()
    return path


def latest_resumable(run_dir):
    """(model checkpoint, training state) paths of the newest epoch of a run directory that has
    both, or None. Temporary files of interrupted writes never match."""
    for epoch, path in reversed(epoch_checkpoints(run_dir).items()):
        state_file = training_state_path(run_dir, epoch)
        if state_file.is_file():
            return path, state_file
    return None


def read_training_checkpoint(checkpoint_path, state_path):
    """(checkpoint, state): the model checkpoint (read_checkpoint, with its "training" dict) and
    the training state dict of one epoch, checked to belong together. Raises WeightsError."""
    checkpoint = read_checkpoint(checkpoint_path)
    training = checkpoint.get("training")
    if not isinstance(training, dict):
        raise WeightsError(f"{checkpoint_path} holds weights only, not a training run's "
                           "checkpoint")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for damaged files.
        raise WeightsError(f"{state_path} cannot be read ({type(error).__name__}: {error}); "
                           "it is damaged") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise WeightsError(f"{state_path} is not an mrcnn training state")
    if state.get("version") != TRAINING_STATE_VERSION:
        raise WeightsError(f"{state_path} is a training state of format version "
                           f"{state.get('version')!r}; this code reads version "
                           f"{TRAINING_STATE_VERSION}")
    pair = [(source.get("epoch"), source.get("global_step")) for source in (training, state)]
    if pair[0] != pair[1]:
        raise WeightsError(f"{state_path} (epoch, step {pair[1]}) does not belong to "
                           f"{checkpoint_path} (epoch, step {pair[0]})")
    return checkpoint, state


def describe_weights(path):
    """{"BACKBONE", "NUM_CLASSES"} a Keras .h5 or an mrcnn .pth was made for (None: unknown)."""
    if is_keras_file(path):
        return keras_reader(path).describe(path)
    config = read_checkpoint(path)["config"]
    return {field: config.get(field) for field in ("BACKBONE", "NUM_CLASSES")}


def load_pretrained(model, path, log=print):
    """Loads weights to fine-tune from: a Matterport .h5 or an mrcnn .pth.

    Weights of the same class count load strictly (load_weights). Weights of another class
    count load into everything but CLASS_LAYERS, which keep their fresh initialisation; `log`
    says so. Any other mismatch (backbone depth, head sizes) is an error.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    file_classes = describe_weights(path)["NUM_CLASSES"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if file_classes in (None, model.config.NUM_CLASSES):
            load_weights(model, path)
        else:
            load_weights(model, path, exclude=CLASS_LAYERS)
            log(f"{path} was trained for {file_classes} classes and the model has "
                f"{model.config.NUM_CLASSES}: {', '.join(CLASS_LAYERS)} keep their fresh "
                "initialisation")
    for warning in caught:
        log(f"note: {warning.message}")


def _selected_layers(model, exclude, backbone_only):
    """The names of the model's layers (named_layers()) that a load fills; None: all."""
    if not exclude and not backbone_only:
        return None
    if isinstance(exclude, str):
        raise TypeError(f"exclude must be a list of layer names, got the string {exclude!r}")
    layers = model.named_layers()
    unknown = [name for name in exclude
               if name not in layers and name not in KERAS_LAYERS_WITHOUT_WEIGHTS]
    if unknown:
        raise ValueError(f"exclude names no layer of the model: {unknown}. Layers have "
                         "Matterport's Keras names, e.g. the class layers "
                         f"{', '.join(CLASS_LAYERS)} (the last is the MaskIoU head's)")
    if backbone_only:
        layers = model.backbone.keras_layers()
    excluded = set(exclude)
    return [name for name in layers if name not in excluded]


def _state_of_layers(model, state, names):
    """The entries of a state dict that belong to the layers `names` (of named_layers()).

    An entry outside every layer (the MaskIoU head's `trained` flag) goes with its module's
    layers: it is kept only when all of them are among `names`, since a head with a fresh
    layer is not the trained head.
    """
    module_paths = {id(module): name for name, module in model.named_modules()}
    prefixes = {name: module_paths[id(module)] + "."
                for name, module in model.named_layers().items()}
    names = set(names)
    chosen = tuple(prefix for name, prefix in prefixes.items() if name in names)
    others = tuple(prefix for name, prefix in prefixes.items() if name not in names)

    def wanted(key):
        if key.startswith(chosen):
            return True
        if key.startswith(others):
            return False
        parent = key.rpartition(".")[0] + "."
        return not any(prefix.startswith(parent) for prefix in others)

    return {key: value for key, value in state.items() if wanted(key)}


def is_hdf5(path):
    """True when the file carries the HDF5 signature.

    HDF5 puts it at offset 0, or after a user block at 512, 1024, 2048, ... bytes.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def is_keras_file(path):
    """An HDF5 file, or a file named like one (whose damage the Keras reader then reports)."""
    return is_hdf5(path) or os.fspath(path).lower().endswith(HDF5_SUFFIXES)


def keras_reader(path):
    """The registered Keras .h5 reader module (see the module docstring)."""
    found = importlib.metadata.entry_points(group=READER_GROUP, name=KERAS_READER)
    if not found:
        raise WeightsError(f"{path} is a Keras .h5 file, and no reader for those is installed: "
                           "install this project (pip install -e .), which registers "
                           "convert_weights' reader")
    return next(iter(found)).load()


def mismatch_report(headline, problems, reasons=()):
    """`headline`, the likely `reasons`, then each non-empty {title: [item]} list, one per line."""
    lines = [headline] + [f"  {reason}" for reason in reasons]
    for title, items in problems.items():
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    {item}" for item in items[:LIST_LIMIT]]
            if len(items) > LIST_LIMIT:
                lines.append(f"    ... and {len(items) - LIST_LIMIT} more")
    return "\n".join(lines)


def _check_config(saved, config, subject):
    """Raises WeightsError when the `saved` config dict and `config` give different shapes."""
    differences = [f"{field} {saved.get(field)!r} (the model has {getattr(config, field)!r})"
                   for field in SHAPE_FIELDS
                   if json.dumps(saved.get(field)) != json.dumps(getattr(config, field))]
    if differences:
        raise WeightsError(f"{subject} another model: " + ", ".join(differences))


def _check_state_dict(saved, current, path):
    """Raises WeightsError unless `saved` has exactly the keys and shapes of `current`.

    Checked before loading, so that a checkpoint that does not fit leaves the model untouched
    (load_state_dict copies what fits before it reports the rest).
    """
    def shape(value):
        return tuple(getattr(value, "shape", ()))

    problems = {
        "shape mismatches": [f"{name}: checkpoint {shape(saved[name])}, model {shape(tensor)}"
                             for name, tensor in current.items()
                             if name in saved and shape(saved[name]) != shape(tensor)],
        "missing from the checkpoint": [name for name in current if name not in saved],
        "in the checkpoint but not in the model": [name for name in saved if name not in current],
    }
    if any(problems.values()):
        raise WeightsError(mismatch_report(f"{path}: the checkpoint does not fit the model.",
                                           problems))


def cache_dir():
    """The directory of downloaded and converted weights (see the module docstring)."""
    override = os.environ.get("MRCNN_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "mrcnn"
    return Path.home() / ".cache" / "mrcnn"


def download(url, dest, expected_size=None, sha256=None, progress=True, timeout=DEFAULT_TIMEOUT,
             md5=None):
    """Downloads `url` to `dest`, which appears only once the whole file has arrived and checks out.

    Args:
        url: http(s) URL (redirects are followed).
        dest: the file to create (its directory is created if needed); replaced if it exists.
        expected_size: size in bytes the file must have, or None.
        sha256: hex SHA-256 the file must have, or None.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait for the connection and for each read.
        md5: hex MD5 the file must have, or None (for files whose publisher gives only that).
    Returns:
        Path(dest).
    Raises:
        DownloadError: unreachable URL (offline), HTTP error, a transfer that broke off, or a
            size/hash mismatch. Nothing is left at `dest` or beside it.
    """
    dest = Path(dest)
    if progress:
        print(f"Downloading {url} to {dest}", file=sys.stderr)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            size, digests = _fetch(url, out, expected_size, dest.name, progress, timeout)
        if expected_size is not None and size != expected_size:
            raise DownloadError(f"{url} gave {size} bytes, expected {expected_size}; "
                                "nothing was saved")
        for name, expected in (("SHA-256", sha256), ("MD5", md5)):
            if expected is not None and digests[name] != expected.lower():
                raise DownloadError(f"{url} has {name} {digests[name]}, expected "
                                    f"{expected.lower()}: the download is corrupt or not the "
                                    "expected file; nothing was saved")
    return dest


def cached_download(url, filename, expected_size=None, sha256=None, progress=True,
                    timeout=DEFAULT_TIMEOUT, md5=None):
    """cache_dir()/filename, downloaded from `url` on first use (see `download`).

    With `sha256`, the content is verified: hashed once after the download (or when first found
    without a record) and recorded in <filename>.verified with the file's size and modification
    time; a later call trusts the file while those still match and hashes it again otherwise. A
    cached file of the wrong size or content is reported and downloaded again. Without `sha256`
    only the size is checked (an `md5` is checked when the file is downloaded).
    """
    directory = cache_dir()
    remove_stale_temporaries(directory)
    dest = directory / filename
    if dest.is_file():
        problem = _cached_file_problem(dest, expected_size, sha256, progress)
        if problem is None:
            return dest
        print(f"note: the cached {dest} {problem}; downloading it again", file=sys.stderr)
        try:
            download(url, dest, expected_size, sha256, progress, timeout, md5)
        except DownloadError as error:
            raise DownloadError(f"the cached {dest} {problem}, and downloading it again "
                                f"failed: {error}") from None
    else:
        download(url, dest, expected_size, sha256, progress, timeout, md5)
    if sha256 is not None:
        _record_verified(dest, sha256.lower())
    return dest


def _cached_file_problem(path, expected_size, sha256, progress):
    """What is wrong with a cached file (a phrase), or None when it is the expected one."""
    stat = path.stat()
    if expected_size is not None and stat.st_size != expected_size:
        return f"has {stat.st_size} bytes, expected {expected_size}"
    if sha256 is None:
        return None
    sha256 = sha256.lower()
    if _read_verified(path) == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                "sha256": sha256}:
        return None
    digest = file_sha256(path, progress)
    if digest != sha256:
        return f"has SHA-256 {digest}, expected {sha256} (damaged or another file)"
    _record_verified(path, digest)
    return None


def file_sha256(path, progress=False):
    """Hex SHA-256 of a file, with a progress bar on stderr when `progress`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), desc=f"verifying {path.name}",
                                     unit="B", unit_scale=True, unit_divisor=1024,
                                     disable=not progress, file=sys.stderr, leave=False) as bar:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _verified_record_path(path):
    return path.with_name(path.name + VERIFIED_SUFFIX)


def _read_verified(path):
    try:
        return json.loads(_verified_record_path(path).read_text())
    except (OSError, ValueError):
        return None


def _record_verified(path, sha256):
    """Records that `path`, as it is now (size, modification time), has content `sha256`."""
    stat = path.stat()
    with atomic_write(_verified_record_path(path), "w") as f:
        json.dump({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}, f)


def coco_weights_path(progress=True):
    """Path of Matterport's COCO weights (.h5, ResNet-101, 81 classes), downloaded once."""
    return cached_download(COCO_WEIGHTS_URL, COCO_WEIGHTS_FILENAME, COCO_WEIGHTS_SIZE,
                           COCO_WEIGHTS_SHA256, progress)


def imagenet_weights_path(progress=True):
    """Path of Keras's ImageNet ResNet-50 weights (.h5, backbone only), downloaded once; load
    them with load_weights(model, path, backbone_only=True) into a ResNet-50 model."""
    return cached_download(IMAGENET_WEIGHTS_URL, IMAGENET_WEIGHTS_FILENAME, IMAGENET_WEIGHTS_SIZE,
                           progress=progress, md5=IMAGENET_WEIGHTS_MD5)


def cached_converted_weights(h5_path, convert_fn, tag="", suffix=".pth"):
    """Path of `h5_path` converted by `convert_fn`, converting only when no cached copy exists.

    The converted file is cache_dir()/converted/<h5 name>-<key><suffix>, where the key depends on
    the .h5's absolute path, size and modification time and on `tag`: replacing the .h5 converts
    again, and so does a new `tag` (pass the converter's version, so that a fixed converter does
    not keep serving files written by the old one).

    Args:
        h5_path: Keras weights file.
        convert_fn: convert_fn(h5_path, out_path) writes the converted file to out_path, a
            temporary name in the cache that is renamed once convert_fn returns.
        tag: string mixed into the key.
        suffix: extension of the converted file.
    """
    h5_path = Path(h5_path).expanduser().resolve()
    if not h5_path.is_file():
        raise FileNotFoundError(f"weights file not found: {h5_path}")
    stat = h5_path.stat()
    identity = f"{h5_path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{tag}".encode()
    key = hashlib.sha256(identity).hexdigest()[:16]
    dest = cache_dir() / "converted" / f"{h5_path.stem}-{key}{suffix}"
    remove_stale_temporaries(dest.parent)
    if not dest.is_file():
        with atomic_path(dest) as tmp:
            convert_fn(h5_path, tmp)
    return dest


def _fetch(url, out, expected_size, desc, progress, timeout):
    """Streams `url` into the open file `out`; returns (bytes received, {"SHA-256", "MD5": hex
    digest})."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: the server answered HTTP {error.code} "
                            f"{error.reason}. Download the file yourself and pass --weights "
                            "PATH") from None
    except (OSError, http.client.HTTPException) as error:   # URLError and timeouts included
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"could not download {url} ({reason}). You are offline or the URL "
                            "is unreachable: download the file yourself and pass --weights "
                            "PATH") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadError(f"{url} announces {total} bytes, expected {expected_size}: not "
                                "the expected file; nothing was saved")
        digests = {"SHA-256": hashlib.sha256(), "MD5": hashlib.md5(usedforsecurity=False)}
        received = 0
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  disable=not progress, file=sys.stderr) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(f"the download of {url} broke off after {received} "
                                        f"bytes ({error}); nothing was saved, try again") from None
                if not chunk:
                    break
                out.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(f"the download of {url} broke off after {received} of {total} bytes; "
                            "nothing was saved, try again")
    return received, {name: digest.hexdigest() for name, digest in digests.items()}
