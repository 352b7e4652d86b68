"""Training targets on small cases whose matches, deltas and masks are worked out by hand."""
import math

import numpy as np
import pytest
import torch

from mrcnn.targets import (detection_targets, mask_ratio_inside, maskiou_targets,
                           negative_count, random_subset, rpn_targets)

STD = (0.1, 0.1, 0.2, 0.2)

# Pixel anchors and instances of one image (see test_rpn_targets_hand_case).
ANCHORS = [
    [0, 0, 10, 10],        # 0: IoU 1 with instance A -> positive
    [0, 0, 10, 20],        # 1: IoU 0.5 with A -> neutral
    [50, 50, 60, 60],      # 2: overlaps nothing -> negative
    [0, 5, 10, 15],        # 3: IoU 1/3 with A -> neutral
    [100, 100, 120, 120],  # 4: IoU 4/9 with B, B's best (tied) -> positive
    [110, 110, 130, 130],  # 5: the other of B's tied best anchors -> positive
    [205, 205, 215, 215],  # 6: overlaps only the crowd region -> neutral
    [300, 300, 310, 310],  # 7: overlaps nothing -> negative
]
GT_BOXES = [[0, 0, 10, 10], [100, 100, 130, 130], [200, 200, 220, 220], [0, 0, 0, 0]]
GT_CLASSES = [1, 2, -1, 0]  # A, B, a crowd region, padding


def test_rpn_targets_hand_case(device):
    anchors = torch.tensor(ANCHORS, dtype=torch.float64, device=device)
    match, deltas = rpn_targets(anchors, torch.tensor([GT_BOXES], device=device),
                                torch.tensor([GT_CLASSES], device=device), 256, STD)
    assert match.tolist() == [[1, 0, -1, 0, 1, 1, 0, -1]]
    assert deltas.shape == (1, 256, 4) and deltas.dtype == torch.float32
    # Anchor 4 (centre 110, size 20) -> B (centre 115, size 30); anchor 5 has centre 120.
    log_scale = math.log(1.5) / 0.2
    expected = [[0, 0, 0, 0], [2.5, 2.5, log_scale, log_scale],
                [-2.5, -2.5, log_scale, log_scale]]
    np.testing.assert_allclose(deltas[0, :3].cpu(), expected, rtol=1e-6, atol=1e-6)
    assert deltas[0, 3:].abs().sum() == 0


def test_rpn_targets_batch_with_padding_and_an_empty_image(device):
    anchors = torch.tensor(ANCHORS, dtype=torch.float64, device=device)
    gt_boxes = torch.tensor([GT_BOXES, [[300, 300, 310, 310]] + [[0, 0, 0, 0]] * 3],
                            device=device)
    match, deltas = rpn_targets(anchors, gt_boxes,
                                torch.tensor([GT_CLASSES, [3, 0, 0, 0]], device=device), 256, STD)
    assert match.tolist() == [[1, 0, -1, 0, 1, 1, 0, -1], [-1] * 7 + [1]]
    assert deltas[1].abs().sum() == 0  # anchor 7 is exactly the instance
    no_instances = torch.zeros(1, 0, dtype=torch.int64, device=device)
    match, deltas = rpn_targets(anchors, no_instances.reshape(1, 0, 4), no_instances, 256, STD)
    assert match.tolist() == [[-1] * 8] and deltas.abs().sum() == 0


def test_rpn_targets_balance_positives_and_negatives(device):
    # 40 anchors on one instance and 60 far away: at most 4 positives, then 8 - P negatives.
    near = torch.tensor([[0, 0, 10, 10]], dtype=torch.float64).repeat(40, 1)
    far = torch.tensor([[50, 50, 60, 60]], dtype=torch.float64).repeat(60, 1)
    anchors = torch.cat([near, far]).to(device)
    gt_boxes = torch.tensor([[[0, 0, 10, 10]]], device=device)
    gt_classes = torch.tensor([[1]], device=device)
    picks = []
    for seed in (0, 0, 1):
        generator = torch.Generator(device=device).manual_seed(seed)
        match, deltas = rpn_targets(anchors, gt_boxes, gt_classes, 8, STD, generator=generator)
        assert (match[0, :40] == 1).sum() == 4 and (match[0, :40] == -1).sum() == 0
        assert (match[0, 40:] == -1).sum() == 4 and (match[0, 40:] == 1).sum() == 0
        assert deltas[0, :4].abs().sum() == 0 and deltas.shape == (1, 8, 4)
        picks.append(match.cpu())
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])


def test_random_subset_is_uniform_over_the_true_entries(device):
    mask = torch.zeros(1, 10, dtype=torch.bool, device=device)
    mask[0, [1, 3, 4, 8]] = True
    generator = torch.Generator(device=device).manual_seed(0)
    counts = torch.zeros(10)
    for _ in range(400):
        kept, rank = random_subset(mask, torch.tensor([2], device=device), generator)
        assert kept.sum() == 2 and not (kept & ~mask).any()
        assert sorted(rank[mask].tolist()) == [0, 1, 2, 3]
        counts += kept[0].float().cpu()
    # Each of the 4 entries is kept with probability 1/2.
    assert counts[[1, 3, 4, 8]].min() > 150 and counts[[1, 3, 4, 8]].max() < 250


def test_negative_count_follows_matterports_float32_arithmetic():
    counts = negative_count(torch.tensor([66, 10, 0, 1]), 0.33)
    assert counts.tolist() == [134, 20, 0, 2]


def test_mask_ratio_inside_counts_pixel_centres_in_the_box():
    masks = torch.ones(2, 5, 5)
    masks[1, :, 3:] = 0  # columns 0..2
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0],    # rows 0..2 of 5
                          [0.0, 0.3, 1.0, 1.0]])   # columns 2..4: one of the three mask columns
    np.testing.assert_allclose(mask_ratio_inside(masks, boxes), [0.6, 1 / 3], rtol=1e-6)
    assert mask_ratio_inside(torch.zeros(1, 5, 5), boxes[:1]).item() == pytest.approx(1e-10)


def test_maskiou_targets_hand_case(device):
    probs = torch.tensor([[[0.9, 0.2], [0.6, 0.5]], [[0.1, 0.1], [0.1, 0.1]]], device=device)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]], device=device)
    # Prediction 1 is {(0,0), (1,0)}: overlap 1; instance area 2 / 0.5 = 4; union 2 + 4 - 1.
    # Prediction 2 is empty: overlap 0, IoU 0.
    iou = maskiou_targets(probs, target, torch.tensor([0.5, 1.0], device=device))
    np.testing.assert_allclose(iou.cpu(), [0.2, 0.0], rtol=1e-6)


def crop_and_resize_reference(image, box, size):
    """tf.image.crop_and_resize of one [H, W] image at one box, written out in numpy."""
    height, width = image.shape
    y1, x1, y2, x2 = box
    out = np.zeros(size)
    for i in range(size[0]):
        y = y1 * (height - 1) + i * (y2 - y1) * (height - 1) / (size[0] - 1)
        if not 0 <= y <= height - 1:
            continue
        for j in range(size[1]):
            x = x1 * (width - 1) + j * (x2 - x1) * (width - 1) / (size[1] - 1)
            if not 0 <= x <= width - 1:
                continue
            top, left = int(np.floor(y)), int(np.floor(x))
            bottom, right = int(np.ceil(y)), int(np.ceil(x))
            dy, dx = y - top, x - left
            upper = image[top, left] + (image[top, right] - image[top, left]) * dx
            lower = image[bottom, left] + (image[bottom, right] - image[bottom, left]) * dx
            out[i, j] = upper + (lower - upper) * dy
    return out


def test_detection_targets_hand_case(device):
    # One instance (class 2) at [0.2, 0.2, 0.4, 0.4] whose 8x8 mini-mask is its left half, and a
    # crowd region at [0.7, 0.7, 0.9, 0.9].
    gt_boxes = torch.tensor([[[0.2, 0.2, 0.4, 0.4], [0.7, 0.7, 0.9, 0.9]]], device=device)
    gt_classes = torch.tensor([[2, -1]], device=device)
    mini = torch.zeros(1, 2, 8, 8, dtype=torch.bool, device=device)
    mini[0, 0, :, :4] = True
    proposals = torch.tensor([[
        [0.2, 0.2, 0.4, 0.4],    # 0: the instance's box -> positive, deltas 0
        [0.2, 0.2, 0.4, 0.6],    # 1: twice as wide, IoU 0.5 -> positive
        [0.0, 0.0, 0.1, 0.1],    # 2: background -> negative
        [0.72, 0.72, 0.9, 0.9],  # 3: on the crowd region -> neither
        [0.0, 0.0, 0.0, 0.0],    # 4: padding -> neither
        [0.25, 0.25, 0.45, 0.45],  # 5: IoU 9/23 -> negative, but at most P = 2 negatives
        [0.5, 0.5, 0.6, 0.6],    # 6: background -> negative
    ]], device=device)
    seen_negatives = set()
    for seed in range(8):
        generator = torch.Generator(device=device).manual_seed(seed)
        targets = detection_targets(proposals, gt_classes, gt_boxes, mini, rois_per_image=6,
                                    positive_ratio=0.5, bbox_std_dev=STD, mask_shape=(4, 4),
                                    generator=generator)
        rows = [proposals[0].tolist().index(r) for r in targets.rois[0, :4].tolist()]
        assert sorted(rows[:2]) == [0, 1] and set(rows[2:4]) <= {2, 5, 6}
        seen_negatives.add(tuple(sorted(rows[2:4])))
        assert targets.rois[0, 4:].abs().sum() == 0
        assert targets.class_ids[0].tolist() == [2, 2, 0, 0, 0, 0]
        wide = rows.index(1)
        # proposal 1: same centre y, centre x 0.4 instead of 0.3, width 0.4 instead of 0.2
        expected_wide = [0.0, (0.3 - 0.4) / 0.4 / 0.1, 0.0, math.log(0.5) / 0.2]
        np.testing.assert_allclose(targets.deltas[0, wide].cpu(), expected_wide, atol=1e-5)
        np.testing.assert_allclose(targets.deltas[0, 1 - wide].cpu(), [0] * 4, atol=1e-6)
        assert targets.deltas[0, 2:].abs().sum() == 0 and targets.masks[0, 2:].abs().sum() == 0
        # Mask targets: the mini-mask cropped to each RoI in the instance's frame.
        frames = {0: [0, 0, 1, 1], 1: [0, 0, 1, 2]}
        for row in (0, 1):
            expected = np.round(crop_and_resize_reference(mini[0, 0].cpu().numpy().astype(float),
                                                          frames[rows[row]], (4, 4)))
            np.testing.assert_array_equal(targets.masks[0, row].cpu(), expected)
        np.testing.assert_allclose(targets.mask_ratios[0, :2].cpu(), [1, 1])
    assert len(seen_negatives) > 1  # the negatives are sampled


def test_detection_targets_mask_ratio_of_a_partial_roi(device):
    gt_boxes = torch.tensor([[[0.2, 0.2, 0.6, 0.6]]], device=device)
    full = torch.ones(1, 1, 5, 5, dtype=torch.bool, device=device)
    # The RoI covers the instance's top 3 of 5 mini-mask rows; IoU 0.6 -> positive.
    proposals = torch.tensor([[[0.2, 0.2, 0.44, 0.6]]], device=device)
    targets = detection_targets(proposals, torch.tensor([[1]], device=device), gt_boxes, full,
                                rois_per_image=4, positive_ratio=0.5, bbox_std_dev=STD,
                                mask_shape=(4, 4))
    assert targets.class_ids[0].tolist() == [1, 0, 0, 0]
    assert targets.mask_ratios[0, 0].item() == pytest.approx(0.6)
    assert targets.masks[0, 0].sum() == 16


def test_one_generator_per_image_samples_each_image_as_if_alone(device):
    mask = torch.rand(3, 50, generator=torch.Generator().manual_seed(0)).to(device) > 0.3
    limits = torch.tensor([5, 7, 9], device=device)

    def generators():
        return [torch.Generator(device=device).manual_seed(seed) for seed in (4, 5, 6)]

    kept, rank = random_subset(mask, limits, generators())
    assert kept.sum(dim=1).tolist() == [5, 7, 9]
    for row in range(3):
        alone, alone_rank = random_subset(mask[row:row + 1], limits[row:row + 1],
                                          generators()[row:row + 1])
        assert torch.equal(kept[row], alone[0]) and torch.equal(rank[row], alone_rank[0])
