"""Matterport Keras Mask R-CNN weights (.h5) for the PyTorch model.

    read_keras_weights(path) -> {layer: {param: array}}       the .h5 as Keras wrote it
    convert(keras_weights, layers) -> {"layer.param": tensor}  strict, with exact transposes
    reader.load(model, path)                                   an .h5 into a model

`mrcnn.weights.load_weights` (and MaskScoringRCNN.load_weights) read .h5 files through
`convert_weights.reader`, registered as a package entry point.
Command line: python -m convert_weights IN.h5 OUT.pth (see --help).
"""
import mrcnn  # noqa: F401  first: it sets OpenMP's thread settings before torch loads
from convert_weights.convert import convert, describe_shapes, weight_shapes
from convert_weights.keras_h5 import read_keras_weights
from convert_weights.reader import convert_file, load_keras_weights

__all__ = ["convert", "convert_file", "describe_shapes", "load_keras_weights",
           "read_keras_weights", "weight_shapes"]
