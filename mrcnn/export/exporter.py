"""The whole inference graph as one module, exported to ONNX or to an AOTInductor .pt2 package.

Both formats start from one torch.export trace of `InferenceGraph`, whose stages are the model's
own (MaskScoringRCNN.infer). Only the two compiled operators are swapped, for ONNX alone:
crop_and_resize becomes its plain-torch decomposition and NMS a NonMaxSuppression translation
(mrcnn.export.onnx_ops). The .pt2 keeps torch.ops.mrcnn.* and needs the mrcnn._C library at run
time.
"""
import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrcnn.anchors import pyramid_anchors
from mrcnn.atomic import atomic_path
from mrcnn.molding import compose_image_meta
from mrcnn.ops import crop_and_resize_decomposed

FORMATS = ("onnx", "pt2")
INPUT_NAMES = ("input_image", "input_image_meta", "input_anchors")
OUTPUT_NAMES = ("detections", "mrcnn_mask", "mask_iou")
# Where the model's description (Config, batch size, molded image shape) is stored: an ONNX
# metadata_props key, and a file in the .pt2 archive's extra/ folder.
METADATA_KEY = "mrcnn_export"
PT2_METADATA_FILE = f"{METADATA_KEY}.json"


class InferenceGraph(nn.Module):
    """Matterport's Keras inference graph with the MaskIoU head, inputs and outputs named and
    laid out as Matterport's are.

    forward(input_image [B, H, W, 3] float32 molded images (NHWC, as mold_inputs makes them),
    input_image_meta [B, META], input_anchors [B, A, 4] normalised) ->
    (detections [B, MAX, 6] (y1, x1, y2, x2 normalised, class id, score; zero rows after the
    detections), mrcnn_mask [B, MAX, 28, 28, NUM_CLASSES], mask_iou [B, MAX, NUM_CLASSES] (the
    MaskIoU head's output for the mask of each row's class)), MAX = DETECTION_MAX_INSTANCES.
    The mask heads run on every row, padding included, as in Matterport's graph.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_image, input_image_meta, input_anchors):
        outputs = self.model.infer(input_image.permute(0, 3, 1, 2), input_image_meta,
                                   input_anchors, mask_all_rows=True)
        detections = outputs["detections"]
        batch, rows = detections.shape[:2]
        masks = outputs["mrcnn_mask"]
        masks = masks.reshape((batch, rows) + masks.shape[1:]).permute(0, 1, 3, 4, 2)
        return detections, masks, outputs["mask_ious"].reshape(batch, rows, -1)


def export_model(model, path, format=None, batch_size=1, image_shape=None, log=None):
    """Exports `model` (a MaskScoringRCNN, on the device the package is for) with its inputs'
    shapes fixed: batch_size images molded to image_shape.

    Args:
        path: the file to write (atomically); .onnx or .pt2.
        format: "onnx" or "pt2"; default: from path's suffix.
        image_shape: molded (H, W), multiples of 64; default: the config's IMAGE_SHAPE in
            'square' mode (the other modes mold images to sizes that vary: give one).
        log: callable taking a progress line (e.g. print); None says nothing.
    Returns:
        the written path. ONNX files are checked with onnx.checker and hold only standard ONNX
        operators.
    Raises:
        ValueError for a bad format, suffix, batch size or image shape.
    """
    log = log or (lambda line: None)
    path = Path(path)
    format = format_of(path, format)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    image_hw = molded_image_hw(model.config, image_shape)
    inputs = example_inputs(model.config, batch_size, image_hw, model.device)
    metadata = {"config": model.config.to_dict(), "batch_size": batch_size,
                "image_shape": [*image_hw, 3], "device": str(model.device),
                "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES)}
    log(f"Tracing the graph with torch.export ({batch_size} x {image_hw[0]}x{image_hw[1]} "
        "images)")
    with torch.no_grad():
        program = torch.export.export(InferenceGraph(model).eval(), inputs, strict=False)
    if format == "onnx":
        _write_onnx(program, inputs, path, metadata, log)
    else:
        _write_pt2(program, inputs, path, metadata, log)
    return path


def format_of(path, format=None):
    """The export format for `path` (.onnx or .pt2), checked against `format` when given."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if suffix not in FORMATS or (format is not None and suffix != format):
        expected = f".{format}" if format else " or ".join(f".{name}" for name in FORMATS)
        raise ValueError(f"the output file must end with {expected}, got {str(path)!r}")
    return suffix


def molded_image_hw(config, image_shape=None):
    """(H, W) of the molded images an exported graph takes (see export_model)."""
    if image_shape is None:
        if config.IMAGE_RESIZE_MODE != "square":
            raise ValueError(f"IMAGE_RESIZE_MODE {config.IMAGE_RESIZE_MODE!r} molds images to "
                             "sizes that depend on the image; give the molded size to export "
                             "for (image_shape, --image-size H W)")
        return tuple(config.IMAGE_SHAPE[:2])
    height, width = (int(side) for side in image_shape)
    if height < 64 or width < 64 or height % 64 or width % 64:
        raise ValueError(f"the molded image size must be multiples of 64 (the pyramid halves it "
                         f"six times), got {height}x{width}")
    return height, width


def example_inputs(config, batch_size, image_hw, device="cpu"):
    """Inputs of the shapes the graph is exported for: blank images filling the molded size,
    their metas and the anchors."""
    height, width = image_hw
    meta = compose_image_meta(0, (height, width, 3), (height, width, 3), (0, 0, height, width),
                              1.0, np.zeros(config.NUM_CLASSES))
    anchors = torch.from_numpy(pyramid_anchors(config, image_hw))
    return (torch.zeros(batch_size, height, width, 3, device=device),
            torch.from_numpy(np.tile(meta, (batch_size, 1))).float().to(device),
            anchors.expand(batch_size, -1, -1).contiguous().to(device))


def require_onnx_exporter():
    """Raises ImportError, saying what to install, when the ONNX exporter's packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"exporting to ONNX needs onnx and onnxscript ({error}); install them "
                          "with: pip install 'mask-scoring-rcnn[export]'") from None


def _write_onnx(program, inputs, path, metadata, log):
    require_onnx_exporter()
    import onnx
    import onnxscript.optimizer

    from mrcnn.export import onnx_ops

    log("Translating to ONNX (standard operators only)")
    program = program.run_decompositions(
        {torch.ops.mrcnn.crop_and_resize.default: crop_and_resize_decomposed})
    with _quiet_onnx_exporter():
        onnx_program = torch.onnx.export(
            program, inputs, dynamo=True, input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), custom_translation_table=onnx_ops.translations(),
            verbose=False)
    # The exporter folds constants of up to 256k values; folding the larger ones too gives
    # every convolution its weights with BatchNorm folded in as constants, which runtimes need
    # to prepare their fast convolutions (onnxruntime would otherwise fold them at every load).
    onnxscript.optimizer.optimize(onnx_program.model, input_size_limit=2**31,
                                  output_size_limit=2**31)
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx_program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp))
        _check_standard_operators(onnx.load(str(tmp)))


def _check_standard_operators(model):
    """Raises RuntimeError when the graph uses a function or an operator outside ONNX's own."""
    domains = {node.domain for node in model.graph.node} - {"", "ai.onnx"}
    if domains or model.functions:
        raise RuntimeError(f"the ONNX graph uses operators outside the standard domain: "
                           f"{sorted(domains)} {[f.name for f in model.functions]}")


@contextmanager
def _quiet_onnx_exporter():
    """Silences the exporter's notes about torchvision's operators (the model uses none)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _write_pt2(program, inputs, path, metadata, log):
    from torch.export.pt2_archive._package import package_pt2

    _finite_nms_score_thresholds(program)
    log("Compiling with AOTInductor (minutes on a CPU)")
    # Freezing folds the weights into the compiled code (BatchNorm into the convolutions):
    # a faster model, compiled in half the time.
    files = torch._inductor.aot_compile(program.module(), inputs,
                                        options={"aot_inductor.package": True, "freezing": True})
    with atomic_path(path, suffix=".pt2") as tmp:
        package_pt2(str(tmp), aoti_files={"model": files},
                    extra_files={PT2_METADATA_FILE: json.dumps(metadata)})


def _finite_nms_score_thresholds(program):
    """Replaces the NMS calls' score threshold -inf ("no threshold") with float32's lowest
    finite value: AOTInductor's loader cannot read a non-finite float argument of a custom op.
    The scores there are probabilities, so the two thresholds admit the same boxes."""
    lowest = float(torch.finfo(torch.float32).min)
    for node in program.graph.nodes:
        if node.target is torch.ops.mrcnn.nms.default and node.args[5] == -math.inf:
            node.args = node.args[:5] + (lowest,)
    program.graph_module.recompile()
