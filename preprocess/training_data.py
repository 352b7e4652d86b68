"""Training samples: Matterport's load_image_gt with horizontal flips or an augmentation, a
reproducible sampler and the collate function, for torch DataLoader workers.

A dataset is a CocoDataset or any dataset with Matterport's interface (mrcnn.dataset): its
images without a positive instance are skipped, as Matterport's data generator skips them.

Every random choice of a sample (flip, crop position, augmentation, which instances to keep past
MAX_GT_INSTANCES) comes from a generator seeded by (seed, draw), where `draw` numbers the samples
of a run in order. The same run therefore sees the same samples however many workers load them,
and a resumed run continues the sequence exactly.
"""
import logging
import random

import numpy as np
import torch

from mrcnn.dataset import active_class_ids, describe_image, image_source
from mrcnn.molding import compose_image_meta, mold_image, resize_image
from preprocess.augmentation import seeded_global_random
from preprocess.coco import CocoDataset, DatasetError
from preprocess.images import ImageLoadError
from preprocess.masks import extract_bboxes, minimize_mask, resize_mask

logger = logging.getLogger(__name__)

# How many images in a row may fail to load before loading stops with an error.
MAX_CONSECUTIVE_FAILURES = 5
# What a broken image file or annotation raises.
LOAD_ERRORS = (OSError, DatasetError, ImageLoadError)


def load_image_gt(dataset, index, config, flip=False, rng=None, augmentation=None):
    """Matterport's load_image_gt for image `index` of a dataset.

    The image is resized and padded as config says (a 'crop' position and the instances kept
    past MAX_GT_INSTANCES are drawn from `rng`, a numpy Generator), then flipped left-right when
    `flip` and augmented by `augmentation` (preprocess.augmentation.as_augmentation's callable,
    with `random` and `numpy.random` seeded from `rng`); the window in the meta is not moved, as
    in Matterport. Instances whose mask is empty after that are dropped. Active classes are those of the image's source.

    Returns a dict: image [H, W, 3] uint8 (resized, not molded), image_meta [12 + NUM_CLASSES]
    float64, class_ids [N] int64 (negative for crowds), boxes [N, 4] int32 pixels (y2, x2
    exclusive), masks [N, h, w] bool (mini-masks of MINI_MASK_SHAPE, or full-image masks).
    """
    rng = rng if rng is not None else np.random.default_rng()
    image = dataset.load_image(index)
    masks, class_ids = dataset.load_mask(index)
    original_shape = image.shape
    crop_rng = random.Random(int(rng.integers(2 ** 63)))
    image, window, scale, padding, crop = resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
        min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE, rng=crop_rng)
    masks = resize_mask(masks, scale, padding, crop)
    if flip:
        image, masks = image[:, ::-1], masks[:, ::-1]
    if augmentation is not None:
        with seeded_global_random(int(rng.integers(2 ** 32))):
            image, masks = augmentation(image, masks)
    visible = masks.any(axis=(0, 1))
    masks, class_ids = masks[:, :, visible], class_ids[visible]
    if len(class_ids) > config.MAX_GT_INSTANCES:
        keep = np.sort(rng.choice(len(class_ids), config.MAX_GT_INSTANCES, replace=False))
        masks, class_ids = masks[:, :, keep], class_ids[keep]
    boxes = extract_bboxes(masks)
    if config.USE_MINI_MASK:
        masks = minimize_mask(boxes, masks, config.MINI_MASK_SHAPE)
    image_meta = compose_image_meta(index, original_shape, image.shape, window, scale,
                                    active_class_ids(dataset, index))
    return {"image": np.ascontiguousarray(image), "image_meta": image_meta,
            "class_ids": class_ids.astype(np.int64), "boxes": boxes,
            "masks": np.ascontiguousarray(masks.transpose(2, 0, 1))}


def trainable_image_indices(dataset):
    """Indices of the images with at least one non-crowd instance of the dataset's classes
    (Matterport's data generator skips the others): read from a CocoDataset's annotations; for
    other datasets every image (the samples skip those without instances when they load)."""
    if not isinstance(dataset, CocoDataset):
        return [int(index) for index in dataset.image_ids]
    categories = set(dataset.category_ids)
    return [index for index, coco_id in enumerate(dataset.coco_image_ids)
            if any(not ann["iscrowd"] and ann["category_id"] in categories
                   for ann in dataset.coco.imgToAnns[coco_id])]


class TrainingSamples(torch.utils.data.Dataset):
    """Map-style dataset of training samples, indexed by (image index, draw) pairs as
    DrawSampler yields them.

    Flips each sample left-right with probability 1/2 when `augment`, and augments it with
    `augmentation` (see preprocess.augmentation.as_augmentation) except the images of the
    sources in `no_augmentation_sources`. An image without a positive instance is replaced by
    the next image of the dataset, as Matterport skips it. An image that cannot be loaded
    (corrupt file, broken annotation) is reported with a warning and replaced the same way;
    after MAX_CONSECUTIVE_FAILURES failures in a row loading stops with an error.
    """

    def __init__(self, dataset, config, augment=True, seed=0, augmentation=None,
                 no_augmentation_sources=()):
        if dataset.num_classes != config.NUM_CLASSES:
            raise ValueError(f"the dataset has {dataset.num_classes} classes (background "
                             f"included) but config.NUM_CLASSES is {config.NUM_CLASSES}")
        self.dataset = dataset
        self.config = config
        self.augment = augment
        self.seed = seed
        self.augmentation = augmentation
        self.no_augmentation_sources = set(no_augmentation_sources or ())

    def __len__(self):
        return len(self.dataset.image_ids)

    def __getitem__(self, item):
        index, draw = item
        rng = np.random.default_rng([self.seed, draw])
        flip = self.augment and rng.random() < 0.5
        failures, skipped = [], 0
        while True:
            try:
                sample = load_image_gt(self.dataset, index, self.config, flip, rng,
                                       self._augmentation_of(index))
            except LOAD_ERRORS as error:
                name = describe_image(self.dataset, index)
                failures.append(f"{name}: {error}")
                logger.warning("skipping %s: %s", name, error)
                if len(failures) >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{len(failures)} images in a row failed to load:\n  "
                                       + "\n  ".join(failures)) from error
            else:
                if (sample["class_ids"] > 0).any():
                    return sample
                failures.clear()
                skipped += 1
                if skipped >= len(self.dataset.image_ids):
                    raise RuntimeError(
                        f"{skipped} images in a row have no instance of a class once resized "
                        "and augmented (load_mask gives no positive class id): there is "
                        "nothing to train on")
            index = (index + 1) % len(self.dataset.image_ids)

    def _augmentation_of(self, index):
        if image_source(self.dataset, index) in self.no_augmentation_sources:
            return None
        return self.augmentation


class DrawSampler(torch.utils.data.Sampler):
    """The (image index, draw) pairs of one epoch of one process.

    A run draws images as Matterport's generator does: passes over `indices` in a fresh random
    order each (seeded by (seed, pass)), `samples_per_epoch` draws per epoch across all
    processes, each process taking its own `batch_size` draws of every global batch of
    batch_size * world_size. The draws of epoch e are those numbered from e * samples_per_epoch.
    """

    def __init__(self, indices, batch_size, steps_per_epoch, epoch=0, seed=0, rank=0,
                 world_size=1):
        if not len(indices):
            raise ValueError("no images to train on: the dataset has no image with a non-crowd "
                             "instance of its classes")
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.epoch = epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def __len__(self):
        return self.steps_per_epoch * self.batch_size

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        first = self.epoch * self.steps_per_epoch * global_batch
        steps = np.arange(self.steps_per_epoch)[:, None]
        slots = self.rank * self.batch_size + np.arange(self.batch_size)[None, :]
        draws = (first + steps * global_batch + slots).ravel()
        count = len(self.indices)
        passes = draws // count
        orders = {p: np.random.default_rng([self.seed, int(p)]).permutation(count)
                  for p in np.unique(passes)}
        images = [self.indices[orders[p][d % count]] for p, d in zip(passes, draws)]
        return iter([(int(i), int(d)) for i, d in zip(images, draws)])


def collate(samples, mean_pixel):
    """Batches load_image_gt samples: images are zero-padded at the bottom/right to the largest
    of the batch before molding (so padding reads as a zero pixel, as Matterport's), instances
    zero-padded (class 0) to the largest count.

    Returns a dict of tensors: images [B, 3, H, W] float32 molded, image_metas [B, META]
    float32, gt_class_ids [B, G] int64, gt_boxes [B, G, 4] int32, gt_masks [B, G, h, w] bool,
    active_class_ids [B, NUM_CLASSES] float32.
    """
    batch = len(samples)
    height = max(s["image"].shape[0] for s in samples)
    width = max(s["image"].shape[1] for s in samples)
    count = max(len(s["class_ids"]) for s in samples)
    mask_h = max(s["masks"].shape[1] for s in samples)
    mask_w = max(s["masks"].shape[2] for s in samples)
    images = np.zeros((batch, height, width, 3), np.uint8)
    class_ids = np.zeros((batch, count), np.int64)
    boxes = np.zeros((batch, count, 4), np.int32)
    masks = np.zeros((batch, count, mask_h, mask_w), bool)
    for b, sample in enumerate(samples):
        h, w = sample["image"].shape[:2]
        n, mh, mw = sample["masks"].shape
        images[b, :h, :w] = sample["image"]
        class_ids[b, :n] = sample["class_ids"]
        boxes[b, :n] = sample["boxes"]
        masks[b, :n, :mh, :mw] = sample["masks"]
    metas = torch.from_numpy(np.stack([s["image_meta"] for s in samples])).float()
    return {
        "images": torch.from_numpy(mold_image(images, mean_pixel)).permute(0, 3, 1, 2).contiguous(),
        "image_metas": metas,
        "gt_class_ids": torch.from_numpy(class_ids),
        "gt_boxes": torch.from_numpy(boxes),
        "gt_masks": torch.from_numpy(masks),
        "active_class_ids": metas[:, 12:],
    }
