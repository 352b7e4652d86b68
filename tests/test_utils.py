"""mrcnn.utils (Matterport's utils API) against hand-computed cases, and mrcnn.dataset."""
import math

import cv2
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.dataset import Dataset as DatasetInterface, active_class_ids


# ----------------------------------------------------------------------------- boxes

def test_extract_bboxes():
    masks = np.zeros((5, 6, 2), bool)
    masks[1:3, 2:5, 0] = True
    np.testing.assert_array_equal(utils.extract_bboxes(masks), [[1, 2, 3, 5], [0, 0, 0, 0]])
    assert utils.extract_bboxes(masks).dtype == np.int32


def test_compute_iou_uses_the_given_areas():
    boxes = np.array([[1, 1, 3, 3], [2, 2, 4, 4], [0, 0, 2, 2]])
    np.testing.assert_allclose(utils.compute_iou([0, 0, 2, 2], boxes, 4, np.array([4, 4, 4])),
                               [1 / 7, 0, 1])
    # The areas are taken as given: a box_area of 6 turns 1/(4+4-1) into 1/(6+4-1).
    assert utils.compute_iou([0, 0, 2, 2], boxes, 6, np.array([4, 4, 4]))[0] == 1 / 9


def test_compute_overlaps():
    boxes1 = np.array([[0, 0, 2, 2], [0, 0, 4, 4]])
    boxes2 = np.array([[1, 1, 3, 3], [2, 2, 4, 4], [0, 0, 2, 2]])
    overlaps = utils.compute_overlaps(boxes1, boxes2)
    assert overlaps.dtype == np.float64
    np.testing.assert_allclose(overlaps, [[1 / 7, 0, 1], [4 / 16, 4 / 16, 4 / 16]])


def test_compute_overlaps_masks():
    masks1 = np.zeros((2, 2, 1), bool)
    masks1[0, :, 0] = True                          # top row
    masks2 = np.zeros((2, 2, 2), np.float32)
    masks2[:, 0, 0] = 1.0                           # left column: 1 shared pixel of 3
    masks2[0, :, 1] = 0.7                           # top row again, > 0.5 counts
    np.testing.assert_allclose(utils.compute_overlaps_masks(masks1, masks2), [[1 / 3, 1.0]])


def test_non_max_suppression():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    # IoU of the first two: 81 / (100 + 100 - 81) = 0.68.
    keep = utils.non_max_suppression(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    np.testing.assert_array_equal(keep, [0, 2])
    assert keep.dtype == np.int32
    keep = utils.non_max_suppression(boxes, np.array([0.7, 0.8, 0.9]), 0.7)
    np.testing.assert_array_equal(keep, [2, 1, 0])


def test_apply_box_deltas():
    refined = utils.apply_box_deltas(np.array([[0, 0, 10, 10]]), np.array([[0.1, 0, math.log(2), 0]]))
    np.testing.assert_allclose(refined, [[-4, 0, 16, 10]], rtol=1e-6)
    assert refined.dtype == np.float32


def test_norm_and_denorm_boxes():
    normalised = utils.norm_boxes(np.array([[0, 0, 11, 21], [5, 10, 6, 11]]), (11, 21))
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, [[0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]])
    denormalised = utils.denorm_boxes(normalised, (11, 21))
    assert denormalised.dtype == np.int32
    np.testing.assert_array_equal(denormalised, [[0, 0, 11, 21], [5, 10, 6, 11]])


def test_trim_zeros():
    np.testing.assert_array_equal(utils.trim_zeros(np.array([[1, 2], [0, 0], [0, 3]])),
                                  [[1, 2], [0, 3]])


# ----------------------------------------------------------------------------- images, masks

def test_resize_image_pads_to_a_square():
    image = np.full((4, 8, 3), 7, np.uint8)
    resized, window, scale, padding, crop = utils.resize_image(image, min_dim=4, max_dim=16)
    assert (scale, window, crop) == (1, (6, 4, 10, 12), None)
    assert padding == [(6, 6), (4, 4), (0, 0)]
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8
    assert (resized[6:10, 4:12] == 7).all() and resized.sum() == 7 * 4 * 8 * 3

    resized, window, scale, padding, _ = utils.resize_image(image, min_dim=8, max_dim=16)
    assert (scale, window) == (2, (4, 0, 12, 16))
    assert (resized[4:12] == 7).all() and (resized[:4] == 0).all()


def test_resize_mask_follows_the_image():
    mask = np.zeros((4, 8, 1), bool)
    mask[1, 2, 0] = True
    resized = utils.resize_mask(mask, 2, [(4, 4), (0, 0), (0, 0)])
    assert resized.shape == (16, 16, 1)
    # Nearest neighbour, corner aligned: output row r samples round(r * 3 / 7), so rows 2 and 3
    # (0.86, 1.29) read input row 1; column c samples round(c * 7 / 15): columns 4 and 5 (1.87,
    # 2.33) read input column 2. Four rows of padding go on top.
    expected = np.zeros((16, 16), bool)
    expected[6:8, 4:6] = True
    np.testing.assert_array_equal(resized[:, :, 0], expected)


def test_minimize_and_expand_mask_of_a_rectangle():
    mask = np.zeros((10, 12, 1), bool)
    mask[2:6, 3:11, 0] = True
    boxes = utils.extract_bboxes(mask)
    mini = utils.minimize_mask(boxes, mask, (5, 5))
    assert mini.shape == (5, 5, 1) and mini.all()
    np.testing.assert_array_equal(utils.expand_mask(boxes, mini, mask.shape), mask)


def test_unmold_mask_fills_its_box():
    full = utils.unmold_mask(np.full((28, 28), 0.9, np.float32), np.array([1, 1, 3, 4]), (4, 5, 3))
    expected = np.zeros((4, 5), bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(full, expected)


# ----------------------------------------------------------------------------- anchors

def test_generate_anchors():
    anchors = utils.generate_anchors(8, [1], [2, 2], 4, 1)
    np.testing.assert_array_equal(anchors, [[-4, -4, 4, 4], [-4, 0, 4, 8],
                                            [0, -4, 8, 4], [0, 0, 8, 8]])
    # Ratio is width / height: 8 / sqrt(4) = 4 high, 8 * sqrt(4) = 16 wide.
    np.testing.assert_array_equal(utils.generate_anchors(8, [4], [1, 1], 4, 1),
                                  [[-2, -8, 2, 8]])
    # Several scales at one position: ratio first, then scale.
    np.testing.assert_array_equal(utils.generate_anchors([8, 16], [1, 4], [1, 1], 4, 1),
                                  [[-4, -4, 4, 4], [-8, -8, 8, 8],
                                   [-2, -8, 2, 8], [-4, -16, 4, 16]])


def test_generate_pyramid_anchors():
    anchors = utils.generate_pyramid_anchors([8, 16], [1], [[1, 1], [1, 2]], [4, 8], 1)
    np.testing.assert_array_equal(anchors, [[-4, -4, 4, 4], [-8, -8, 8, 8], [-8, 0, 8, 16]])


# ----------------------------------------------------------------------------- evaluation

def masks_of(boxes, shape=(20, 20)):
    masks = np.zeros(shape + (len(boxes),), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    return masks


def test_compute_ap():
    gt_boxes = np.array([[0, 0, 4, 4], [10, 10, 14, 14]])
    pred_boxes = np.array([[0, 0, 4, 4], [5, 5, 8, 8], [10, 10, 14, 14]])
    # Sorted by score: a hit, a miss, a hit. Precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1;
    # made non-increasing: 1, 1, 2/3; AP = 1/2 * 1 + 1/2 * 2/3.
    ap, precisions, recalls, overlaps = utils.compute_ap(
        gt_boxes, np.array([1, 1]), masks_of(gt_boxes), pred_boxes, np.array([1, 1, 1]),
        np.array([0.9, 0.8, 0.7]), masks_of(pred_boxes))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    np.testing.assert_allclose(precisions, [1, 1, 2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(recalls, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(overlaps, [[1, 0], [0, 0], [0, 1]])


def test_compute_ap_without_predictions():
    gt_boxes = np.array([[0, 0, 4, 4]])
    ap, precisions, recalls, overlaps = utils.compute_ap(
        gt_boxes, np.array([1]), masks_of(gt_boxes), np.zeros((0, 4)), np.zeros(0, np.int32),
        np.zeros(0), np.zeros((20, 20, 0), bool))
    assert ap == 0 and overlaps.shape == (0, 1)


def test_compute_matches_sorts_by_score_and_checks_the_class():
    gt_boxes = np.array([[0, 0, 4, 4]])
    pred_boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 3]])
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_boxes, np.array([1]), masks_of(gt_boxes), pred_boxes, np.array([2, 1]),
        np.array([0.5, 0.9]), masks_of(pred_boxes))
    # The 0.9 prediction comes first; its class fits and its IoU is 12 / 16.
    np.testing.assert_array_equal(pred_match, [0, -1])
    np.testing.assert_array_equal(gt_match, [0])
    np.testing.assert_allclose(overlaps, [[0.75], [1.0]])


def test_compute_matches_keeps_matterports_rematch_of_the_first_prediction():
    """Matterport tests `gt_match[j] > 0`, so a ground truth taken by prediction 0 is free for
    the next one; the port keeps it so that its APs equal Matterport's."""
    gt_boxes = np.array([[0, 0, 4, 4]])
    pred_boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4]])
    gt_match, pred_match, _ = utils.compute_matches(
        gt_boxes, np.array([1]), masks_of(gt_boxes), pred_boxes, np.array([1, 1]),
        np.array([0.9, 0.8]), masks_of(pred_boxes))
    np.testing.assert_array_equal(pred_match, [0, 0])
    np.testing.assert_array_equal(gt_match, [1])


def test_compute_ap_range(capsys):
    boxes = np.array([[0, 0, 4, 4]])
    # IoU 12/16 = 0.75: a hit at thresholds 0.5 to 0.7; np.arange makes the sixth threshold
    # 0.7500000000000002 (in Matterport too), a miss like those above it.
    mean_ap = utils.compute_ap_range(boxes, np.array([1]), masks_of(boxes),
                                     np.array([[0, 0, 4, 3]]), np.array([1]), np.array([0.9]),
                                     masks_of(np.array([[0, 0, 4, 3]])))
    assert mean_ap == pytest.approx(5 / 10)
    printed = capsys.readouterr().out
    assert "AP @0.50:\t 1.000" in printed and "AP @0.50-0.95:\t 0.500" in printed


def test_compute_recall():
    recall, positive_ids = utils.compute_recall(np.array([[0, 0, 2, 2], [5, 5, 6, 6]]),
                                                np.array([[0, 0, 2, 2], [10, 10, 12, 12]]), 0.5)
    assert recall == 0.5
    np.testing.assert_array_equal(positive_ids, [0])


# ----------------------------------------------------------------------------- weights

def test_download_trained_weights_copies_from_the_cache(tmp_path, monkeypatch):
    cached = tmp_path / "cache" / "mask_rcnn_coco.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"weights")
    monkeypatch.setattr(utils, "coco_weights_path", lambda progress: cached)
    target = tmp_path / "project" / "mask_rcnn_coco.h5"
    utils.download_trained_weights(str(target), verbose=0)
    assert target.read_bytes() == b"weights"
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask_rcnn_coco.h5"]


# ----------------------------------------------------------------------------- Dataset

class ShapesDataset(utils.Dataset):
    def load_mask(self, image_id):
        info = self.image_info[image_id]
        return masks_of(info["boxes"], (info["height"], info["width"])), \
            np.ones(len(info["boxes"]), np.int32)


def test_dataset_bookkeeping():
    dataset = ShapesDataset()
    dataset.add_class("shapes", 1, "square")
    dataset.add_class("shapes", 2, "circle, round")
    dataset.add_class("shapes", 1, "again")          # the same (source, id): ignored
    dataset.add_class("other", 7, "cat")
    dataset.add_image("shapes", image_id="a", path="a.png", boxes=[[0, 0, 2, 2]], height=4,
                      width=4)
    dataset.add_image("other", image_id=12, path="b.png")
    dataset.prepare()
    assert dataset.num_classes == 4
    assert dataset.class_names == ["BG", "square", "circle", "cat"]
    np.testing.assert_array_equal(dataset.image_ids, [0, 1])
    assert dataset.map_source_class_id("shapes.2") == 2
    assert dataset.map_source_class_id("other.7") == 3
    assert dataset.get_source_class_id(3, "other") == 7
    with pytest.raises(ValueError, match="source 'other'"):
        dataset.get_source_class_id(3, "shapes")
    assert dataset.image_from_source_map == {"shapes.a": 0, "other.12": 1}
    assert dataset.source_class_ids == {"": [0], "shapes": [0, 1, 2], "other": [0, 3]}
    assert dataset.image_info[0]["boxes"] == [[0, 0, 2, 2]]
    assert dataset.image_reference(0) == "" and dataset.source_image_link(1) == "b.png"
    np.testing.assert_array_equal(active_class_ids(dataset, 1), [1, 0, 0, 1])
    masks, class_ids = dataset.load_mask(0)
    assert masks.shape == (4, 4, 1) and class_ids.tolist() == [1]


def test_dataset_refuses_a_dotted_source():
    with pytest.raises(ValueError, match="dot"):
        utils.Dataset().add_class("my.source", 1, "x")


def test_dataset_defaults():
    dataset = DatasetInterface()
    masks, class_ids = dataset.load_mask(0)
    assert masks.shape == (0, 0, 0) and class_ids.dtype == np.int32
    dataset.add_image("s", 1, "x.png")
    with pytest.raises(NotImplementedError, match="mrcnn.utils.Dataset"):
        dataset.load_image(0)


def test_append_data_builds_the_external_maps():
    dataset = utils.Dataset()
    dataset.class_info[0]["map"] = []
    dataset.add_class("a", 1, "x")
    dataset.class_info[1]["map"] = [("coco", 3), ("voc", 5)]
    dataset.add_image("a", 9, "p.png", ds="coco")
    dataset.append_data(None, None)
    assert dataset.external_to_class_id == {"coco3": 1, "voc5": 1}
    assert dataset.external_to_image_id == {"coco9": 0}


def test_dataset_load_image_converts_like_matterport(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgba = np.dstack([np.full((3, 4), v, np.uint8) for v in (10, 20, 30, 40)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])   # OpenCV writes BGRA
    dataset = utils.Dataset()
    dataset.add_image("s", 0, str(tmp_path / "gray.png"))
    dataset.add_image("s", 1, str(tmp_path / "rgba.png"))
    dataset.prepare()
    np.testing.assert_array_equal(dataset.load_image(0), np.dstack([gray] * 3))
    np.testing.assert_array_equal(dataset.load_image(1), rgba[..., :3])


# ----------------------------------------------------------------------------- Config

def test_config_display(capsys):
    class BalloonConfig(Config):
        NAME = "balloon"
        NUM_CLASSES = 2

    BalloonConfig().display()
    lines = capsys.readouterr().out.splitlines()
    assert "Configurations:" in lines
    assert f"{'NUM_CLASSES':30} 2" in lines
    assert f"{'BATCH_SIZE':30} 2" in lines
    assert f"{'NAME':30} balloon" in lines
