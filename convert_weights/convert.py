"""Keras layer weights -> PyTorch state-dict entries, strict, with the reason when they do not fit.

Layouts (Keras -> PyTorch):
    Conv2D kernel          (kh, kw, in, out) -> Conv2d.weight          (out, in, kh, kw)
    Conv2DTranspose kernel (kh, kw, out, in) -> ConvTranspose2d.weight (in, out, kh, kw)
    Dense kernel           (in, out)         -> Linear.weight          (out, in)
    BatchNormalization gamma, beta, moving_mean, moving_variance
                                             -> weight, bias, running_mean, running_var
Biases are copied as they are. The transposed convolution needs no spatial flip: both TF and
PyTorch compute out[s*i + a, s*j + b, o] += in[i, j, c] * K[a, b, o, c].
"""
import re
from collections import Counter

import numpy as np
import torch
from torch import nn

from convert_weights.keras_h5 import strip_dedup_suffix
from mrcnn.weights import LIST_LIMIT, WeightsError, mismatch_report

KERAS_BN_EPS = 1e-3

# Per module type: Keras param -> (torch param, axis permutation from the Keras layout or None).
_CONV = {"kernel": ("weight", (3, 2, 0, 1)), "bias": ("bias", None)}
PARAM_MAPS = (
    (nn.Conv2d, _CONV),
    (nn.ConvTranspose2d, _CONV),
    (nn.Linear, {"kernel": ("weight", (1, 0)), "bias": ("bias", None)}),
    (nn.BatchNorm2d, {"gamma": ("weight", None), "beta": ("bias", None),
                      "moving_mean": ("running_mean", None),
                      "moving_variance": ("running_var", None)}),
)

# The number of bottleneck blocks in stage 4 tells the ResNet depth.
RES4_BLOCK = re.compile(r"^res4([a-z]+)_branch2a$")
BACKBONE_BY_RES4_BLOCKS = {6: "resnet50", 23: "resnet101"}
HEAD_PREFIXES = ("fpn_", "rpn_", "mrcnn_")


def convert(keras_weights, layers):
    """Converts Keras weights into the tensors of the given torch modules, strictly.

    keras_weights: {layer name: {param: array}} as read_keras_weights returns it.
    layers: {Keras layer name: nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.BatchNorm2d
        (eps 1e-3)}, e.g. model.keras_layers().
    Returns {"<layer name>.<torch param>": tensor}: a state dict of nn.ModuleDict(layers) that
    fills every parameter and BatchNorm running statistic of every module.

    Every module must be filled and every weight in the file used; otherwise one WeightsError
    lists everything that does not fit, led by the likely reason (class count, backbone depth,
    a backbone-only file, a file of another model).
    """
    keras_weights = _resolve_dedup_suffixes(keras_weights, layers)
    model_shapes = {name: _keras_shapes(module) for name, module in layers.items()}
    module_problems = [_module_problem(name, module) for name, module in layers.items()]
    missing, shapes, missing_params, extra_params = [], [], [], []
    state = {}
    for name, module in layers.items():
        if name not in keras_weights:
            missing.append(name)
            continue
        given = keras_weights[name]
        for keras_param, expected in model_shapes[name].items():
            torch_param, permutation = _param_map(module)[keras_param]
            array = given.get(keras_param)
            if array is None:
                missing_params.append(f"{name}/{keras_param}")
            elif array.shape != expected:
                shapes.append(f"{name}/{keras_param}: file {array.shape}, model {expected}")
            else:
                state[f"{name}.{torch_param}"] = _to_torch(array, permutation)
        extra_params += [f"{name}/{param}" for param in given if param not in model_shapes[name]]
    problems = {
        "module problems": [problem for problem in module_problems if problem],
        "shape mismatches": shapes,
        "layers missing from the file": missing,
        "layers in the file that the model does not have": [
            name for name in keras_weights if name not in layers],
        "weights missing from the file": missing_params,
        "weights in the file that the model does not have": extra_params,
    }
    if any(problems.values()):
        reasons = _likely_reasons(weight_shapes(keras_weights), model_shapes)
        raise WeightsError(mismatch_report("the weights in the file do not fit the model.",
                                           problems, reasons))
    return state


def weight_shapes(keras_weights):
    """{layer: {param: shape}} of read_keras_weights' result."""
    return {name: {param: array.shape for param, array in params.items()}
            for name, params in keras_weights.items()}


def describe_shapes(shapes):
    """The BACKBONE and NUM_CLASSES a Mask R-CNN weight set was made for.

    shapes: {layer: {param: Keras-layout shape}}, e.g. weight_shapes(read_keras_weights(path)).
    NUM_CLASSES comes from the mrcnn_class_logits kernel (in, classes); BACKBONE from the number
    of res4 blocks (6 in ResNet-50, 23 in ResNet-101). A value the shapes do not tell is None.
    """
    kernel = shapes.get("mrcnn_class_logits", {}).get("kernel")
    res4_blocks = {match.group(1) for match in map(RES4_BLOCK.match, shapes) if match}
    return {"BACKBONE": BACKBONE_BY_RES4_BLOCKS.get(len(res4_blocks)),
            "NUM_CLASSES": kernel[-1] if kernel else None}


def _param_map(module):
    for module_type, param_map in PARAM_MAPS:
        if isinstance(module, module_type):
            return param_map
    return {}


def _module_problem(name, module):
    if not _param_map(module):
        return (f"{name} is a {type(module).__name__}; expected one of "
                f"{', '.join(t.__name__ for t, _ in PARAM_MAPS)}")
    if isinstance(module, nn.BatchNorm2d) and not np.isclose(module.eps, KERAS_BN_EPS):
        return f"{name} has eps {module.eps:g}; Keras's BatchNormalization uses {KERAS_BN_EPS:g}"
    if isinstance(module, nn.BatchNorm2d) and module.running_mean is None:
        return f"{name} tracks no running statistics; Keras's moving mean and variance need them"
    return None


def _resolve_dedup_suffixes(keras_weights, layers):
    """Renames file layers `x_N` to `x` where `x` is a model layer the file lacks.

    Two file layers that would both become `x` keep their names (and are reported).
    """
    unmatched = layers.keys() - keras_weights.keys()
    renamed = {name: strip_dedup_suffix(name, unmatched) for name in keras_weights}
    targets = Counter(renamed.values())
    return {(new if targets[new] == 1 else old): keras_weights[old]
            for old, new in renamed.items()}


def _keras_shapes(module):
    """{Keras param: the shape it has in a Keras file} for the module's tensors."""
    shapes = {}
    for keras_param, (torch_param, permutation) in _param_map(module).items():
        tensor = getattr(module, torch_param)
        if tensor is not None:
            torch_shape = tuple(tensor.shape)
            shapes[keras_param] = (torch_shape if permutation is None else
                                   tuple(torch_shape[axis] for axis in np.argsort(permutation)))
    return shapes


def _to_torch(array, permutation):
    if permutation is not None:
        array = array.transpose(permutation)
    return torch.from_numpy(np.ascontiguousarray(array))


def _likely_reasons(file_shapes, model_shapes):
    file_says, model_says = describe_shapes(file_shapes), describe_shapes(model_shapes)
    reasons = []
    if file_says["BACKBONE"] and not any(name.startswith(HEAD_PREFIXES) for name in file_shapes):
        reasons.append("the file holds only a ResNet backbone (such as Keras's ImageNet "
                       "weights), no FPN, RPN or heads: it can start a training (MaskRCNN."
                       "load_weights, train.py --weights imagenet, load_weights(..., "
                       "backbone_only=True)), while detection needs a complete Mask R-CNN file")
    elif 2 * len(file_shapes.keys() & model_shapes.keys()) < len(model_shapes):
        reasons.append(f"the file does not hold Matterport Mask R-CNN weights: only "
                       f"{len(file_shapes.keys() & model_shapes.keys())} of the model's "
                       f"{len(model_shapes)} layers are in it (its layers: "
                       f"{_shorten(list(file_shapes))})")
    for field, reason in (("NUM_CLASSES", "the file has {} classes, the config {} (NUM_CLASSES "
                                          "counts the background)"),
                          ("BACKBONE", "the file is a {} backbone, the config {} (BACKBONE)")):
        if None not in (file_says[field], model_says[field]) and \
                file_says[field] != model_says[field]:
            reasons.append(reason.format(file_says[field], model_says[field]))
    return reasons


def _shorten(items):
    if not items:
        return "none"
    shown = ", ".join(items[:LIST_LIMIT])
    return shown if len(items) <= LIST_LIMIT else f"{shown}, ... and {len(items) - LIST_LIMIT} more"
