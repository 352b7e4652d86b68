"""eval.py: clear errors before any long work, and end to end with the Keras reference weights on
three synthetic images."""
import contextlib
import io
import json
import os
import re
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import eval as eval_script
from preprocess import synthetic
from tests.bad_inputs import write_shapes, write_tiny_model
from tests.reference import ReferenceCase
from tests.test_cli import shape_only_h5

CASE = ReferenceCase("public_r50_256")
REFERENCE_CONFIG = str(CASE.config_path)
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Three 256x256 images of the reference model's three classes, in the COCO 2017 layout."""
    root = tmp_path_factory.mktemp("eval_cli") / "shapes"
    synthetic.write_dataset(root, 0, 3, seed=2, size=256, progress=False,
                            categories=("circle", "square", "triangle"))
    return root


@pytest.fixture(scope="module")
def reference_weights(request):
    return CASE.weights(request.config.cache.mkdir("reference-weights"))


def run_eval(args, capsys):
    """(exit code, stdout, stderr) of eval.py with `args`."""
    try:
        eval_script.main([str(arg) for arg in args])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_explains_layouts_scores_and_processes(capsys):
    code, out, _ = run_eval(["--help"], capsys)
    assert code == 0
    for text in ("DIR/annotations/instances_NAME.json", "minival2014", "--annotations A.json",
                 "--mask-score", "class score x the predicted IoU", "NUM_CLASSES",
                 "torchrun --nproc_per_node", "summary.json", "--limit", "--batch-size",
                 "--device", "--min-confidence", "--config"):
        assert text in out, text


@pytest.mark.parametrize("args, message", [
    (["--dataset", "D", "--split", "val", "--annotations", "A.json", "--images", "I"],
     "not both"),
    (["--dataset", "D"], "needs --dataset DIR and --split NAME"),
    (["--annotations", "A.json"], "needs --dataset DIR and --split NAME"),
    (["--dataset", "D", "--split", "val", "--limit", "0"], "--limit must be at least 1"),
    (["--dataset", "D", "--split", "val", "--batch-size", "0"], "--batch-size must be at least"),
    (["--dataset", "D", "--split", "val", "--min-confidence", "1.5"], r"must be in \[0, 1\]"),
    (["--dataset", "D", "--split", "val", "--precision", "fp16"], "invalid choice: 'fp16'"),
])
def test_bad_option_combinations(args, message, capsys):
    code, _, err = run_eval(args + ["--weights", "W.h5"], capsys)
    assert code == 2
    assert re.search(message, err), err


def test_inputs_are_checked_before_the_model_is_built(shapes, tmp_path, capsys):
    out_dir = tmp_path / "out"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"NUM_CLASSES": 4, "BACKBONE": "resnet50"}))
    # Only the shapes that tell the backbone and class count (COCO's): never loaded.
    weights = shape_only_h5(tmp_path / "w.h5", 81, 23)
    layout = ["--dataset", shapes, "--split", "val"]
    common = ["--weights", weights, "--config", config, "--out", out_dir]

    def error_of(args):
        code, _, err = run_eval(args, capsys)
        assert code == 2 and err.startswith("eval.py: error: "), err
        return err

    assert "weights file not found: " in error_of(
        layout + ["--weights", tmp_path / "none.h5", "--out", out_dir])
    assert "split 'test' of" in error_of(["--dataset", shapes, "--split", "test"] + common)

    not_coco = tmp_path / "results.json"
    not_coco.write_text("[]")
    assert "is not a COCO instances file" in error_of(
        ["--annotations", not_coco, "--images", shapes / "val"] + common)
    malformed = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    malformed["annotations"][1]["bbox"] = [1, 2, 3]
    (tmp_path / "malformed.json").write_text(json.dumps(malformed))
    err = error_of(["--annotations", tmp_path / "malformed.json", "--images", shapes / "val",
                    "--strict"] + common)
    assert f"annotation {malformed['annotations'][1]['id']}: bbox must be [x, y, width, height]" \
        in err
    # Without --strict the annotation is skipped with a warning, and the next check fails.
    code, _, err = run_eval(["--annotations", tmp_path / "malformed.json", "--images",
                             shapes / "val", "--weights", weights, "--config", config,
                             "--out", tmp_path / "out2"], capsys)
    assert code == 2 and err.startswith(f"warning: {tmp_path / 'malformed.json'}: skipped 1 "
                                        "annotation: 1 unreadable")
    malformed["categories"][0]["name"] = None
    (tmp_path / "malformed.json").write_text(json.dumps(malformed))
    assert "category 1: name must be a string, got NoneType None" in error_of(
        ["--annotations", tmp_path / "malformed.json", "--images", shapes / "val"] + common)

    partial = tmp_path / "partial"
    partial.mkdir()
    os.link(shapes / "val" / "000001.png", partial / "000001.png")
    err = error_of(["--annotations", shapes / "annotations" / "instances_val.json",
                    "--images", partial] + common)
    assert "2 of the 3 images to evaluate" in err and "000002.png" in err
    # --limit 1 needs only the first image.
    config.write_text(json.dumps({"NUM_CLASSES": 7}))
    err = error_of(["--annotations", shapes / "annotations" / "instances_val.json",
                    "--images", partial, "--limit", 1] + common)
    assert "the model has NUM_CLASSES 7 (from " in err
    assert "has 3 categories (NUM_CLASSES 4 with the background)" in err

    config.write_text(json.dumps({"NUM_CLASES": 4}))
    assert "unknown Config field(s) ['NUM_CLASES']" in error_of(layout + common)
    not_weights = tmp_path / "w.pth"
    not_weights.write_bytes(b"not a checkpoint")
    assert "neither a Keras .h5 file nor a PyTorch checkpoint" in error_of(
        layout + ["--weights", not_weights, "--out", out_dir])
    assert "Matterport's COCO evaluation settings" in error_of(
        layout + ["--weights", weights, "--out", out_dir])  # 81 classes for a 3-category set
    assert not out_dir.exists()


def test_end_to_end_with_the_reference_weights(shapes, reference_weights, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_eval(["--dataset", shapes, "--split", "val",
                               "--weights", reference_weights, "--config", REFERENCE_CONFIG,
                               "--device", "cpu", "--out", out_dir, "--precision", "tf32"],
                              capsys)
    assert code == 0, err
    # Both standard tables, as pycocotools prints them.
    assert out.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]") == 2
    assert out.count("Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]") == 2
    assert "3 images" in out
    assert "has no trained MaskIoU head" in err and "--mask-score cls" in err
    assert "detections with a class score >= 0.0 count (Matterport's COCO evaluation " \
           "setting)" in err

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["image_count"] == 3 and summary["processes"] == 1
    assert summary["mask_score"] == "maskiou" and summary["seconds_per_image"] > 0
    # The reference config keeps detections from 0.93; an evaluation keeps every detection.
    assert summary["weights"] == str(reference_weights) and summary["min_confidence"] == 0.0
    assert summary["precision"] == "tf32"
    bbox = json.loads((out_dir / "bbox_results.json").read_text())
    segm = json.loads((out_dir / "segm_results.json").read_text())
    assert len(bbox) == len(segm) == summary["detections"] > 0
    assert {entry["category_id"] for entry in bbox} <= {1, 2, 3}
    for box, mask in zip(bbox, segm):
        assert mask["score"] == mask["mask_score"] == box["mask_score"]
        assert 0 <= box["score"] <= 1
    assert min(box["score"] for box in bbox) < 0.93

    # The summary holds what pycocotools makes of the written files.
    ground_truth = COCO(str(shapes / "annotations" / "instances_val.json"))
    for iou_type, entries in (("bbox", bbox), ("segm", segm)):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(entries), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        assert list(summary[iou_type]) == STAT_NAMES
        np.testing.assert_allclose(list(summary[iou_type].values()), evaluation.stats)


def test_torchrun_environment_joins_a_gloo_group_on_the_cpu(monkeypatch):
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    device = eval_script.join_processes("cpu")
    try:
        assert device == torch.device("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()


def test_without_torchrun_no_group_is_joined(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert eval_script.join_processes("cpu") == torch.device("cpu")
    assert not dist.is_initialized()


def test_unreadable_weights_and_differing_class_names(shapes, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"NUM_CLASSES": 4, "BACKBONE": "resnet50",
                                  "CLASS_NAMES": ["BG", "circle", "box", "Triangle"]}))
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # an HDF5 signature, then nothing
    code, _, err = run_eval(["--dataset", shapes, "--split", "val", "--weights", weights,
                             "--config", config, "--out", tmp_path / "out"], capsys)
    assert code == 2
    # Case does not count; 'box' is not 'square'.
    assert "1 class names of the config differ" in err and "class 2: 'box' vs 'square'" in err
    assert f"eval.py: error: {weights}" in err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.pth")


def test_messy_dataset_is_clipped_skipped_and_scored(tiny_model, tmp_path, capsys):
    """Annotations that crashed or hung pycocotools, are degenerate, or reach past their image,
    and images that cannot be processed: the evaluation runs, counts them and exits with 1."""
    _, image_dir, data = write_shapes(tmp_path / "shapes")
    image_dir = Path(image_dir)
    annotations = data["annotations"]
    first = annotations[0]
    extra = [
        {"segmentation": [[1, 2, None, 4, 5, 6]]},                       # crashed pycocotools
        {"segmentation": [[1, 2, float("nan"), 4, 5, 6]]},
        {"segmentation": {"size": [64, 64], "counts": "05"}},           # hung pycocotools
        {"segmentation": {"size": [64, 64], "counts": "0e"}},
        {"segmentation": []},                                             # degenerate
        {"segmentation": [[10, 10, 20, 20]]},
        {"segmentation": [[5, 5, 1e300, 5, 30, 40]], "bbox": [5, 5, 62, 35]},  # clipped
    ]
    annotations += [dict(first, id=1000 + number, **change) for number, change in enumerate(extra)]
    # Two images that cannot be processed: unreadable, and too thin for the 128 px square.
    data["images"] += [{"id": 50, "file_name": "broken.png", "height": 64, "width": 64},
                       {"id": 51, "file_name": "thin.png", "height": 2, "width": 3000}]
    (image_dir / "broken.png").write_bytes(b"junk")
    cv2.imwrite(str(image_dir / "thin.png"), np.zeros((2, 3000), np.uint8))
    messy = tmp_path / "messy.json"
    messy.write_text(json.dumps(data))
    out_dir = tmp_path / "out"
    code, out, err = run_eval(["--annotations", messy, "--images", image_dir, "--weights",
                               tiny_model, "--device", "cpu", "--out", out_dir, "--quiet",
                               "--mask-score", "cls"], capsys)
    assert code == 1
    assert err.startswith(f"warning: {messy}: clipped 1 annotation to their image (box or "
                          "polygons past the border: 1006); skipped 6 annotations: 4 unreadable "
                          "(annotation 1000: polygon coordinates must be numbers, got None; also "
                          "1001, 1002, 1003); 2 degenerate (annotation 1004: ")
    assert f"warning: skipped {image_dir / 'broken.png'}: not a readable image" in err
    assert f"warning: skipped {image_dir / 'thin.png'}: a 2x3000 image" in err
    assert err.rstrip().endswith("eval.py: error: skipped 2 of the 5 images (see above and "
                                 "summary.json); the scores are those of the others")
    assert "COCO segm on 3 images" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["image_count"] == 3 and len(summary["skipped_images"]) == 2
    assert summary["dataset_repairs"] == {
        "clipped": 1, "skipped": {"unreadable": 4, "degenerate": 2, "empty": 0}}
    assert summary["detections"] > 0 and 0 <= summary["segm"]["AP"] <= 1


def test_the_class_count_and_names_default_to_the_datasets(shapes, tmp_path):
    import argparse

    from preprocess.coco import CocoDataset, coco_layout

    dataset = CocoDataset(*coco_layout(shapes, "val"))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"BACKBONE": "resnet50"}))
    (tmp_path / "w.pth").write_bytes(b"not read: --config describes the model")
    args = argparse.Namespace(config=str(config_file), weights=str(tmp_path / "w.pth"),
                              min_confidence=None, precision=None)
    config, _ = eval_script._config(args, dataset)
    assert config.NUM_CLASSES == 4
    assert config.class_names() == ["BG", "circle", "square", "triangle"]
    # An .h5 without --config: the file's backbone and class count, the dataset's names.
    args = argparse.Namespace(config=None, weights=str(shape_only_h5(tmp_path / "w.h5", 4, 6)),
                              min_confidence=None, precision=None)
    config, source = eval_script._config(args, dataset)
    assert (config.BACKBONE, config.NUM_CLASSES) == ("resnet50", 4)
    assert config.class_names() == ["BG", "circle", "square", "triangle"]
    assert config.IMAGES_PER_GPU == 1
