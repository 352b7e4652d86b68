"""mrcnn.export: the ONNX translations against the operators they stand for, and the exported
reference model (ONNX run by onnxruntime, .pt2 run by AOTInductor, also in a process that has
only torch and the mrcnn._C library) against the Keras reference and against detect().

The exports take minutes on a CPU: one ONNX file (batch 1, through the command line) and one
.pt2 package (batch 2) of the reference model are made once for the module.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcnn.cli import load_model
from mrcnn.config import Config
from mrcnn.export import ExportedModel, InferenceGraph, export_model, graph_inputs
from mrcnn.export.__main__ import main as export_main
from mrcnn.ops import batched_nms, nms, roi_align
from tests.reference import ReferenceCase
from tests.test_readme import code_block
from tests.test_reference import assert_close_to_scale

ROOT = Path(__file__).resolve().parents[1]
CASE = ReferenceCase("public_r50_256")
REF = CASE.outputs
REFERENCE_INPUTS = ("molded_images", "image_metas", "anchors")


def onnx_session(module, inputs, path, dynamic_shapes=None):
    """Exports `module` with the project's ONNX translations and opens it in onnxruntime."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from mrcnn.export import onnx_ops

    program = torch.onnx.export(module, inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                custom_translation_table=onnx_ops.translations(), verbose=False)
    program.save(str(path))
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_session(session, *inputs):
    names = [value.name for value in session.get_inputs()]
    return session.run(None, {name: value.numpy() for name, value in zip(names, inputs)})


# ---------------------------------------------------------------------------------------------
# The ONNX translations
# ---------------------------------------------------------------------------------------------


class NMSCases(torch.nn.Module):
    """Several NMS settings over one set of boxes, so that one export covers them all."""

    def forward(self, boxes, scores, idxs):
        return (batched_nms(boxes, scores, idxs, 0.5),
                batched_nms(boxes, scores, idxs, 0.3, max_output_size=3, score_threshold=0.25),
                batched_nms(boxes, scores, idxs, 0.0, max_output_size=0),
                nms(boxes, scores, 0.7, max_output_size=20),
                nms(boxes, scores, 0.49))


def nms_case(generator, count, groups):
    """Boxes with corners in either order, some of zero area, many equal scores."""
    corners = torch.rand(count, 2, 2, generator=generator)
    boxes = torch.cat([corners[:, 0], corners[:, 0] + 0.5 * corners[:, 1]], dim=1)
    flipped = torch.rand(count, generator=generator) < 0.2
    boxes[flipped] = boxes[flipped][:, [2, 3, 0, 1]]
    degenerate = torch.rand(count, generator=generator) < 0.05
    boxes[degenerate, 2] = boxes[degenerate, 0]
    scores = torch.round(torch.rand(count, generator=generator), decimals=1)
    return boxes, scores, torch.randint(0, groups, (count,), generator=generator)


@pytest.fixture(scope="module")
def nms_session(tmp_path_factory):
    size = torch.export.Dim("boxes")
    inputs = nms_case(torch.Generator().manual_seed(0), 50, 3)
    return onnx_session(NMSCases(), inputs, tmp_path_factory.mktemp("nms") / "nms.onnx",
                        dynamic_shapes=({0: size}, {0: size}, {0: size}))


@pytest.mark.parametrize("count, groups", [(300, 4), (40, 1), (200, 30), (1, 2), (0, 1)])
def test_onnx_nms_keeps_what_nms_keeps(nms_session, count, groups):
    inputs = nms_case(torch.Generator().manual_seed(count), count, groups)
    for kept, expected in zip(run_session(nms_session, *inputs), NMSCases()(*inputs)):
        np.testing.assert_array_equal(kept, expected.numpy())


def test_onnx_nms_breaks_ties_by_index_and_suppresses_above_the_threshold(nms_session):
    # Box 1 ties with box 0 and overlaps it by IoU 0.5 exactly: kept at threshold 0.5 (only
    # IoU > threshold suppresses), dropped at 0.49. Box 2 ties too and overlaps nothing.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5], [2.0, 2.0, 3.0, 3.0]])
    scores = torch.tensor([0.9, 0.9, 0.9])
    kept = run_session(nms_session, boxes, scores, torch.zeros(3, dtype=torch.int64))
    np.testing.assert_array_equal(kept[0], [0, 1, 2])
    np.testing.assert_array_equal(kept[4], [0, 2])


class RoIAligns(torch.nn.Module):
    def forward(self, features, rois):
        return (roi_align(features, rois, 7, spatial_scale=0.25, sampling_ratio=0, aligned=True),
                roi_align(features, rois, (5, 3), spatial_scale=0.5, sampling_ratio=2,
                          aligned=False))


def test_onnx_roi_align_pools_what_roi_align_pools(tmp_path):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 8, 32, 40, generator=generator)

    def rois(count):
        corners = torch.rand(count, 4, generator=generator) * 150
        corners[:, 2:] = corners[:, :2] + torch.rand(count, 2, generator=generator) * 80
        images = torch.randint(0, 2, (count, 1), generator=generator).float()
        return torch.cat([images, corners], dim=1)

    session = onnx_session(RoIAligns(), (features, rois(20)), tmp_path / "roi_align.onnx",
                           dynamic_shapes=(None, {0: torch.export.Dim("rois")}))
    for count in (50, 1, 0):
        inputs = (features, rois(count))
        for actual, expected in zip(run_session(session, *inputs), RoIAligns()(*inputs)):
            np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=1e-6)


class StableSorts(torch.nn.Module):
    def forward(self, values):
        return (*torch.sort(values, dim=1, descending=True, stable=True),
                *torch.sort(values, dim=0, stable=True))


def test_onnx_stable_sort_keeps_equal_values_in_index_order(tmp_path):
    values = torch.round(torch.rand(30, 400, generator=torch.Generator().manual_seed(2)),
                         decimals=1)
    session = onnx_session(StableSorts(), (values,), tmp_path / "sort.onnx")
    for actual, expected in zip(run_session(session, values), StableSorts()(values)):
        np.testing.assert_array_equal(actual, expected.numpy())


# ---------------------------------------------------------------------------------------------
# The exported reference model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(reference_weights):
    """The reference model as the export command loads it (same seeded MaskIoU head)."""
    return load_model(Config.from_json(CASE.config_path), reference_weights, progress=False)


@pytest.fixture(scope="module")
def onnx_file(reference_weights, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("export") / "reference.onnx"
    status = export_main(["--weights", str(reference_weights), "--config", str(CASE.config_path),
                          str(path)])
    assert status == 0
    return path


@pytest.fixture(scope="module")
def pt2_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "reference.pt2"
    return export_model(model, path, batch_size=2)


@pytest.fixture(scope="module")
def images():
    """The reference image and a smaller one of another aspect ratio."""
    image = CASE.images()[0]
    return [image, np.ascontiguousarray(image[::2, ::3])]


@pytest.fixture(scope="module")
def expected_results(model, images):
    return model.detect(images)


def reference_inputs(batch_size):
    return [np.repeat(REF[name], batch_size, axis=0) for name in REFERENCE_INPUTS]


def assert_matches_reference(outputs, batch_size):
    """Each image of the batch gives the reference's detections and masks (its own inputs)."""
    for b in range(batch_size):
        detections = outputs["detections"][b:b + 1]
        np.testing.assert_array_equal(detections[..., 4], REF["detections"][..., 4])
        np.testing.assert_allclose(detections, REF["detections"], rtol=0, atol=1e-5)
        assert_close_to_scale(outputs["mrcnn_mask"][b:b + 1], REF["mrcnn_mask"])


def assert_same_detections(actual, expected):
    """detect()'s results within the export tolerances: same classes in the same order, boxes
    within 1 pixel, scores within 1e-4, masks with IoU >= 0.98."""
    assert len(expected["class_ids"]) > 0
    np.testing.assert_array_equal(actual["class_ids"], expected["class_ids"])
    assert np.abs(actual["rois"].astype(np.int64) - expected["rois"]).max() <= 1
    for name in ("scores", "mask_scores"):
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=1e-4)
    intersection = (actual["masks"] & expected["masks"]).sum(axis=(0, 1))
    union = (actual["masks"] | expected["masks"]).sum(axis=(0, 1))
    assert np.all(intersection >= 0.98 * union)


def test_onnx_file_has_standard_operators_and_matterports_signature(onnx_file):
    import onnx

    graph = onnx.load(str(onnx_file))
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert not graph.functions
    assert {"NonMaxSuppression", "Gather"} <= {node.op_type for node in graph.graph.node}

    def shapes(values):
        return {value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
                for value in values}

    assert shapes(graph.graph.input) == {"input_image": [1, 256, 256, 3],
                                         "input_image_meta": [1, 16],
                                         "input_anchors": [1, 16368, 4]}
    assert shapes(graph.graph.output) == {"detections": [1, 100, 6],
                                          "mrcnn_mask": [1, 100, 28, 28, 4],
                                          "mask_iou": [1, 100, 4]}


def test_onnx_gives_the_reference_outputs(onnx_file, model):
    exported = ExportedModel(onnx_file)
    assert (exported.batch_size, exported.image_shape) == (1, (256, 256, 3))
    assert exported.config == model.config
    outputs = exported.run(*reference_inputs(1))
    assert_matches_reference(outputs, 1)
    with torch.no_grad():
        eager = InferenceGraph(model)(*[torch.from_numpy(v) for v in reference_inputs(1)])
    np.testing.assert_allclose(outputs["mask_iou"], eager[2].numpy(), rtol=0, atol=1e-4)


def test_onnx_detect_equals_detect(onnx_file, images, expected_results):
    results = ExportedModel(onnx_file).detect(images)
    for result, expected in zip(results, expected_results):
        assert_same_detections(result, expected)


def test_readme_snippet_runs_as_written(onnx_file, model, monkeypatch):
    code = code_block("Exporting: ONNX and a compiled PyTorch package", first_line="    import ")
    assert code.count('"coco.onnx"') == 2
    monkeypatch.chdir(ROOT)  # the snippet reads samples/
    namespace = {}
    exec(compile(code.replace('"coco.onnx"', repr(str(onnx_file))), "README.md", "exec"),
         namespace)
    # The step-by-step path, the last to set results (ExportedModel.detect has its own test).
    assert_same_detections(namespace["results"][0], model.detect(namespace["images"])[0])


def test_exported_model_refuses_inputs_of_other_shapes(onnx_file):
    exported = ExportedModel(onnx_file)
    with pytest.raises(ValueError, match=r"takes input_image of shape \[1, 256, 256, 3\]"):
        exported.run(*reference_inputs(2))
    with pytest.raises(TypeError, match="list of images"):
        exported.detect(CASE.images()[0])


PT2_SCRIPT = """
import sys
import numpy as np
import torch
library, package_path, inputs_path, outputs_path = sys.argv[1:]
torch.ops.load_library(library)
package = torch._inductor.aoti_load_package(package_path)
inputs = np.load(inputs_path)
with torch.inference_mode():
    outputs = package(*[torch.from_numpy(inputs[name]) for name in inputs.files])
assert not [name for name in sys.modules if name.split(".")[0] == "mrcnn"]
np.savez(outputs_path, **dict(zip(["detections", "mrcnn_mask", "mask_iou"],
                                  [output.numpy() for output in outputs])))
"""


def test_pt2_runs_in_a_process_with_only_torch_and_the_op_library(pt2_file, tmp_path):
    library = importlib.util.find_spec("mrcnn._C").origin
    np.savez(tmp_path / "inputs.npz", **dict(zip(REFERENCE_INPUTS, reference_inputs(2))))
    subprocess.run([sys.executable, "-c", PT2_SCRIPT, library, str(pt2_file),
                    str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
                   cwd=tmp_path, check=True)
    assert_matches_reference(dict(np.load(tmp_path / "outputs.npz")), 2)


def test_pt2_detect_equals_detect(pt2_file, model, images, expected_results):
    exported = ExportedModel(pt2_file)
    assert exported.config == model.config
    # Three images in batches of two: the second batch is filled up.
    results = exported.detect(images + images[:1])
    for result, expected in zip(results, expected_results + expected_results[:1]):
        assert_same_detections(result, expected)


def test_graph_inputs_are_the_reference_inputs(model):
    inputs, windows = graph_inputs(CASE.images(), model.config)
    for value, name in zip(inputs, REFERENCE_INPUTS):
        np.testing.assert_array_equal(value, REF[name])
    np.testing.assert_array_equal(windows, REF["windows"])


def test_cli_refuses_bad_arguments_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main(["--format", "pt2", str(tmp_path / "model.onnx")])
    assert "must end with .pt2" in capsys.readouterr().err
    config = tmp_path / "pad64.json"
    config.write_text(json.dumps({"IMAGE_RESIZE_MODE": "pad64", "IMAGE_MIN_DIM": 256}))
    # Never read: the size check comes first (build_config only checks that the file exists).
    (tmp_path / "unread.pth").write_bytes(b"")
    assert export_main(["--config", str(config), "--weights", str(tmp_path / "unread.pth"),
                        str(tmp_path / "model.onnx")]) == 1
    assert "--image-size" in capsys.readouterr().err
    assert export_main(["--config", str(config), "--image-size", "100", "128",
                        str(tmp_path / "model.onnx")]) == 1
    assert "multiples of 64" in capsys.readouterr().err
    assert not list(tmp_path.glob("*model*"))
