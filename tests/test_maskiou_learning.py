"""The MaskIoU head learns to rank masks by their IoU with the ground truth (issue 14, item 3).

The head is tested alone, fed as TrainingModel feeds it: the mask branch's 14x14 pooled RoI
features and a 28x28 mask of the RoI's class, trained on maskiou_targets with maskiou_loss. On
preprocess.synthetic's shapes the RoIs are the ground-truth boxes, and the masks are ground-truth
masks made worse in known ways (dilated, eroded, shifted, swapped with another instance's), so
their true IoU spans 0 to 1. Only the MaskIoU layers train; the rest of the model is frozen, so
its pooled features are computed once. On held-out images the head's predicted IoU must rank the
masks as their true IoU does (Spearman >= 0.7), where the untrained head's ranking is about
random.

Sized for the CPU: 128 px images, an 8-channel FPN, and a head 16 (not 256) convolution
channels and 128 (not 1024) fully connected units wide: the same layers and forward pass at a
small fraction of the cost. The backbone is the model's seeded initialisation with BatchNorm
statistics measured on synthetic images. The head trains with Adam on a cosine schedule: in the
few hundred steps a CPU test affords, it got further than train.py's SGD.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrcnn.boxes import norm_boxes
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.heads import MaskIoUHead
from mrcnn.layers import BatchNorm2d
from mrcnn.losses import maskiou_loss
from mrcnn.molding import mold_image
from mrcnn.targets import detection_targets, maskiou_targets
from mrcnn.training import set_trainable
from preprocess.masks import extract_bboxes
from preprocess.synthetic import MAX_SHAPES, random_scene

SIZE = 128
CATEGORY_IDS = (1, 2, 3)  # circle, square, triangle
CONFIG = {"BACKBONE": "resnet50", "NUM_CLASSES": max(CATEGORY_IDS) + 1, "IMAGE_MIN_DIM": SIZE,
          "IMAGE_MAX_DIM": SIZE, "TOP_DOWN_PYRAMID_SIZE": 8, "USE_MINI_MASK": False}
HEAD_WIDTH = {"conv_channels": 16, "fc_size": 128}
CALIBRATION_IMAGES = range(20_000, 20_032)
TRAINING_IMAGES = range(128)
HELD_OUT_IMAGES = range(10_000, 10_016)
STEPS = 600
BATCH = 32
LEARNING_RATE = 5e-3
# Each ground-truth mask is also given shifted by this many random offsets of up to MAX_SHIFT
# pixels (of 28) and swapped with this many other instances' masks.
SHIFTS, MAX_SHIFT, SWAPS = 4, 8, 2


def ranks(values):
    """values [N] -> their ranks 0..N-1 as float64, tied values sharing their mean rank."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    result = np.empty(len(values))
    result[order] = np.repeat(first + (counts - 1) / 2, counts)
    return result


def spearman(a, b):
    """Spearman's rank correlation of two [N] sequences (the Pearson correlation of their ranks)."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def test_spearman_on_hand_computed_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 99]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    np.testing.assert_array_equal(ranks([5, 1, 5, 3]), [2.5, 0, 2.5, 1])
    # Ranks (0, 1, 2.5, 2.5) and (1, 0, 2, 3), both of mean 1.5: deviations (-1.5, -0.5, 1, 1)
    # and (-0.5, -1.5, 0.5, 1.5), products summing to 3.5, squares to 4.5 and 5.
    assert spearman([1, 2, 3, 3], [2, 1, 3, 4]) == pytest.approx(3.5 / np.sqrt(4.5 * 5))


def scenes(seeds):
    """The synthetic images of `seeds`: images [N, H, W, 3] uint8, class ids [N, G] (0 padding),
    normalised boxes [N, G, 4] and masks [N, G, H, W] bool of their instances."""
    drawn = [random_scene(np.random.default_rng([14, seed]), SIZE, CATEGORY_IDS)
             for seed in seeds]
    count = max(len(ids) for _, _, ids in drawn)
    class_ids = torch.zeros(len(drawn), count, dtype=torch.int64)
    boxes = torch.zeros(len(drawn), count, 4)
    masks = torch.zeros(len(drawn), count, SIZE, SIZE, dtype=torch.bool)
    for i, (_, image_masks, ids) in enumerate(drawn):
        class_ids[i, :len(ids)] = torch.from_numpy(ids)
        boxes[i, :len(ids)] = torch.from_numpy(norm_boxes(extract_bboxes(image_masks),
                                                          (SIZE, SIZE)))
        masks[i, :len(ids)] = torch.from_numpy(image_masks.transpose(2, 0, 1))
    return np.stack([image for image, _, _ in drawn]), class_ids, boxes, masks


def molded(images, config):
    """uint8 images [N, H, W, 3] -> molded [N, 3, H, W] float32 in the convolutions' fast layout."""
    pixels = torch.from_numpy(mold_image(images, config.MEAN_PIXEL)).permute(0, 3, 1, 2)
    return pixels.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def calibrate_batch_norm(model, seeds):
    """Sets the backbone's BatchNorm statistics to those of the images of `seeds`, as a trained
    backbone's are: with the initial identity statistics the features keep the scale of the
    mean-subtracted pixels."""
    norms = [module for module in model.backbone.modules() if isinstance(module, BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the one batch
        norm.use_batch_statistics = True
    model.backbone.train()
    model.backbone(molded(scenes(seeds)[0], model.config))
    model.backbone.eval()
    for norm in norms:
        norm.use_batch_statistics = False


@torch.no_grad()
def roi_samples(model, seeds, chunk=16):
    """The ground-truth RoIs of the images of `seeds`, made into training rows by
    detection_targets (every instance a positive, its box the RoI) ->
    (pooled [R, C, 14, 14] mask-branch features, mask targets [R, 28, 28], class ids [R],
    mask ratios [R])."""
    config, rows = model.config, []
    seeds = list(seeds)
    for start in range(0, len(seeds), chunk):
        images, class_ids, boxes, masks = scenes(seeds[start:start + chunk])
        pyramid = model.pyramid(molded(images, config))
        targets = detection_targets(boxes, class_ids, boxes, masks, rois_per_image=MAX_SHAPES,
                                    positive_ratio=1.0, mask_shape=config.MASK_SHAPE,
                                    use_mini_mask=False)
        image, row = torch.nonzero(targets.class_ids > 0, as_tuple=True)
        levels = [level.contiguous() for level in pyramid[:4]]
        pooled = model.mask_roi_align(targets.rois[image, row], image, levels, (SIZE, SIZE))
        rows.append((pooled, targets.masks[image, row], targets.class_ids[image, row],
                     targets.mask_ratios[image, row]))
    return tuple(torch.cat(column) for column in zip(*rows))


def shifted(masks, offsets):
    """masks [N, h, w] moved by offsets [N, 2] (rows, columns) pixels, zeros shifted in."""
    count, height, width = masks.shape
    rows = torch.arange(height) - offsets[:, :1]
    cols = torch.arange(width) - offsets[:, 1:]
    inside = (((rows >= 0) & (rows < height))[:, :, None]
              & ((cols >= 0) & (cols < width))[:, None, :])
    moved = masks[torch.arange(count)[:, None, None], rows.clamp(0, height - 1)[:, :, None],
                  cols.clamp(0, width - 1)[:, None, :]]
    return moved * inside


def degraded(targets, generator):
    """Ground-truth masks [R, h, w] 0/1 -> masks of known quality [R, V, h, w]: the mask itself,
    dilated and eroded by 1 to 3 pixels, shifted SHIFTS times and swapped SWAPS times."""
    grid = targets[:, None]
    variants = [targets]
    for radius in (1, 2, 3):
        window = 2 * radius + 1
        variants.append(F.max_pool2d(grid, window, 1, radius)[:, 0])
        variants.append(-F.max_pool2d(-grid, window, 1, radius)[:, 0])
    for _ in range(SHIFTS):
        offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (len(targets), 2), generator=generator)
        variants.append(shifted(targets, offsets))
    for _ in range(SWAPS):
        variants.append(targets[torch.randperm(len(targets), generator=generator)])
    return torch.stack(variants, dim=1)


def held_out_cases(samples, generator):
    """Every degraded mask of every RoI of `samples` -> (pooled [M, C, 14, 14], masks [M, h, w],
    class ids [M], true IoU [M] float64, computed here in numpy)."""
    pooled, targets, class_ids, ratios = samples
    # The RoIs are the instances' boxes: each instance lies wholly inside its RoI, and the true IoU
    # is that of the two 28x28 masks.
    assert torch.all(ratios == 1)
    masks = degraded(targets, generator)
    source = torch.arange(len(targets)).repeat_interleave(masks.shape[1])
    masks = masks.flatten(0, 1)
    predicted, truth = masks.numpy() > 0.5, targets[source].numpy() > 0.5
    true_iou = (predicted & truth).sum(axis=(1, 2)) / (predicted | truth).sum(axis=(1, 2))
    # ...which is what the head trains on.
    np.testing.assert_allclose(maskiou_targets(masks, targets[source], ratios[source]), true_iou,
                               rtol=1e-6)
    return pooled[source], masks, class_ids[source], true_iou


def ranking_quality(head, cases):
    """Spearman correlation of the head's predicted IoU of the held-out masks with their true IoU."""
    pooled, masks, class_ids, true_iou = cases
    with torch.no_grad():
        predicted = head(pooled, masks)[torch.arange(len(masks)), class_ids]
    return spearman(predicted, true_iou)


@pytest.fixture
def one_thread():
    """Runs a test on one intra-op thread. Its tensors are small, and on cores shared with other
    jobs the threads of one operation wait on each other: on 2 cores at load averages of 8 to 17
    this test took 7.7 minutes with two threads and 1.1 with one (18 s of CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_maskiou_head_learns_to_rank_masks_by_iou(one_thread):
    config = Config(**CONFIG)
    torch.manual_seed(0)
    model = MaskScoringRCNN(config)
    model.maskiou_head = MaskIoUHead(config.NUM_CLASSES, config.TOP_DOWN_PYRAMID_SIZE,
                                     config.MASK_POOL_SIZE, **HEAD_WIDTH)
    assert set(set_trainable(model, "maskiou")) == set(model.maskiou_head.layer_names())
    calibrate_batch_norm(model, CALIBRATION_IMAGES)
    training = roi_samples(model, TRAINING_IMAGES)
    held_out = roi_samples(model, HELD_OUT_IMAGES)
    generator = torch.Generator().manual_seed(0)
    cases = held_out_cases(held_out, generator)
    true_iou = cases[-1]
    assert true_iou.min() < 0.2 and true_iou.max() == 1.0 and np.median(true_iou) < 0.8
    head = model.maskiou_head
    before = ranking_quality(head, cases)

    pooled, targets, class_ids, ratios = training
    masks = degraded(targets, generator)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    rows = torch.arange(BATCH)
    for _ in range(STEPS):
        rois = torch.randint(0, len(targets), (BATCH,), generator=generator)
        class_masks = masks[rois, torch.randint(0, masks.shape[1], (BATCH,), generator=generator)]
        predicted_iou = head(pooled[rois], class_masks)[rows, class_ids[rois]]
        target_iou = maskiou_targets(class_masks, targets[rois], ratios[rois])
        optimizer.zero_grad()
        maskiou_loss(predicted_iou, target_iou).backward()
        optimizer.step()
        schedule.step()

    after = ranking_quality(head, cases)
    print(f"Spearman of predicted and true IoU on {len(true_iou)} held-out masks: "
          f"{before:.3f} untrained, {after:.3f} after {STEPS} steps")
    assert abs(before) < 0.3
    assert after >= 0.7
