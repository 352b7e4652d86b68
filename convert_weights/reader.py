"""The Keras .h5 reader that mrcnn.weights.load_weights uses for Matterport's files.

Registered as the `keras_h5` entry point of the group `mrcnn.weight_readers` (see pyproject.toml),
so that the model's core loads .h5 files without importing this package.
"""
import errno
import os

from torch import nn

from convert_weights.convert import convert, describe_shapes, weight_shapes
from convert_weights.keras_h5 import read_keras_weights
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.weights import MASKIOU_PREFIX, WeightsError, save_weights


def load(model, path, progress=False, layers=None, ignore=(), allow_nonfinite=False):
    """Fills Keras layers of `model` from the .h5 at `path`; returns the converted state dict,
    keyed "<Keras layer>.<torch param>". The MaskIoU head is left as it is.

    layers: the Keras layer names to fill (default: all of model.keras_layers()); each must be
        in the file and fit. ignore: layers of the file that are not loaded. Any other layer of
        the file is an error, as is one that does not fit.

    Raises WeightsError naming the file when the weights do not fit or hold NaN or infinite
    values (unless allow_nonfinite); the model is then untouched."""
    keras_weights = read_keras_weights(path, progress=progress, allow_nonfinite=allow_nonfinite)
    try:
        return load_keras_weights(model, keras_weights, layers, ignore)
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None


def describe(path):
    """{"BACKBONE", "NUM_CLASSES"} the .h5 at `path` was made for (None where it does not say)."""
    return describe_shapes(read_keras_weights(path, arrays=False))


def load_keras_weights(model, keras_weights, layers=None, ignore=()):
    """Loads read_keras_weights' result into `model` (see load)."""
    all_layers = model.keras_layers()
    _check_keras_layers_cover(model, all_layers)
    wanted = set(all_layers if layers is None else layers)
    ignored = set(ignore)
    selected = {name: module for name, module in all_layers.items() if name in wanted}
    state = convert({name: weights for name, weights in keras_weights.items()
                     if name not in ignored}, selected)
    nn.ModuleDict(selected).load_state_dict(state, strict=False)
    return state


def convert_file(input_path, output_path, config_path=None, backbone=None, num_classes=None,
                 allow_nonfinite=False):
    """Converts IN.h5 into the mrcnn checkpoint OUT.pth for the model the options describe
    (fields not given are read from the file); returns a summary line.

    Raises FileNotFoundError, WeightsError (the file cannot be read, holds NaN or infinite
    weights unless allow_nonfinite, or does not fit the model) or OSError naming the file
    that cannot be read or written."""
    output_dir = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"the output directory does not exist: {output_dir}")
    if os.path.isdir(output_path):
        raise IsADirectoryError(errno.EISDIR, "OUT.pth is a directory; give a file name",
                                output_path)
    if os.path.abspath(output_path) == os.path.abspath(input_path):
        raise ValueError("OUT.pth must differ from IN.h5")
    keras_weights = read_keras_weights(input_path, progress=True,
                                       allow_nonfinite=allow_nonfinite)
    config = _config(keras_weights, config_path, backbone, num_classes, input_path)
    model = MaskScoringRCNN(config)
    try:
        state = load_keras_weights(model, keras_weights)
    except WeightsError as error:
        raise WeightsError(f"{input_path}: {error}") from None
    try:
        save_weights(model, config, output_path)
    except OSError as error:  # a full disk, no permission: the error may name a temporary file
        raise OSError(error.errno, f"cannot write the checkpoint ({error.strerror or error})",
                      output_path) from None
    maskiou = sum(p.numel() for name, p in model.named_parameters()
                  if name.startswith(MASKIOU_PREFIX))
    return (f"{input_path} -> {output_path}: {len(model.keras_layers())} layers, "
            f"{sum(t.numel() for t in state.values()):,} parameters ({config.BACKBONE}, "
            f"{config.NUM_CLASSES} classes); the MaskIoU head ({maskiou:,} parameters) keeps "
            "its initialisation")


def _config(keras_weights, config_path, backbone, num_classes, path):
    """The Config from --config and the overrides; fields not given come from the file."""
    overrides = {field: value for field, value in (("BACKBONE", backbone),
                                                   ("NUM_CLASSES", num_classes))
                 if value is not None}
    if config_path is not None:
        return Config.from_json(config_path, **overrides)
    from_file = describe_shapes(weight_shapes(keras_weights))
    for field, option in (("BACKBONE", "--backbone"), ("NUM_CLASSES", "--num-classes")):
        if field in overrides:
            continue
        if from_file[field] is None:
            raise WeightsError(f"cannot tell {field} from {path}; pass {option} or --config")
        overrides[field] = from_file[field]
    return Config(**overrides)


def _check_keras_layers_cover(model, layers):
    """Every model parameter must be a Keras layer's or the MaskIoU head's, and vice versa."""
    in_layers = {id(p) for module in layers.values() for p in module.parameters()}
    in_model = {id(p) for p in model.parameters()}
    uncovered = [name for name, p in model.named_parameters()
                 if id(p) not in in_layers and not name.startswith(MASKIOU_PREFIX)]
    foreign = [name for name, module in layers.items()
               if any(id(p) not in in_model for p in module.parameters())]
    if uncovered or foreign:
        raise ValueError("model.keras_layers() does not match the model: "
                         f"parameters in no Keras layer and not in the MaskIoU head: {uncovered}; "
                         f"Keras layers whose modules are not part of the model: {foreign}")
