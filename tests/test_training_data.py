"""Training samples (load_image_gt, flips, the draw sampler, collate) on a COCO set written here."""
import json
import random

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mrcnn.config import Config
from preprocess.coco import CocoDataset, coco_layout
from preprocess.training_data import (DrawSampler, TrainingSamples, collate, flip_left_right,
                                      load_image_gt, trainable_image_indices)

SIDE = 32
# Image 1: a box instance (rows 8..15, cols 4..11) and a crowd region; image 2: only a crowd;
# image 3: no annotation; image 4: a wide box (rows 20..23, cols 2..29) and the box of image 1.
BOX = [4, 8, 12, 8, 12, 16, 4, 16]
WIDE = [2, 20, 30, 20, 30, 24, 2, 24]


def crowd_rle():
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[24:30, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [SIDE, SIDE], "counts": rle["counts"].decode("ascii")}


def annotation(ann_id, image_id, category_id, segmentation, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "segmentation": segmentation, "area": 1.0, "bbox": [0, 0, 1, 1]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for image_id in (1, 2, 3, 4):
        name = f"{image_id}.png"
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "train" / name), pixels)
        images.append({"id": image_id, "file_name": name, "height": SIDE, "width": SIDE})
    data = {
        "images": images,
        "categories": [{"id": 7, "name": "box"}, {"id": 9, "name": "crowd"}],
        "annotations": [
            annotation(1, 1, 7, [BOX]),
            annotation(2, 1, 9, crowd_rle(), iscrowd=1),
            annotation(3, 2, 9, crowd_rle(), iscrowd=1),
            annotation(4, 4, 7, [WIDE]),
            annotation(5, 4, 7, [BOX]),
        ],
    }
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return CocoDataset(*coco_layout(root, "train"))


def config(**overrides):
    values = dict(NUM_CLASSES=3, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, USE_MINI_MASK=False)
    values.update(overrides)
    return Config(**values)


def test_load_image_gt_hand_case(dataset):
    sample = load_image_gt(dataset, 0, config())
    # Scale 2, no padding. scipy's corner-aligned order-0 zoom sends output row k to input row
    # round(k * 31 / 63): rows 8..15 become 16..31 and columns 4..11 become 8..23.
    assert sample["image"].shape == (64, 64, 3) and sample["image"].dtype == np.uint8
    assert sample["class_ids"].tolist() == [1, -2]  # the crowd's class is negated
    assert sample["boxes"].tolist()[0] == [16, 8, 32, 24]
    expected = np.zeros((64, 64), bool)
    expected[16:32, 8:24] = True
    np.testing.assert_array_equal(sample["masks"][0], expected)
    meta = sample["image_meta"]
    assert meta[0] == 0 and list(meta[1:4]) == [SIDE, SIDE, 3] and list(meta[4:7]) == [64, 64, 3]
    assert list(meta[7:11]) == [0, 0, 64, 64] and meta[11] == 2 and list(meta[12:]) == [1] * 3


def mirror(image, masks):
    return image[:, ::-1], masks[:, ::-1]


def test_augmentation_mirrors_image_masks_and_boxes(dataset):
    plain = load_image_gt(dataset, 0, config())
    flipped = load_image_gt(dataset, 0, config(), augmentation=mirror)
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["masks"], plain["masks"][:, :, ::-1])
    y1, x1, y2, x2 = plain["boxes"].T
    np.testing.assert_array_equal(flipped["boxes"], np.stack([y1, 64 - x2, y2, 64 - x1], 1))
    np.testing.assert_array_equal(flipped["image_meta"], plain["image_meta"])  # window unchanged


def test_mini_masks_and_instance_limit(dataset):
    sample = load_image_gt(dataset, 3, config(USE_MINI_MASK=True, MINI_MASK_SHAPE=[8, 8]))
    assert sample["masks"].shape == (2, 8, 8) and sample["masks"].all()  # boxes are full
    picks = set()
    for seed in range(6):
        limited = load_image_gt(dataset, 3, config(MAX_GT_INSTANCES=1),
                                rng=np.random.default_rng(seed))
        assert len(limited["class_ids"]) == 1 and len(limited["masks"]) == 1
        ys, xs = np.nonzero(limited["masks"][0])
        assert limited["boxes"][0].tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        picks.add(tuple(limited["boxes"][0]))
    assert len(picks) == 2  # the kept instance is drawn at random


def test_trainable_images_have_a_non_crowd_instance(dataset):
    assert trainable_image_indices(dataset) == [0, 3]


def test_samples_are_a_function_of_the_draw(dataset):
    samples = TrainingSamples(dataset, config(), augmentation=flip_left_right, seed=5)
    flips = []
    for draw in range(12):
        first, again = samples[(0, draw)], samples[(0, draw)]
        np.testing.assert_array_equal(first["image"], again["image"])
        assert first["draw"] == draw
        flips.append(bool((first["masks"][0][:, 40:56]).any()))  # mirrored box sits at 40..56
    assert 0 < sum(flips) < 12
    unflipped = TrainingSamples(dataset, config(), seed=5)
    assert not any(unflipped[(0, draw)]["masks"][0][:, 40:56].any() for draw in range(12))


def test_an_augmentation_drawing_from_the_global_generators_is_reproducible(dataset):
    def noise(image, masks):  # what imgaug-style augmenters do: draw from the global state
        shift = np.random.randint(0, 50) + random.randint(0, 50) + int(torch.randint(50, ()))
        return (image.astype(np.int64) + shift).clip(0, 255).astype(np.uint8), masks

    samples = TrainingSamples(dataset, config(), augmentation=noise, seed=1)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    images = [samples[(0, draw)]["image"] for draw in (0, 1, 0)]
    np.testing.assert_array_equal(images[0], images[2])
    assert not np.array_equal(images[0], images[1])
    # The caller's generators are as they were.
    assert random.getstate() == states[0]
    np.testing.assert_array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


@pytest.mark.parametrize("bad, message", [
    (lambda image, masks: (image[:10], masks), "must keep the image's shape"),
    (lambda image, masks: (image.astype(np.float32), masks), "shape and dtype"),
    (lambda image, masks: (image, masks[:, :, :0]), "must keep their shape"),
])
def test_an_augmentation_must_keep_shapes(dataset, bad, message):
    with pytest.raises(ValueError, match=message):
        load_image_gt(dataset, 0, config(), augmentation=bad)


class MatterportStyleDataset:
    """A dataset as Matterport's utils.Dataset subclasses are: ids, classes and loaders only."""

    num_classes = 3
    class_names = ["BG", "box", "crowd"]
    image_ids = np.arange(3)

    def load_image(self, image_id):
        return np.full((SIDE, SIDE, 3), 10 * image_id, np.uint8)

    def load_mask(self, image_id):
        masks = np.zeros((SIDE, SIDE, 1), bool)
        masks[4:12, 4:12] = True
        # Image 0 has only a crowd; images 1 and 2 an instance of class 1.
        return masks, np.array([-2 if image_id == 0 else 1], np.int32)

    def image_reference(self, image_id):
        return f"image {image_id}"


def test_any_dataset_with_matterports_interface_trains():
    dataset = MatterportStyleDataset()
    assert trainable_image_indices(dataset) == [0, 1, 2]
    samples = TrainingSamples(dataset, config())
    # Image 0 has no instance to learn from: the next image replaces it, as Matterport skips it.
    assert samples[(0, 0)]["image_meta"][0] == 1
    assert samples[(2, 0)]["image_meta"][0] == 2


def test_class_count_must_match(dataset):
    with pytest.raises(ValueError, match="3 classes"):
        TrainingSamples(dataset, config(NUM_CLASSES=5))


def test_images_that_cannot_be_processed_are_reported_and_replaced(dataset, tmp_path):
    broken = CocoDataset(dataset.annotation_json, dataset.image_dir)
    broken.image_dir = str(tmp_path)  # the same files, now corrupt
    for info in (broken.image_info(i) for i in range(len(broken))):
        (tmp_path / info.path.rsplit("/", 1)[1]).write_bytes(b"not a png")
    good = tmp_path / "4.png"
    good.write_bytes(open(dataset.image_info(3).path, "rb").read())
    samples = TrainingSamples(broken, config())
    sample = samples[(1, 0)]  # images 2 and 3 are corrupt: image 4 is loaded instead
    assert sample["image_meta"][0] == 3
    assert [line.split(": ")[0] for line in sample["skipped"]] == [
        str(tmp_path / "2.png"), str(tmp_path / "3.png")]
    assert "not a readable image" in sample["skipped"][0]
    assert samples[(3, 0)]["skipped"] == []
    # Over the pixel budget: even image 4 fails, so no image of the dataset can be processed.
    broken.max_pixels = SIDE * SIDE - 1
    failed = samples[(0, 0)]
    assert failed["error"].startswith(
        "no image of the dataset gives a training sample with an instance of a class (4 cannot "
        f"be processed; the first: {tmp_path / '1.png'} (by its size in")
    assert len(failed["skipped"]) == 4 and "4.png (by its size" in failed["skipped"][3]
    batch = collate([sample, failed], [0, 0, 0])
    assert batch == failed  # an error batch is the error alone


def test_collate_passes_the_skipped_images_on(dataset):
    samples = TrainingSamples(dataset, config())
    first, second = samples[(0, 0)], samples[(3, 1)]
    first["skipped"], second["skipped"] = ["a.png: broken"], ["b.png: broken", "c.png: thin"]
    assert collate([first, second], [0, 0, 0])["skipped"] == [
        "a.png: broken", "b.png: broken", "c.png: thin"]


def test_draw_sampler_passes_epochs_and_ranks():
    indices = [10, 11, 12, 13, 14]
    single = [list(DrawSampler(indices, 2, 3, epoch, seed=1)) for epoch in (0, 1)]
    draws = [d for epoch in single for _, d in epoch]
    assert draws == list(range(12))  # epoch 1 continues where epoch 0 ended
    images = [i for epoch in single for i, _ in epoch]
    assert sorted(images[:5]) == indices and sorted(images[5:10]) == indices  # whole passes
    assert single == [list(DrawSampler(indices, 2, 3, e, seed=1)) for e in (0, 1)]
    assert single[0] != list(DrawSampler(indices, 2, 3, 0, seed=2))
    # Two processes with 1 image each share the global batches of 2 of the single process.
    ranks = [list(DrawSampler(indices, 1, 3, 0, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert [pair for step in zip(*ranks) for pair in step] == single[0]
    # One sampler over several epochs draws what the samplers of each epoch do.
    assert list(DrawSampler(indices, 2, 3, 0, seed=1, epochs=2)) == single[0] + single[1]


def test_collate_pads_images_and_instances():
    mean = [100.0, 110.0, 120.0]

    def sample(height, width, count):
        return {"image": np.full((height, width, 3), 200, np.uint8),
                "image_meta": np.arange(15, dtype=np.float64),
                "class_ids": np.arange(1, count + 1), "boxes": np.ones((count, 4), np.int32),
                "masks": np.ones((count, height, width), bool)}

    batch = collate([sample(64, 128, 2), sample(128, 64, 1)], mean)
    assert "draws" not in batch
    assert collate([dict(sample(8, 8, 1), draw=7)], mean)["draws"].tolist() == [7]
    assert batch["images"].shape == (2, 3, 128, 128) and batch["images"].dtype == torch.float32
    np.testing.assert_allclose(batch["images"][0, :, 0, 0], [100, 90, 80])
    np.testing.assert_allclose(batch["images"][0, :, 100, 0], [-100, -110, -120])  # padding
    assert batch["gt_class_ids"].tolist() == [[1, 2], [1, 0]]
    assert batch["gt_boxes"][1, 1].tolist() == [0, 0, 0, 0]
    assert batch["gt_masks"].shape == (2, 2, 128, 128) and not batch["gt_masks"][1, 1].any()
    assert batch["gt_masks"][0, 0].sum() == 64 * 128
    np.testing.assert_array_equal(batch["active_class_ids"], [[12, 13, 14]] * 2)
