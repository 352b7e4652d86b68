"""demo.py: input collection, output names, score filtering, errors, and a run end to end with the
Keras reference weights whose JSON is checked against the model's own detections."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import demo
from mrcnn import cli, weights
from mrcnn.config import Config
from postprocess.visualize import draw_instances
from tests.reference import PUBLIC_CASE
from tests.test_cli import closed_port_url
from tests.test_image_limits import png_bomb

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = PUBLIC_CASE


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folders_are_sorted_and_filtered_to_images(tmp_path):
    for name in ("b.JPG", "a.png", "c.tiff", "notes.txt", "model.h5"):
        touch(tmp_path / "photos" / name)
    (tmp_path / "photos" / "sub.jpg").mkdir()
    touch(tmp_path / "photos" / "sub.jpg" / "deep.jpg")
    paths, problems = demo.collect_images([str(tmp_path / "photos")])
    assert [p.name for p in paths] == ["a.png", "b.JPG", "c.tiff"]
    assert problems == []


def test_globs_files_and_duplicates(tmp_path):
    for name in ("x/1.jpg", "x/2.png", "x/readme.md", "y/3.jpg", "odd.data"):
        touch(tmp_path / name)
    specs = [str(tmp_path / "**" / "*"), str(tmp_path / "odd.data"), str(tmp_path / "x" / "1.jpg"),
             str(tmp_path / "x")]
    paths, problems = demo.collect_images(specs)
    # The glob keeps images only and sorts; a named file is taken whatever its extension; a file
    # reached twice is processed once.
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "x/1.jpg", "x/2.png", "y/3.jpg", "odd.data"]
    assert problems == []


def test_inputs_that_give_nothing_are_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "text" / "a.txt")
    specs = [str(tmp_path / "missing.jpg"), str(tmp_path / "empty"), str(tmp_path / "text"),
             str(tmp_path / "*.png")]
    paths, problems = demo.collect_images(specs)
    assert paths == []
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "no such file or folder", "the folder holds no image files",
        "the folder holds no image files", "the pattern matches no image files"]


def test_output_names_never_collide():
    paths = [Path(p) for p in ("a/img.jpg", "b/img.jpg", "img.png", "IMG.bmp", "c/img-2.jpg",
                               "other.jpg")]
    assert demo.output_stems(paths) == ["img", "img-2", "img-3", "IMG-4", "img-2-2", "other"]


def result_of(scores, class_ids=None, shape=(4, 5)):
    count = len(scores)
    masks = np.zeros(shape + (count,), dtype=bool)
    for i in range(count):
        masks[i % shape[0], i % shape[1], i] = True
    return {"rois": np.arange(4 * count, dtype=np.int32).reshape(count, 4),
            "class_ids": np.asarray(class_ids or [1] * count, dtype=np.int32),
            "scores": np.asarray(scores, dtype=np.float32),
            "mask_scores": np.asarray(scores, dtype=np.float32) / 2,
            "masks": masks}


def test_min_score_selects_instances_in_every_array():
    result = result_of([0.95, 0.5, 0.9, 0.7], class_ids=[1, 2, 3, 1])
    selected = demo.select_instances(result, 0.7)
    keep = [0, 2, 3]
    for key in ("rois", "class_ids", "scores", "mask_scores"):
        np.testing.assert_array_equal(selected[key], result[key][keep])
    np.testing.assert_array_equal(selected["masks"], result["masks"][:, :, keep])
    # float32 0.9 passes --min-score 0.9 (compared at the score's precision).
    assert len(demo.select_instances(result_of([0.9]), np.float32(0.9))["scores"]) == 1
    assert demo.select_instances(result, None) is result
    assert demo.select_instances(result, 0.99)["masks"].shape == (4, 5, 0)


def test_summary_line():
    names = ["BG", "person", "dog"]
    assert demo.summary(result_of([]), names) == "0 instances"
    assert demo.summary(result_of([0.9]), names) == "1 instance (1 person)"
    assert demo.summary(result_of([0.9, 0.8, 0.7], [2, 1, 2]), names) == (
        "3 instances (2 dog, 1 person)")


def test_write_outputs_zero_detections(tmp_path):
    image = np.full((6, 7, 3), (10, 20, 30), dtype=np.uint8)
    written = demo.write_outputs(image, result_of([], shape=(6, 7)), tmp_path, "none", ["BG"],
                                 write_json=True)
    assert written == [tmp_path / "none.png", tmp_path / "none.json"]
    np.testing.assert_array_equal(cv2.imread(str(written[0]))[0, 0], (30, 20, 10))  # BGR on disk
    assert json.loads(written[1].read_text()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.json", "none.png"]


def test_json_of_a_coco_model_carries_cocos_category_ids(tmp_path):
    from mrcnn.config import COCO_CLASS_NAMES

    result = result_of([0.9, 0.8], class_ids=[70, 1])        # oven, person
    _, written = demo.write_outputs(np.zeros((4, 5, 3), np.uint8), result, tmp_path, "coco",
                                    COCO_CLASS_NAMES, write_json=True)
    entries = json.loads(written.read_text())
    assert [(e["category_id"], e["category_name"]) for e in entries] == [(79, "oven"),
                                                                         (1, "person")]
    assert demo.category_ids(COCO_CLASS_NAMES)[80] == 90                # toothbrush
    assert demo.category_ids(["BG", "balloon"]) is None


@pytest.mark.parametrize("argv, message", [
    (["--min-score", "1.5"], "--min-score must be in [0, 1]"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--max-pixels", "-3"], "--max-pixels: expected a pixel count >= 0, got '-3'"),
    (["--max-pixels", "many"], "--max-pixels: expected a pixel count >= 0, got 'many'"),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_precision_reaches_the_model_and_is_checked(tmp_path, monkeypatch, capsys):
    built = []

    def load_model(config, weights, device):
        built.append(config.PRECISION)
        raise cli.CliError("stopped before loading")

    monkeypatch.setattr(demo, "load_model", load_model)
    image = str(REFERENCE / "input_0_astronaut.png")
    for precision in ("bf16", "exact"):
        assert demo.main([image, "--precision", precision, "--out", str(tmp_path)]) == 1
    assert built == ["bf16", "exact"]
    with pytest.raises(SystemExit) as info:
        demo.main([image, "--precision", "fp16"])
    assert info.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_max_pixels_zero_lifts_the_budget():
    assert demo.build_parser().parse_args(["--max-pixels", "0"]).max_pixels is None
    assert demo.build_parser().parse_args([]).max_pixels == 2 ** 27


def test_no_images_is_an_error(tmp_path, capsys):
    assert demo.main([str(tmp_path / "nothing-*.jpg"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "matches no image files" in err and "error: no images to process" in err


def test_outputs_never_replace_inputs(tmp_path, capsys):
    image = touch(tmp_path / "photos" / "a.png",
                  cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1])
    before = image.read_bytes()
    status = demo.main([str(tmp_path / "photos"), "--out", str(tmp_path / "photos"),
                        "--weights", str(tmp_path / "absent.h5")])
    assert status == 1
    assert f"would overwrite the input {image}" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_missing_weights_file_through_the_script(tmp_path):
    image = touch(tmp_path / "a.png", cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1])
    completed = subprocess.run(
        [sys.executable, "demo.py", str(image), "--weights", str(tmp_path / "absent.h5"),
         "--out", str(tmp_path / "out"), "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr == f"error: weights file not found: {tmp_path / 'absent.h5'}\n"


def test_offline_without_weights_says_how_to_pass_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "COCO_WEIGHTS_URL", closed_port_url())
    status = demo.main([str(ROOT / "samples" / "chelsea.jpg"), "--out", str(tmp_path / "out"),
                        "--device", "cpu"])
    assert status == 1
    err = capsys.readouterr().err
    assert "You are offline or the URL is unreachable" in err and "--weights PATH" in err
    assert not list((tmp_path / "out").iterdir())


def test_help_names_every_option():
    text = demo.build_parser().format_help()
    for option in ("IMAGES", "--weights", "--config", "--out", "--json", "--device",
                   "--min-score", "--batch-size", "samples/", "--max-pixels", "decompression bombs",
                   "exit status is\nthen 1", "--precision"):
        assert option in text


@pytest.mark.filterwarnings("ignore::mrcnn.weights.MaskIoUHeadNotInFileWarning")
def test_end_to_end_with_the_reference_weights(tmp_path, reference_weights,
                                               fast_reference_config, capsys):
    from mrcnn.detector import MaskScoringRCNN
    from preprocess.images import load_image

    config = Config.from_json(fast_reference_config)
    names = config.class_names()
    image_path = REFERENCE / "input_0_astronaut.png"
    image = load_image(image_path)
    # The .h5 has no MaskIoU head: build it as load_model does, so mask scores can be compared.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cli.INIT_SEED)
        model = MaskScoringRCNN(config)
    model.load_weights(reference_weights)
    expected = model.detect([image])[0]
    # A threshold between two scores, so that --min-score visibly drops the weaker detections.
    scores = np.sort(expected["scores"])[::-1]
    assert len(scores) >= 4
    min_score = float(scores[2] + scores[3]) / 2
    keep = expected["scores"] >= min_score
    assert 3 <= keep.sum() < len(scores)

    # Bad inputs, in the same batches as the good image: each is reported and skipped.
    broken = touch(tmp_path / "in" / "broken.jpg", b"\xff\xd8 not really a jpeg")
    thin = touch(tmp_path / "in" / "thin.png",
                 cv2.imencode(".png", np.zeros((2, 3000), np.uint8))[1])
    bomb = touch(tmp_path / "in" / "bomb.png", png_bomb(24000))
    out = tmp_path / "out"
    status = demo.main([str(broken), str(image_path), str(thin), str(bomb),
                        "--weights", str(reference_weights),
                        "--config", str(fast_reference_config), "--out", str(out), "--json",
                        "--min-score", str(min_score), "--device", "cpu", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert status == 1                                     # the bad inputs are reported ...
    assert f"error: skipped {broken}: not a readable image" in captured.err
    assert f"error: skipped {thin}: a 2x3000 image scaled by" in captured.err
    assert "too thin for this resize mode" in captured.err
    assert f"error: skipped {bomb}: 24000x24000 pixels (576,000,000) is more than the limit" \
        in captured.err
    assert "error: skipped 3 input(s) (see above); the other images were written" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [       # ... and the other image written
        "input_0_astronaut.json", "input_0_astronaut.png"]
    assert f"{image_path}: {keep.sum()} instances (" in captured.out

    entries = json.loads((out / "input_0_astronaut.json").read_text())
    y1, x1, y2, x2 = expected["rois"][keep].T.astype(float)
    assert [e["bbox"] for e in entries] == np.stack([x1, y1, x2 - x1, y2 - y1], 1).tolist()
    assert [e["category_id"] for e in entries] == expected["class_ids"][keep].tolist()
    assert [e["category_name"] for e in entries] == [names[c] for c in
                                                     expected["class_ids"][keep]]
    np.testing.assert_allclose([e["score"] for e in entries], expected["scores"][keep],
                               rtol=1e-6)
    np.testing.assert_allclose([e["mask_score"] for e in entries],
                               expected["mask_scores"][keep], rtol=1e-6)
    decoded = mask_utils.decode([{"size": e["segmentation"]["size"],
                                  "counts": e["segmentation"]["counts"].encode()}
                                 for e in entries])
    np.testing.assert_array_equal(decoded.astype(bool), expected["masks"][:, :, keep])

    # The PNG is the input's size, in OpenCV's BGR order on disk, and shows the kept instances.
    annotated = cv2.cvtColor(cv2.imread(str(out / "input_0_astronaut.png")), cv2.COLOR_BGR2RGB)
    kept = {key: value[..., keep] if key == "masks" else value[keep]
            for key, value in expected.items()}
    # The reference weights have no trained MaskIoU head, so no mask scores are drawn.
    del kept["mask_scores"]
    np.testing.assert_array_equal(annotated, draw_instances(image, kept, names))
    assert (annotated != image).any(axis=2)[kept["masks"].any(axis=2)].mean() > 0.9
