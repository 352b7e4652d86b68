"""Running an exported model as detect() runs the eager one: molding before, unmolding after.

    model = ExportedModel("model.onnx")          # or "model.pt2"
    results = model.detect([image])              # detect()'s result dicts

or step by step, with the same helpers detect() uses:

    inputs, windows = graph_inputs(images, config)   # mold_inputs + anchors, numpy
    outputs = model.run(*inputs)                     # {detections, mrcnn_mask, mask_iou}
    results = graph_results(images, inputs[0].shape[1:3], windows, outputs)  # unmold_detections
"""
import json
from pathlib import Path

import numpy as np
import torch

from mrcnn.anchors import pyramid_anchors
from mrcnn.config import Config
from mrcnn.detector import rgb_images
from mrcnn.export.exporter import (INPUT_NAMES, METADATA_KEY, OUTPUT_NAMES, PT2_METADATA_FILE,
                                   format_of)
from mrcnn.molding import mold_inputs, molded_shape
from mrcnn.unmold import unmold_detections


def graph_inputs(images, config):
    """The exported graph's inputs for images that mold to one size, as detect() molds them.

    Returns ((input_image [B, H, W, 3], input_image_meta [B, META], input_anchors [B, A, 4]),
    all float32 numpy arrays, and windows [B, 4] int32, the images' places in the molded ones).
    """
    molded, metas, windows = mold_inputs(images, config, device="cpu")
    anchors = pyramid_anchors(config, tuple(molded.shape[-2:]))
    inputs = (molded.permute(0, 2, 3, 1).numpy(), metas.numpy(),
              np.ascontiguousarray(np.broadcast_to(anchors, (len(images),) + anchors.shape)))
    return inputs, windows


def graph_results(images, molded_hw, windows, outputs):
    """detect()'s per-image result dicts (see MaskScoringRCNN.detect) from the exported graph's
    outputs {detections, mrcnn_mask, mask_iou} for images molded to molded_hw (H, W) with
    `windows`. Batch rows beyond len(images) are ignored."""
    detections = torch.as_tensor(outputs["detections"])
    masks = torch.as_tensor(outputs["mrcnn_mask"])
    mask_ious = torch.as_tensor(outputs["mask_iou"])
    rows = torch.arange(detections.shape[1])
    results = []
    for b, image in enumerate(images):
        class_ids = detections[b, :, 4].to(torch.int64)
        results.append(unmold_detections(
            detections[b], masks[b, rows, :, :, class_ids], image.shape, molded_hw, windows[b],
            mask_scores=detections[b, :, 5] * mask_ious[b, rows, class_ids]))
    return results


class ExportedModel:
    """An exported detector: a .onnx run by onnxruntime or a .pt2 run by AOTInductor.

    Args:
        path: the file mrcnn.export wrote.
        providers: onnxruntime execution providers (default: the CPU's).
        session_options: onnxruntime.SessionOptions (threads, spinning...), for an ONNX file.
    Attributes:
        config: the model's Config (stored in the file); batch_size and image_shape (molded
        H, W, 3): the input shapes it was exported for.
    """

    def __init__(self, path, providers=None, session_options=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model not found: {self.path}")
        self.format = format_of(self.path)
        if self.format == "onnx":
            metadata, self._run = _load_onnx(self.path, providers, session_options)
        else:
            metadata, self._run = _load_pt2(self.path)
        self.config = Config.from_dict(metadata["config"])
        self.batch_size = metadata["batch_size"]
        self.image_shape = tuple(metadata["image_shape"])

    def run(self, input_image, input_image_meta, input_anchors):
        """The graph on one batch of exactly batch_size molded images (numpy arrays, see
        graph_inputs) -> {detections, mrcnn_mask, mask_iou} numpy arrays."""
        expected = (self.batch_size,) + self.image_shape
        if tuple(input_image.shape) != expected:
            raise ValueError(f"{self.path.name} takes input_image of shape {list(expected)}, got "
                             f"{list(input_image.shape)}")
        outputs = self._run([np.ascontiguousarray(value, dtype=np.float32)
                             for value in (input_image, input_image_meta, input_anchors)])
        return dict(zip(OUTPUT_NAMES, outputs))

    def detect(self, images):
        """detect() with the exported graph: a list of HxWx3 uint8 RGB images -> per image a
        dict of rois, class_ids, scores, mask_scores, masks (see MaskScoringRCNN.detect).

        Raises ValueError for an image that molds to another size than the graph's.
        """
        images = rgb_images(images)
        for index, image in enumerate(images):
            shape = tuple(molded_shape(image.shape, self.config))
            if shape != self.image_shape[:2]:
                raise ValueError(
                    f"images[{index}] ({image.shape[0]}x{image.shape[1]}) molds to "
                    f"{shape[0]}x{shape[1]}, but {self.path.name} was exported for "
                    f"{self.image_shape[0]}x{self.image_shape[1]}")
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            inputs, windows = graph_inputs(chunk, self.config)
            # A short last batch is filled up with copies of its first image.
            inputs = [np.concatenate([value, np.repeat(value[:1], self.batch_size - len(chunk),
                                                       axis=0)]) for value in inputs]
            results.extend(graph_results(chunk, self.image_shape[:2], windows,
                                         self.run(*inputs)))
        return results


def _load_onnx(path, providers, session_options):
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"running an ONNX model needs onnx and onnxruntime ({error}); install "
                          "them with: pip install 'mask-scoring-rcnn[export]'") from None
    metadata = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False)
                .metadata_props}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} was not written by mrcnn.export (no {METADATA_KEY} metadata)")
    session = onnxruntime.InferenceSession(str(path), sess_options=session_options,
                                           providers=providers or ["CPUExecutionProvider"])

    def run(inputs):
        return session.run(list(OUTPUT_NAMES), dict(zip(INPUT_NAMES, inputs)))

    return json.loads(metadata[METADATA_KEY]), run


def _load_pt2(path):
    from torch.export.pt2_archive import PT2ArchiveReader

    import mrcnn.ops  # noqa: F401  (the package calls torch.ops.mrcnn.*)

    with PT2ArchiveReader(str(path)) as archive:
        name = f"extra/{PT2_METADATA_FILE}"
        if name not in archive.get_file_names():
            raise ValueError(f"{path} was not written by mrcnn.export (no {name} in it)")
        metadata = json.loads(archive.read_string(name))
    package = torch._inductor.aoti_load_package(str(path))
    # A package runs on the device it was compiled for.
    device = torch.device(metadata["device"])

    @torch.inference_mode()
    def run(inputs):
        outputs = package(*[torch.from_numpy(value).to(device) for value in inputs])
        return [output.cpu().numpy() for output in outputs]

    return metadata, run
