"""mrcnn: a PyTorch Mask Scoring R-CNN that runs Matterport's Keras Mask R-CNN weights.

    from mrcnn import MaskScoringRCNN, CocoConfig
    model = MaskScoringRCNN(CocoConfig()).load_weights("mask_rcnn_coco.h5")
    results = model.detect([image])

The names below load their modules on first use, so that `import mrcnn.config` (or `--help` of a
script) needs neither the network nor its compiled ops.

Importing mrcnn sets OMP_WAIT_POLICY=PASSIVE when the environment does not set it and torch is
not imported yet: torch's OpenMP threads then sleep as soon as they wait instead of spinning for a
while first, which on a CPU shared with other jobs takes the cores from the threads with work.
The OpenMP runtime reads the variable once, when torch first loads it: import mrcnn before torch
(the project's commands do); after torch, mrcnn leaves the environment alone. Set the variable
yourself to choose another policy (e.g. OMP_WAIT_POLICY=ACTIVE).
"""
import importlib
import os
import sys

if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "mrcnn.config",
    "CocoConfig": "mrcnn.config",
    "MaskScoringRCNN": "mrcnn.detector",
    "to_rgb_uint8": "mrcnn.images",
    "mold_inputs": "mrcnn.molding",
    "unmold_detections": "mrcnn.unmold",
    "load_weights": "mrcnn.weights",
    "save_weights": "mrcnn.weights",
    "WeightsError": "mrcnn.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mrcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
