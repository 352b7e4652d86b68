"""Model weights: the checkpoint format, loading and saving, and the download cache.

Checkpoints (.pth) are torch.save'd dicts written atomically by `save_weights`:
    {"format": "mrcnn", "version": 1, "config": Config.to_dict(), "state_dict": {name: tensor}}

`load_weights(model, path)` takes such a checkpoint or a Matterport Keras .h5 (told apart by the
HDF5 signature, not the name). This module never reads HDF5 itself: the Keras reader is a plugin
that `convert_weights` registers under the package entry point group `mrcnn.weight_readers`
(name `keras_h5`), so the model's core depends on no converter. A reader module provides
`load(model, path, progress)` (fills every Keras layer of the model, strictly) and
`describe(path)` ({"BACKBONE", "NUM_CLASSES"} the file was made for, None where it does not say).

The model side of the contract: `model.config` is its Config, `model.keras_layers()` maps Keras
layer names to modules, and the MaskIoU head's parameters are named `maskiou_head.*`.

Downloaded and converted files live in `cache_dir()`:

- `$MRCNN_CACHE` when set (e.g. `MRCNN_CACHE=/data/mrcnn-cache`),
- else `$XDG_CACHE_HOME/mrcnn` when XDG_CACHE_HOME is an absolute path,
- else `~/.cache/mrcnn`.

A file enters the cache only whole: it is written under a temporary name in the same directory
and renamed once complete and checked, so an interrupted or failed download leaves nothing
behind. Offline, pass a file you downloaded yourself (`--weights PATH` in the scripts).
"""
import copy
import hashlib
import http.client
import importlib.metadata
import json
import os
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from mrcnn.atomic import atomic_path, atomic_write
from mrcnn.config import Config

CHECKPOINT_FORMAT = "mrcnn"
CHECKPOINT_VERSION = 1
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


def load_weights(model, path, progress=False, allow_nonfinite=False):
    """Loads a Matterport Keras .h5 (converted on the fly) or an mrcnn .pth into `model`.

    An .h5 must fill every Keras layer of the model exactly; the MaskIoU head keeps its
    initialisation, which a MaskIoUHeadNotInFileWarning says. A .pth must come from
    save_weights for a config with the same weight shapes (SHAPE_FIELDS) and fills the whole
    model; a PoolerMismatchWarning says when it was trained with another POOLER. A weight
    holding NaN or infinite values is an error naming it, unless `allow_nonfinite`.
    `progress` shows a progress bar while an .h5 is read.

    Raises FileNotFoundError, or WeightsError saying what is wrong with the file; a file that
    does not fit leaves the model untouched.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if is_keras_file(path):
        keras_reader(path).load(model, path, progress=progress, allow_nonfinite=allow_nonfinite)
        if any(name.startswith(MASKIOU_PREFIX) for name, _ in model.named_parameters()):
            warnings.warn("the .h5 has no MaskIoU head; it keeps its initialisation",
                          MaskIoUHeadNotInFileWarning, stacklevel=2)
        return
    checkpoint = read_checkpoint(path)
    _check_config(checkpoint["config"], model.config, f"{path} was saved for")
    _check_state_dict(checkpoint["state_dict"], model.state_dict(), path)
    if not allow_nonfinite:
        for name, tensor in checkpoint["state_dict"].items():
            check_finite(tensor, f"{path}: weight {name}")
    model.load_state_dict(checkpoint["state_dict"])
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


def save_weights(model, config, path):
    """Writes the whole model and its config to an mrcnn checkpoint `path`, atomically.

    Either the complete file appears at `path` or, on any failure, `path` is left as it was.
    `config` must have the model's weight shapes (SHAPE_FIELDS).
    """
    _check_config(config.to_dict(), model.config, "the config given to save_weights is for")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
    }
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def read_checkpoint(path):
    """The dict saved by save_weights, checked for format and version; tensors on the CPU."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as error:  # torch.load raises many types for files that are not its own.
        raise WeightsError(f"{path} is neither a Keras .h5 file nor a PyTorch checkpoint "
                           f"({type(error).__name__}: {error})") from None
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
            _load_other_class_count(model, path, file_classes)
            log(f"{path} was trained for {file_classes} classes and the model has "
                f"{model.config.NUM_CLASSES}: {', '.join(CLASS_LAYERS)} keep their fresh "
                "initialisation")
    for warning in caught:
        log(f"note: {warning.message}")


def _load_other_class_count(model, path, file_classes):
    """Loads weights made for `file_classes` classes into all but the model's CLASS_LAYERS."""
    donor_config = copy.deepcopy(model.config)
    donor_config.update(NUM_CLASSES=file_classes, CLASS_NAMES=None)
    donor = type(model)(donor_config)
    load_weights(donor, path)
    module_paths = {id(module): name for name, module in model.named_modules()}
    fresh = tuple(module_paths[id(model.named_layers()[layer])] + "." for layer in CLASS_LAYERS)
    # A MaskIoU head with a fresh last layer is untrained, whatever the file's head was.
    state = {name: tensor for name, tensor in donor.state_dict().items()
             if not name.startswith(fresh) and name != "maskiou_head.trained"}
    model.load_state_dict(state, strict=False)


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


def download(url, dest, expected_size=None, sha256=None, progress=True, timeout=DEFAULT_TIMEOUT):
    """Downloads `url` to `dest`, which appears only once the whole file has arrived and checks out.

    Args:
        url: http(s) URL (redirects are followed).
        dest: the file to create (its directory is created if needed); replaced if it exists.
        expected_size: size in bytes the file must have, or None.
        sha256: hex SHA-256 the file must have, or None.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait for the connection and for each read.
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
            size, digest = _fetch(url, out, expected_size, dest.name, progress, timeout)
        if expected_size is not None and size != expected_size:
            raise DownloadError(f"{url} gave {size} bytes, expected {expected_size}; "
                                "nothing was saved")
        if sha256 is not None and digest != sha256.lower():
            raise DownloadError(f"{url} has SHA-256 {digest}, expected {sha256.lower()}: the "
                                "download is corrupt or not the expected file; nothing was saved")
    return dest


def cached_download(url, filename, expected_size=None, sha256=None, progress=True,
                    timeout=DEFAULT_TIMEOUT):
    """cache_dir()/filename, downloaded from `url` on first use (see `download`).

    A cached file is trusted once it has the expected size: it was checked when it entered the
    cache, and hashing hundreds of megabytes at every start would be slow.
    """
    dest = cache_dir() / filename
    if dest.is_file():
        size = dest.stat().st_size
        if expected_size is not None and size != expected_size:
            raise DownloadError(f"the cached file {dest} has {size} bytes, expected "
                                f"{expected_size}: delete it to download it again, or pass "
                                "--weights PATH")
        return dest
    return download(url, dest, expected_size, sha256, progress, timeout)


def coco_weights_path(progress=True):
    """Path of Matterport's COCO weights (.h5, ResNet-101, 81 classes), downloaded once."""
    return cached_download(COCO_WEIGHTS_URL, COCO_WEIGHTS_FILENAME, COCO_WEIGHTS_SIZE,
                           COCO_WEIGHTS_SHA256, progress)


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
    if not dest.is_file():
        with atomic_path(dest) as tmp:
            convert_fn(h5_path, tmp)
    return dest


def _fetch(url, out, expected_size, desc, progress, timeout):
    """Streams `url` into the open file `out`; returns (bytes received, hex SHA-256)."""
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
        digest = hashlib.sha256()
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
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(f"the download of {url} broke off after {received} of {total} bytes; "
                            "nothing was saved, try again")
    return received, digest.hexdigest()
