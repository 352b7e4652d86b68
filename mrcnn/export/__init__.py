"""Deployment: the whole detector exported to ONNX or to an AOTInductor .pt2 package.

    python -m mrcnn.export --weights W [--config C] --format onnx|pt2 [--batch N] OUT

The exported graph is a drop-in for Matterport's Keras inference graph (inputs input_image,
input_image_meta, input_anchors; outputs detections, mrcnn_mask, and mask_iou from the MaskIoU
head); molding and unmolding stay outside, in the helpers detect() uses. `ExportedModel(path)
.detect(images)` runs an exported file end to end. See the README, "Exporting".
"""
from mrcnn.export.exporter import (FORMATS, INPUT_NAMES, OUTPUT_NAMES, InferenceGraph,
                                   example_inputs, export_model, molded_image_hw)
from mrcnn.export.runtime import ExportedModel, graph_inputs, graph_results

__all__ = [
    "FORMATS",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExportedModel",
    "InferenceGraph",
    "example_inputs",
    "export_model",
    "graph_inputs",
    "graph_results",
    "molded_image_hw",
]
