"""Reads the weights of a Keras 2 HDF5 weights file as Matterport's Mask R-CNN writes them.

Layout (Keras `save_weights_to_hdf5_group`): the root (or the `model_weights` group of a
full-model save) lists every layer in the attribute `layer_names` (split into `layer_names0`,
`layer_names1`, ... when it exceeds 64 KB); each layer has a group whose attribute
`weight_names` names its datasets, e.g. `conv1/kernel:0` at `conv1/conv1/kernel:0`.
TimeDistributed layers store the inner layer's weights under the wrapper name, and the shared
RPN is one nested model group `rpn_model` holding `rpn_conv_shared/kernel:0`, ... Weights are
keyed by the sublayer named in each weight name, never by position. Keras 1 files, whose weights
are named `<layer>_W:0`, `<layer>_running_std:0`, ..., read the same.
"""
import os
import re

import h5py
import numpy as np
from tqdm import tqdm

from mrcnn.weights import WeightsError, check_finite, is_hdf5

DEDUP_SUFFIX = re.compile(r"_\d+$")
VARIABLE_INDEX = re.compile(r":\d+$")
# Keras 1 named a layer's weights "<layer>_<param>" with these params (its BatchNormalization's
# "running_std" held the moving variance); Keras 2 names them "<layer>/<param>".
KERAS1_PARAMS = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
                 "running_mean": "moving_mean", "running_std": "moving_variance"}


def strip_dedup_suffix(name, known):
    """`name` without Keras's de-dup suffix `_N` when that gives a name in `known`.

    Keras renames a layer whose name is taken (a model built twice in one session names its
    variables `conv1_1/kernel:0`). The suffix is dropped only when the unsuffixed name is one of
    `known` and `name` itself is not, so a genuine name such as `head_1` stays as it is.
    """
    base = DEDUP_SUFFIX.sub("", name)
    if base != name and base in known and name not in known:
        return base
    return name


def read_keras_weights(path, progress=False, arrays=True, allow_nonfinite=False):
    """All weights of a Keras 2 HDF5 weights file.

    Returns {layer name: {param name: array}}, e.g. weights["rpn_conv_shared"]["kernel"] of shape
    (3, 3, 256, 512), with arrays in the file's layout and dtype. Layers without weights are
    left out. `progress` shows a progress bar over the layers. With `arrays=False` the values
    are the datasets' shapes, and no weight is read. A weight holding NaN or infinite values is
    an error naming its layer, unless `allow_nonfinite`.

    Raises FileNotFoundError for a missing file and WeightsError naming the file for one that is
    not HDF5, is truncated or corrupt, is not a Keras weights file, holds non-finite weights, or
    reaches outside itself (external links, external or virtual datasets, which would read
    other files).
    """
    with _open_hdf5(path) as root:
        try:
            _check_self_contained(root, path)
            group = _weights_group(root, path)
            weights = {}
            layer_names = _string_list_attr(group, "layer_names")
            for layer_name in tqdm(layer_names, desc="reading weights", unit="layer",
                                   disable=not progress):
                for layer, param, dataset in _layer_datasets(group, layer_name, path):
                    params = weights.setdefault(layer, {})
                    if param in params:
                        raise WeightsError(f"{path}: weight {layer}/{param} appears twice (last "
                                           f"in layer group {layer_name!r}); the file is "
                                           "ambiguous")
                    params[param] = (_read_dataset(dataset, path, f"{layer}/{param}",
                                                   allow_nonfinite) if arrays else dataset.shape)
        except WeightsError:
            raise
        except (OSError, KeyError, RuntimeError, TypeError, ValueError, SystemError) as error:
            # h5py's errors for damaged structures: missing objects, unreadable metadata, types
            # numpy has no dtype for, names that are not UTF-8 (a SystemError when met while
            # visiting the file's links).
            raise WeightsError(f"{path}: the HDF5 file cannot be read as Keras weights; it is "
                               f"probably damaged. HDF5 says: {error.__cause__ or error}") \
                from None
    return weights


def _open_hdf5(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not is_hdf5(path):
        raise WeightsError(f"{path} is not an HDF5 file (no HDF5 signature); Matterport's "
                           "weights are Keras .h5 files")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise WeightsError(f"{path}: the HDF5 file cannot be opened; it is probably truncated "
                           f"or corrupt (download it again). HDF5 says: {error}") from None


def _check_self_contained(root, path):
    """Refuses links to other files, and datasets stored in other files (external or virtual):
    reading them would read whatever those paths hold on this machine."""
    external = []
    root.visititems_links(lambda name, link: external.append(
        f"{name} -> {link.filename}:{link.path}") if isinstance(link, h5py.ExternalLink)
        else None)
    root.visititems(lambda name, node: external.append(f"{name} (data in other files)")
                    if isinstance(node, h5py.Dataset) and (node.external or node.is_virtual)
                    else None)
    if external:
        raise WeightsError(f"{path} reaches outside itself ({', '.join(external[:3])}); weights "
                           "must be stored in the file")


def _weights_group(root, path):
    """The group that holds `layer_names`: the root, or `model_weights` for full-model saves."""
    if _string_list_attr(root, "layer_names") is None and "model_weights" in root:
        root = root["model_weights"]
    if _string_list_attr(root, "layer_names") is None:
        raise WeightsError(f"{path} is an HDF5 file but not Keras weights: it has no "
                           "'layer_names' attribute (neither at the root nor in 'model_weights')")
    return root


def _string_list_attr(node, name):
    """A list-of-strings attribute, joined from chunks `name0`, `name1`, ... if split; else None."""
    if name in node.attrs:
        values = node.attrs[name]
    elif f"{name}0" in node.attrs:
        values, chunk = [], 0
        while f"{name}{chunk}" in node.attrs:
            values.extend(node.attrs[f"{name}{chunk}"])
            chunk += 1
    else:
        return None
    if isinstance(values, (str, bytes)):
        values = [values]
    return [value.decode("utf8") if isinstance(value, bytes) else str(value) for value in values]


def _layer_datasets(group, layer_name, path):
    """(sublayer, param, dataset) for each weight of one layer group."""
    if layer_name not in group:
        raise WeightsError(f"{path}: 'layer_names' lists {layer_name!r} but the file has no such "
                           "group; the file is corrupt")
    layer_group = group[layer_name]
    weight_names = _string_list_attr(layer_group, "weight_names")
    if weight_names is None:
        raise WeightsError(f"{path}: layer group {layer_name!r} has no 'weight_names' attribute; "
                           "the file is corrupt or not a Keras weights file")
    for weight_name in weight_names:
        dataset = layer_group.get(weight_name)
        if not isinstance(dataset, h5py.Dataset):
            raise WeightsError(f"{path}: layer group {layer_name!r} lists weight {weight_name!r} "
                               "but holds no such dataset; the file is corrupt")
        *scopes, variable = weight_name.split("/")
        sublayer = strip_dedup_suffix(scopes[-1], {layer_name}) if scopes else layer_name
        yield sublayer, _param_name(VARIABLE_INDEX.sub("", variable), sublayer), dataset


def _param_name(variable, sublayer):
    """The Keras 2 parameter name of a weight: `variable` itself, or for a Keras 1 name
    "<sublayer>_<param>" (e.g. the ImageNet ResNet-50 of keras deep-learning-models v0.2) the
    Keras 2 name of <param>."""
    prefix = f"{sublayer}_"
    if variable.startswith(prefix):
        return KERAS1_PARAMS.get(variable[len(prefix):], variable)
    return variable


def _read_dataset(dataset, path, weight, allow_nonfinite):
    try:
        array = dataset[()]
    except OSError as error:
        raise WeightsError(f"{path}: cannot read dataset {dataset.name}; the file is probably "
                           f"truncated or corrupt. HDF5 says: {error}") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise WeightsError(f"{path}: dataset {dataset.name} holds {array.dtype}, not "
                           "floating-point weights")
    array = array.astype(array.dtype.newbyteorder("="), copy=False)  # torch takes native only
    if not allow_nonfinite:
        check_finite(array, f"{path}: weight {weight} (dataset {dataset.name})")
    return array
