"""Training samples: Matterport's load_image_gt with an augmentation hook, a reproducible sampler
and the collate function, for torch DataLoader workers.

Datasets are duck-typed, as Matterport's utils.Dataset: `image_ids` (0..n-1), `num_classes`
(background included), `load_image(image_id)` -> [H, W, 3] uint8 RGB, `load_mask(image_id)` ->
(masks [H, W, N] bool, class_ids [N] int32, negative for crowds) and `image_reference(image_id)`
(a string naming the image in messages). preprocess.coco.CocoDataset is one.

Every random choice of a sample (crop position, augmentation, which instances to keep past
MAX_GT_INSTANCES) comes from a generator seeded by (seed, draw), where `draw` numbers the samples
of a run in order. The same run therefore sees the same samples however many workers or
processes load them, and a resumed run continues the sequence exactly.

An image that cannot be processed is replaced by the next one of the dataset, and the sample
says so (its "skipped" list), so that the training loop can report and count such images
whatever process loaded them.
"""
import contextlib
import random

import numpy as np
import torch

from mrcnn.cli import error_message
from mrcnn.dataset import active_class_ids, image_source
from mrcnn.molding import compose_image_meta, mold_image, resize_image
from preprocess.coco import DatasetError
from preprocess.images import IMAGE_ERRORS, check_resizable
from preprocess.masks import extract_bboxes, minimize_mask, resize_mask

# What an image that cannot be processed raises: unreadable, over the dataset's pixel budget, too
# thin for the resize mode (IMAGE_ERRORS), or another size than the annotation file gives.
LOAD_ERRORS = (*IMAGE_ERRORS, DatasetError)


def load_image_gt(dataset, image_id, config, augmentation=None, rng=None):
    """Matterport's load_image_gt for image `image_id` of a dataset.

    The image is resized and padded as config says (a 'crop' position and the instances kept
    past MAX_GT_INSTANCES are drawn from `rng`, a numpy Generator), then passed with its masks
    to `augmentation` (see augment; the window in the meta is not changed, as in Matterport).
    Instances whose mask is empty after that are dropped. The active classes are those of the
    image's source (mrcnn.dataset.active_class_ids).

    Returns a dict: image [H, W, 3] uint8 (resized, not molded), image_meta [12 + NUM_CLASSES]
    float64, class_ids [N] int64 (negative for crowds), boxes [N, 4] int32 pixels (y2, x2
    exclusive), masks [N, h, w] bool (mini-masks of MINI_MASK_SHAPE, or full-image masks).
    """
    rng = rng if rng is not None else np.random.default_rng()
    image = dataset.load_image(image_id)
    check_resizable(image.shape, config, dataset.image_reference(image_id))
    masks, class_ids = dataset.load_mask(image_id)
    original_shape = image.shape
    crop_rng = random.Random(int(rng.integers(2 ** 63)))
    image, window, scale, padding, crop = resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
        min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE, rng=crop_rng)
    masks = resize_mask(masks, scale, padding, crop)
    if augmentation is not None:
        image, masks = augment(augmentation, image, masks, int(rng.integers(2 ** 32)))
    visible = masks.any(axis=(0, 1))
    masks, class_ids = masks[:, :, visible], class_ids[visible]
    if len(class_ids) > config.MAX_GT_INSTANCES:
        keep = np.sort(rng.choice(len(class_ids), config.MAX_GT_INSTANCES, replace=False))
        masks, class_ids = masks[:, :, keep], class_ids[keep]
    boxes = extract_bboxes(masks)
    if config.USE_MINI_MASK:
        masks = minimize_mask(boxes, masks, config.MINI_MASK_SHAPE)
    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active_class_ids(dataset, image_id))
    return {"image": np.ascontiguousarray(image), "image_meta": image_meta,
            "class_ids": class_ids.astype(np.int64), "boxes": boxes,
            "masks": np.ascontiguousarray(masks.transpose(2, 0, 1))}


def augment(augmentation, image, masks, seed):
    """augmentation(image [H, W, 3] uint8, masks [H, W, N] bool) -> (image, masks), called with
    Python's `random`, numpy's global generator and torch's CPU generator seeded from `seed`
    (and restored after), so that an augmentation drawing from them is reproducible. It must
    keep the shapes (as Matterport requires) and return a uint8 image; masks of any dtype are
    read as nonzero = inside."""
    with seeded_global_generators(seed):
        new_image, new_masks = augmentation(image, masks)
    new_image, new_masks = np.asarray(new_image), np.asarray(new_masks)
    if new_image.shape != image.shape or new_image.dtype != np.uint8:
        raise ValueError(f"the augmentation turned a {image.shape} uint8 image into a "
                         f"{new_image.shape} {new_image.dtype} one; it must keep the image's "
                         "shape and dtype")
    if new_masks.shape != masks.shape:
        raise ValueError(f"the augmentation turned masks {masks.shape} into {new_masks.shape}; "
                         "it must keep their shape")
    return new_image, new_masks.astype(bool)


@contextlib.contextmanager
def seeded_global_generators(seed):
    """Seeds random, numpy.random and torch's CPU generator with `seed`, restoring them after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def flip_left_right(image, masks):
    """Matterport's COCO augmentation (imgaug's Fliplr(0.5)): a left-right flip, half the time."""
    if np.random.random() < 0.5:
        return image[:, ::-1], masks[:, ::-1]
    return image, masks


def trainable_image_indices(dataset):
    """The image ids to draw training samples from.

    A COCO dataset (preprocess.coco.CocoDataset) gives those with at least one non-crowd
    instance of its classes, read from the annotations; other datasets give every image, and
    TrainingSamples replaces the images without one as it loads them (Matterport's data
    generator skips them).
    """
    if not hasattr(dataset, "coco"):
        return list(dataset.image_ids)
    categories = set(dataset.category_ids)
    return [index for index, coco_id in enumerate(dataset.coco_image_ids)
            if any(not ann["iscrowd"] and ann["category_id"] in categories
                   for ann in dataset.coco.imgToAnns[coco_id])]


class TrainingSamples(torch.utils.data.Dataset):
    """Map-style dataset of training samples, indexed by (image id, draw) pairs as DrawSampler
    yields them; each sample (load_image_gt) also carries its "draw".

    `augmentation`: None, or a callable (image, masks) -> (image, masks) applied after resizing
    (see augment), e.g. flip_left_right, except to the images of the sources (Matterport
    Dataset's image_info[i]["source"]) in `no_augmentation_sources`. An image that cannot be
    processed (LOAD_ERRORS) is replaced by the next image of the dataset, and so is one whose
    sample has no instance of a class (> 0) left; the sample's "skipped" entry lists each image
    passed over because it could not be processed, as a line naming it and saying why. When no
    image of the dataset gives a sample, the sample is {"error": why} instead; collate passes
    both on, for the training loop to report.
    """

    def __init__(self, dataset, config, augmentation=None, seed=0, no_augmentation_sources=()):
        if dataset.num_classes != config.NUM_CLASSES:
            raise ValueError(f"the dataset has {dataset.num_classes} classes (background "
                             f"included) but config.NUM_CLASSES is {config.NUM_CLASSES}")
        self.dataset = dataset
        self.config = config
        self.augmentation = augmentation
        self.no_augmentation_sources = set(no_augmentation_sources or ())
        self.seed = seed
        self.image_ids = list(dataset.image_ids)
        self.positions = {image_id: position for position, image_id in enumerate(self.image_ids)}

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, item):
        image_id, draw = item
        position = self.positions[image_id]
        skipped = []
        for attempt in range(len(self.image_ids)):
            image_id = self.image_ids[(position + attempt) % len(self.image_ids)]
            rng = np.random.default_rng([self.seed, draw, attempt])
            try:
                sample = load_image_gt(self.dataset, image_id, self.config,
                                       self._augmentation_of(image_id), rng)
            except LOAD_ERRORS as error:
                skipped.append(error_message(error))
                continue
            if (sample["class_ids"] > 0).any():
                return dict(sample, draw=draw, skipped=skipped)
        why = "no image of the dataset gives a training sample with an instance of a class"
        if skipped:
            why += f" ({len(skipped)} cannot be processed; the first: {skipped[0]})"
        return {"error": why, "skipped": skipped}

    def _augmentation_of(self, image_id):
        if image_source(self.dataset, image_id) in self.no_augmentation_sources:
            return None
        return self.augmentation


class DrawSampler(torch.utils.data.Sampler):
    """The (image index, draw) pairs of one epoch of one process.

    A run draws images as Matterport's generator does: passes over `indices` in a fresh random
    order each (seeded by (seed, pass)), steps_per_epoch global batches of batch_size *
    world_size draws per epoch, each process taking its own `batch_size` draws of every global
    batch. The draws of epoch e are those numbered from e * steps_per_epoch * global batch; a
    sampler of `epochs` epochs from `epoch` yields those epochs' draws in one sequence.
    """

    def __init__(self, indices, batch_size, steps_per_epoch, epoch=0, seed=0, rank=0,
                 world_size=1, epochs=1):
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
        self.epochs = epochs

    def __len__(self):
        return self.steps_per_epoch * self.epochs * self.batch_size

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        first = self.epoch * self.steps_per_epoch * global_batch
        steps = np.arange(self.steps_per_epoch * self.epochs)[:, None]
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
    active_class_ids [B, NUM_CLASSES] float32, draws [B] int64 for TrainingSamples' samples;
    and "skipped", the samples' skipped lines. When a sample is an {"error": why}
    (TrainingSamples), the batch is that error alone.
    """
    errors = [sample for sample in samples if "error" in sample]
    if errors:
        return errors[0]
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
    batch = {
        "images": torch.from_numpy(mold_image(images, mean_pixel)).permute(0, 3, 1, 2).contiguous(),
        "image_metas": metas,
        "gt_class_ids": torch.from_numpy(class_ids),
        "gt_boxes": torch.from_numpy(boxes),
        "gt_masks": torch.from_numpy(masks),
        "active_class_ids": metas[:, 12:],
        "skipped": [line for sample in samples for line in sample.get("skipped", ())],
    }
    if "draw" in samples[0]:
        batch["draws"] = torch.tensor([s["draw"] for s in samples], dtype=torch.int64)
    return batch
