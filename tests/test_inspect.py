"""postprocess.inspect and the pieces it adds: the stage methods it reads (against the Keras
reference), the box drawing primitives (against hand-computed pixels) and the command end to end
with the reference weights."""
import json

import cv2
import numpy as np
import pytest
import torch

from mrcnn.anchors import pyramid_anchors
from mrcnn.boxes import denorm_boxes, norm_boxes
from mrcnn.config import Config
from mrcnn.detection import DetectionLayer
from mrcnn.rpn import ProposalLayer
from mrcnn.targets import detection_targets, rpn_targets
from mrcnn.training import pixel_anchors
from postprocess import inspect
from postprocess.visualize import (draw_boxes, draw_caption, instance_colors, score_colors,
                                   write_png)
from mrcnn.molding import resize_image
from tests.reference import PUBLIC_CASE

REFERENCE = PUBLIC_CASE
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REFERENCE / "outputs.npz"))


@pytest.fixture(scope="module")
def ref_config():
    return Config.from_json(REFERENCE / "config.json")


# What the pictures read of the proposal and detection layers, fed the reference's own inputs.

def reference_proposals(ref, config):
    layer = ProposalLayer(config.PRE_NMS_LIMIT, config.RPN_NMS_THRESHOLD, config.RPN_BBOX_STD_DEV)
    return layer.propose(torch.from_numpy(ref["rpn_class"]), torch.from_numpy(ref["rpn_bbox"]),
                         torch.from_numpy(ref["anchors"][0]), 1000)


def test_proposal_candidates_are_the_best_scored_anchors_refined(ref, ref_config):
    proposals = reference_proposals(ref, ref_config)
    foreground = ref["rpn_class"][0, :, 1]
    expected = np.argsort(-foreground, kind="stable")[:6000]  # ties: lower anchor first
    np.testing.assert_array_equal(proposals.candidate_ids[0].numpy(), expected)
    np.testing.assert_array_equal(proposals.candidate_scores[0].numpy(), foreground[expected])
    # Every proposal is one of these refined anchors, refined as Keras refined it.
    anchor_ids = ref["rpn_roi_anchor_ids"][0]
    used = anchor_ids >= 0
    position = np.searchsorted(np.sort(expected), anchor_ids[used])
    rows = np.argsort(expected)[position]
    np.testing.assert_array_equal(expected[rows], anchor_ids[used])
    np.testing.assert_allclose(proposals.candidate_boxes[0, rows].numpy(),
                               ref["rpn_rois"][0, used], rtol=0, atol=1e-6)


def test_proposals_carry_their_anchor_and_its_score(ref, ref_config):
    proposals = reference_proposals(ref, ref_config)
    np.testing.assert_allclose(proposals.rois.numpy(), ref["rpn_rois"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(proposals.scores.numpy(), ref["rpn_roi_scores"])
    np.testing.assert_array_equal(proposals.anchor_ids.numpy(), ref["rpn_roi_anchor_ids"])


def test_detections_come_with_each_roi_refined_by_its_best_class(ref, ref_config):
    layer = DetectionLayer(ref_config.BBOX_STD_DEV, ref_config.DETECTION_MIN_CONFIDENCE,
                           ref_config.DETECTION_NMS_THRESHOLD, 100)
    metas = torch.from_numpy(ref["image_metas"])
    windows = norm_boxes(metas[:, 7:11], metas[0, 4:6])
    inputs = [torch.from_numpy(ref[name]) for name in ("rpn_rois", "mrcnn_class", "mrcnn_bbox")]
    detected = layer.detect(*inputs, windows)
    torch.testing.assert_close(detected.detections, layer(*inputs, windows), rtol=0, atol=0)
    scores, class_ids, refined = detected.roi_scores, detected.roi_class_ids, detected.refined_rois

    probs = ref["mrcnn_class"][0].astype(np.float64)
    best = probs.argmax(axis=1)
    np.testing.assert_array_equal(class_ids[0].numpy(), best)
    np.testing.assert_allclose(scores[0].numpy(), probs.max(axis=1), rtol=1e-7)
    # Plain float64 box arithmetic: centre/size shifted by the class deltas x BBOX_STD_DEV.
    rois = ref["rpn_rois"][0].astype(np.float64)
    deltas = ref["mrcnn_bbox"][0, np.arange(len(best)), best] * np.array(ref_config.BBOX_STD_DEV)
    size = rois[:, 2:] - rois[:, :2]
    centre = rois[:, :2] + 0.5 * size + deltas[:, :2] * size
    size = size * np.exp(deltas[:, 2:])
    expected = np.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=1)
    window = windows[0].numpy().astype(np.float64)
    expected = np.clip(expected, window[[0, 1, 0, 1]], window[[2, 3, 2, 3]])
    np.testing.assert_allclose(refined[0].numpy(), expected, rtol=0, atol=1e-5)
    # The reference detections are refined ROIs with their class and score.
    detections = ref["detections"][0]
    detections = detections[detections[:, 4] > 0]
    distance = np.abs(refined[0].numpy()[None] - detections[:, None, :4]).max(axis=2)
    nearest = distance.argmin(axis=1)
    assert (distance[np.arange(len(nearest)), nearest] < 1e-5).all()
    np.testing.assert_array_equal(best[nearest], detections[:, 4])


# Drawing primitives, checked pixel by pixel.

def blank(height=20, width=30):
    return np.zeros((height, width, 3), np.uint8)


def painted(image, color):
    return np.all(image == color, axis=2)


def outline_mask(shape, y1, x1, y2, x2, thickness=1):
    """Pixels of the outline of box (y1, x1, y2, x2), y2/x2 exclusive, drawn inward."""
    mask = np.zeros(shape, bool)
    inner = np.zeros(shape, bool)
    mask[y1:y2, x1:x2] = True
    inner[y1 + thickness:y2 - thickness, x1 + thickness:x2 - thickness] = True
    return mask & ~inner


def test_solid_boxes_are_outlined_inside_the_box():
    drawn = draw_boxes(blank(), [[2, 3, 10, 12], [12, 15, 18, 29]], [RED, GREEN], thickness=1)
    np.testing.assert_array_equal(painted(drawn, RED), outline_mask((20, 30), 2, 3, 10, 12))
    np.testing.assert_array_equal(painted(drawn, GREEN), outline_mask((20, 30), 12, 15, 18, 29))
    thick = draw_boxes(blank(), [[2, 3, 10, 12]], BLUE, thickness=2)
    np.testing.assert_array_equal(painted(thick, BLUE), outline_mask((20, 30), 2, 3, 10, 12, 2))


def test_refined_boxes_dash_the_original_and_join_the_corners():
    drawn = draw_boxes(blank(40, 40), [[2, 2, 12, 20]], RED, refined_boxes=[[20, 20, 36, 36]],
                       thickness=1)
    red = painted(drawn, RED)
    # The refinement is solid.
    np.testing.assert_array_equal(red[20:36, 20:36], outline_mask((40, 40), 20, 20, 36, 36)[20:36,
                                                                                           20:36])
    # The original's top edge runs from x = 2 in dashes of 4 pixels and gaps of 4.
    np.testing.assert_array_equal(red[2, 2:20], [1, 1, 1, 1, 0, 0, 0, 0] * 2 + [1, 1])
    np.testing.assert_array_equal(red[2:12, 2], [1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    # A line joins the top-left corners: the midpoint between them is painted.
    assert drawn[11, 11].any()
    assert not drawn[30, 5].any()


def test_boxes_outside_the_image_draw_only_what_is_inside():
    drawn = draw_boxes(blank(), [[-5, -5, 8, 40]], RED, thickness=1)
    red = painted(drawn, RED)
    expected = np.zeros((20, 30), bool)
    expected[7, :] = True  # bottom edge at y2 - 1; the other edges lie outside
    np.testing.assert_array_equal(red, expected)
    # A far-off box costs no more than the image, and shows nothing.
    assert not draw_boxes(blank(), [[-1e12, -1e12, -1e11, 1e12]], RED).any()
    assert not draw_boxes(blank(), [[30, 40, 60, 80]], RED).any()


def test_zero_size_box_and_no_boxes():
    drawn = draw_boxes(blank(), [[5, 6, 5, 6]], RED, thickness=1)
    assert painted(drawn, RED).sum() == 1 and painted(drawn, RED)[5, 6]
    image = np.full((20, 30, 3), 7, np.uint8)
    np.testing.assert_array_equal(draw_boxes(image, np.zeros((0, 4)), np.zeros((0, 3)),
                                             labels=[], refined_boxes=np.zeros((0, 4))), image)


def test_labels_are_written_above_their_box():
    drawn = draw_boxes(blank(100, 100), [[50, 10, 90, 90]], WHITE, labels=["cat 0.9"],
                       thickness=1)
    assert painted(drawn[:50], WHITE).sum() > 50  # the filled label box
    assert not drawn[:30].any()


def test_bad_boxes_are_refused():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        draw_boxes(blank(), [[1, 2, 3]], RED)
    with pytest.raises(ValueError, match="finite"):
        draw_boxes(blank(), [[1, 2, np.nan, 4]], RED)
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        draw_boxes(blank(), [[1, 2, 3, 4]], RED, labels=["a", "b"])
    with pytest.raises(ValueError, match="refined boxes for 1 boxes"):
        draw_boxes(blank(), [[1, 2, 3, 4]], RED, refined_boxes=np.zeros((2, 4)))


def test_score_colors_run_from_blue_to_red():
    np.testing.assert_array_equal(score_colors([0.2, 0.6, 1.0]), [BLUE, GREEN, RED])
    np.testing.assert_array_equal(score_colors([0.5, 0.5]), [RED, RED])
    np.testing.assert_array_equal(score_colors([-1.0, 2.0], low=0.0, high=1.0), [BLUE, RED])
    assert score_colors([]).shape == (0, 3)


def test_captions_wrap_at_the_top_and_leave_the_rest():
    image = np.full((200, 120, 3), 90, np.uint8)
    short = draw_caption(image, "P2")
    long = draw_caption(image, "P2: stride 4, scale 32, 12288 anchors over the molded image")
    rows = lambda drawn: np.flatnonzero((drawn != image).any(axis=(1, 2)))  # noqa: E731
    assert rows(short)[0] == 0 and rows(long)[0] == 0
    assert rows(long)[-1] > 2 * rows(short)[-1]  # several lines
    assert rows(long)[-1] < 100
    np.testing.assert_array_equal(image[100:], long[100:])


def test_write_png_round_trips_rgb(tmp_path):
    image = np.zeros((3, 4, 3), np.uint8)
    image[..., 0] = 200  # red
    path = tmp_path / "sub" / "a.png"
    write_png(path, image)
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], image)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]


# The pictures.

def test_anchor_pictures_draw_the_centre_cell_and_a_thinned_grid():
    config = Config(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    anchors = denorm_boxes(torch.from_numpy(pyramid_anchors(config, (128, 128))), (128, 128))
    canvas = np.full((128, 128, 3), 60, np.uint8)
    pictures = inspect.anchor_pictures(canvas, anchors.numpy().astype(np.int64), config)
    assert [p.name for p in pictures] == [f"anchors_p{level}.png" for level in range(2, 7)]
    assert pictures[0].title == "P2: stride 4, scale 32, 3072 anchors"  # 32 x 32 cells x 3
    p2 = pictures[0].image
    # The centre cell (16, 16) sits at pixel (64, 64); its square anchor spans 48..80.
    ratio_colors = instance_colors(np.arange(3))
    square = painted(p2, ratio_colors[1])
    assert square[48, 56:72].all() and square[79, 56:72].all() and square[56:72, 48].all()
    assert not square[40].any()
    # The tall anchor (width/height 0.5) is 45.25 x 22.6: rows 41..86, columns 53..74.
    tall = painted(p2, ratio_colors[0])
    assert tall[41, 56:72].all() and tall[86, 56:72].all() and tall[56:72, 53].all()
    # 32 cells thinned to every 2nd: dots at 0, 8, 16, ... pixels, none at 4.
    dots = painted(p2, WHITE)
    assert dots[120, 120] and dots[112, 8] and not dots[116, 116] and not dots[124, 124]
    assert "reaching outside" not in pictures[1].details
    assert "reaching outside" in pictures[4].details  # P6: 512-pixel anchors


def test_parser_help_lists_every_output():
    text = inspect.build_parser().format_help()
    for name in inspect.output_names(Config()):
        if not name.startswith("anchors_p") or name in ("anchors_p2.png", "anchors_p6.png"):
            assert name in text


# The command end to end.

def run(argv, capsys):
    status = inspect.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 300 x 200 crop of the reference image: its molded form (256 x 256) differs in size."""
    image = cv2.imread(str(REFERENCE / "input_0_astronaut.png"))[150:450, 150:350]
    path = tmp_path_factory.mktemp("input") / "crop.png"
    cv2.imwrite(str(path), image)
    return path, image[..., ::-1]


def test_end_to_end_writes_every_stage(tmp_path, capsys, crop, reference_weights,
                                       fast_reference_config):
    path, image = crop
    out = tmp_path / "out"
    status, stdout, stderr = run(["--image", path, "--weights", reference_weights, "--config",
                                  fast_reference_config, "--device", "cpu", "--out", out,
                                  "--top", 10], capsys)
    assert status == 0, stderr
    config = Config.from_json(fast_reference_config)
    names = inspect.output_names(config)
    lines = stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(out / name) for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files left
    molded = resize_image(image, 256, 256, mode="square")[0]
    for name in names:
        drawn = cv2.imread(str(out / name))[..., ::-1]
        background = image if name == "detections.png" else molded
        assert drawn.shape == background.shape, name
        # A title at the top, and drawings below it.
        assert (drawn[:8, :40] != background[:8, :40]).any(), name
        assert (drawn[40:] != background[40:]).any(), name
    assert "P2: stride 4, scale 32, 12288 anchors" in lines[0]
    assert "the 10 of 16368 anchors" in stdout
    assert "no mask scores" in stdout  # Matterport-style weights: untrained MaskIoU head


def test_missing_and_broken_images_are_reported(tmp_path, capsys):
    status, _, err = run(["--image", tmp_path / "nope.jpg", "--out", tmp_path / "o"], capsys)
    assert status == 1 and err.startswith("error: image file not found") and "nope.jpg" in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    status, _, err = run(["--image", broken, "--out", tmp_path / "o"], capsys)
    assert status == 1 and "broken.png: not a readable image" in err
    status, _, err = run(["--image", tmp_path, "--out", tmp_path / "o"], capsys)
    assert status == 1 and "is a directory" in err


def test_bad_options_are_refused(tmp_path, capsys, crop):
    with pytest.raises(SystemExit) as exit_info:
        run(["--image", crop[0], "--top", 0], capsys)
    assert exit_info.value.code == 2 and "--top must be >= 1" in capsys.readouterr().err
    config = tmp_path / "crop.json"
    config.write_text('{"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 256}')
    status, _, err = run(["--image", crop[0], "--out", tmp_path, "--config", config], capsys)
    assert status == 1 and "IMAGE_RESIZE_MODE 'crop' takes random crops for training" in err
    (tmp_path / "file").write_text("")
    status, _, err = run(["--image", crop[0], "--out", tmp_path / "file"], capsys)
    assert status == 1 and "exists and is not a directory" in err


def test_an_input_named_like_an_output_is_never_replaced(tmp_path, capsys, crop,
                                                         fast_reference_config):
    victim = tmp_path / "rois.png"
    victim.write_bytes(crop[0].read_bytes())
    status, _, err = run(["--image", victim, "--out", tmp_path, "--config",
                          fast_reference_config, "--weights", tmp_path / "missing.h5"], capsys)
    # The weights are looked at only after the outputs are known to be safe.
    assert status == 1 and "would overwrite the input" in err
    assert victim.read_bytes() == crop[0].read_bytes()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Two 200 x 200 validation images of circles, squares and triangles (NUM_CLASSES 4, as the
    reference model has)."""
    from preprocess.synthetic import write_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    write_dataset(root, 0, 2, seed=0, size=200, progress=False,
                  categories=("circle", "square", "triangle"))
    return root


def test_dataset_images_are_chosen_by_coco_id_with_clear_errors(tmp_path, capsys, shapes):
    status, _, err = run(["--dataset", shapes, "--split", "val", "--image-id", 9, "--out",
                          tmp_path], capsys)
    assert status == 1
    assert err.strip().endswith("instances_val.json has no image with id 9; its 2 images have "
                                "ids 1 to 2")
    status, _, err = run(["--dataset", shapes, "--split", "test", "--image-id", 1], capsys)
    assert status == 1 and "split 'test' of" in err and "incomplete" in err
    status, _, err = run(["--dataset", shapes, "--split", "train", "--image-id", 1], capsys)
    assert status == 1 and "instances_train.json has no image with id 1; it has no images" in err
    config = tmp_path / "coco.json"
    config.write_text('{"NUM_CLASSES": 81}')
    status, _, err = run(["--dataset", shapes, "--split", "val", "--image-id", 1, "--config",
                          config, "--out", tmp_path], capsys)
    assert status == 1 and "the model has NUM_CLASSES 81 but" in err
    assert "has 3 categories (NUM_CLASSES 4 with the background)" in err


def test_dataset_options_go_together(capsys, shapes, crop):
    for argv in (["--image", crop[0], "--image-id", 1],
                 ["--dataset", shapes, "--split", "val"],
                 ["--image-id", "one", "--dataset", shapes, "--split", "val"],
                 []):
        with pytest.raises(SystemExit) as exit_info:
            run(argv, capsys)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "--image" in err or "--image-id" in err, err


def test_a_broken_dataset_image_is_reported(tmp_path, capsys, shapes):
    import shutil

    copy = tmp_path / "shapes"
    shutil.copytree(shapes, copy)
    (copy / "val" / "000001.png").write_bytes(b"garbage")
    (copy / "val" / "000002.png").unlink()
    status, _, err = run(["--dataset", copy, "--split", "val", "--image-id", 1], capsys)
    assert status == 1 and "000001.png: not a readable image" in err
    status, _, err = run(["--dataset", copy, "--split", "val", "--image-id", 2], capsys)
    assert status == 1 and "000002.png" in err and "image file not found" in err


# Ground truth and training targets.

def test_positive_rpn_targets_land_on_their_instance():
    config = Config(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    canvas = np.full((128, 128, 3), 60, np.uint8)
    anchors = pixel_anchors(config, (128, 128), "cpu")
    # The box of P2's centre-cell square anchor, and a box no anchor fits well.
    gt_boxes = torch.tensor([[[48, 48, 80, 80], [5, 90, 30, 126]]], dtype=torch.int32)
    match, deltas = rpn_targets(anchors, gt_boxes, torch.tensor([[1, 2]]), 256,
                                config.RPN_BBOX_STD_DEV, generator=torch.Generator())
    positive, negative = inspect.rpn_target_pictures(canvas, anchors, match[0], deltas[0],
                                                     config)
    # Every positive anchor is moved onto its instance's box: both outlines are solid.
    green = painted(positive.image, inspect.POSITIVE_COLOR)
    for y1, x1, y2, x2 in gt_boxes[0].tolist():
        assert green[outline_mask((128, 128), y1, x1, y2, x2)].all()
    positives = int((match == 1).sum())
    assert positives >= 2  # each instance has at least its best anchor
    assert positive.title == f"RPN targets: {positives} positive anchors"
    assert negative.title == f"RPN targets: {256 - positives} negative anchors"
    assert painted(negative.image, inspect.NEGATIVE_COLOR).any()


def test_detection_targets_fill_the_roi_with_the_mask_and_move_it_onto_the_box():
    config = Config(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, NUM_CLASSES=3, TRAIN_ROIS_PER_IMAGE=8)
    hw = (128, 128)
    # The instance's own box; one covering half of it and a little more (IoU 25/49: positive
    # too); one far off (negative).
    proposals = norm_boxes(torch.tensor([[[40, 40, 90, 90], [40, 40, 90, 66], [0, 0, 10, 10]]]),
                           hw)
    gt_boxes = torch.tensor([[[40, 40, 90, 90]]])
    targets = detection_targets(proposals, torch.tensor([[2]]), norm_boxes(gt_boxes, hw),
                                torch.ones(1, 1, 56, 56, dtype=torch.bool),
                                rois_per_image=8, generator=torch.Generator())
    canvas = np.full((128, 128, 3), 60, np.uint8)
    picture = inspect.detection_target_picture(
        canvas, targets.rois[0], targets.class_ids[0], targets.deltas[0], targets.masks[0],
        config, ["BG", "cat", "dog"])
    assert picture.title == "Detection targets: 2 positive ROIs"
    assert "with 1 negative (not drawn)" in picture.details
    dog = instance_colors([2])[0]
    # Both ROIs are moved onto the instance's box: its outline is solid in the class colour.
    assert painted(picture.image, dog)[outline_mask(hw, 40, 40, 90, 90)].all()
    # The mask targets (all ones) fill the ROIs; outside them the image is untouched.
    assert (picture.image[60:85, 45:85] != 60).any(axis=2).all()
    assert (picture.image[100:, :] == 60).all() and (picture.image[:, 100:] == 60).all()


def test_end_to_end_with_a_dataset_draws_ground_truth_and_targets(tmp_path, capsys, shapes,
                                                                 reference_weights,
                                                                 fast_reference_config):
    out = tmp_path / "out"
    status, stdout, stderr = run(["--dataset", shapes, "--split", "val", "--image-id", 2,
                                  "--weights", reference_weights, "--config",
                                  fast_reference_config, "--device", "cpu", "--out", out,
                                  "--top", 5], capsys)
    assert status == 0, stderr
    names = inspect.output_names(Config.from_json(fast_reference_config), with_dataset=True)
    assert names[-4:] == ["ground_truth.png", "rpn_targets_positive.png",
                          "rpn_targets_negative.png", "detection_targets.png"]
    lines = stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(out / name) for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    annotations = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    instances = sum(a["image_id"] == 2 for a in annotations["annotations"])
    assert f"Ground truth: {instances} instances" in stdout
    original = cv2.imread(str(shapes / "val" / "000002.png"))
    for name in names:
        drawn = cv2.imread(str(out / name))
        assert drawn.shape == (original.shape if name == "detections.png" else (256, 256, 3))
        assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 10, name


def test_ground_truth_marks_crowds_and_expands_mini_masks():
    config = Config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, NUM_CLASSES=3, USE_MINI_MASK=True,
                    MINI_MASK_SHAPE=[8, 8])
    image = np.full((64, 64, 3), 60, np.uint8)
    mini = np.zeros((2, 8, 8), bool)
    mini[0] = True                 # fills its box
    mini[1, :4] = True             # the top half of its box
    sample = {"image": image, "boxes": np.array([[4, 4, 20, 20], [30, 30, 62, 62]], np.int32),
              "class_ids": np.array([1, -2]), "masks": mini}
    picture = inspect.ground_truth_picture(sample, config, ["BG", "cat", "dog"])
    assert picture.title == "Ground truth: 2 instances"
    assert "1 crowd region" in picture.details and "8x8 mini-masks" in picture.details
    changed = (picture.image != image).any(axis=2)
    assert changed[8:16, 8:16].all()      # inside the first mask
    assert changed[36:44, 36:56].all()    # the crowd's upper half
    assert not changed[50:58, 36:56].any()  # its lower half is not masked, inside its box
