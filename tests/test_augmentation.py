"""preprocess.augmentation and training samples from Matterport-style datasets."""
import random
import sys
import types

import cv2
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import Config
from preprocess.augmentation import AugmentationError, as_augmentation
from preprocess.training_data import (TrainingSamples, load_image_gt,
                                      seeded_global_generators, trainable_image_indices)


def image_and_masks():
    image = np.zeros((8, 10, 3), np.uint8)
    image[:, :, 0] = np.arange(10, dtype=np.uint8)[None, :] * 20
    masks = np.zeros((8, 10, 2), bool)
    masks[1:3, 0:4, 0] = True
    masks[5:7, 6:9, 1] = True
    return image, masks


def flip_and_brighten(image, masks):
    return image[:, ::-1] + 1, masks[:, ::-1]


def test_a_plain_callable_is_applied_to_image_and_masks():
    image, masks = image_and_masks()
    out_image, out_masks = as_augmentation(flip_and_brighten)(image, masks)
    np.testing.assert_array_equal(out_image, image[:, ::-1] + 1)
    np.testing.assert_array_equal(out_masks, masks[:, ::-1])
    assert out_masks.dtype == bool and out_image.flags.c_contiguous


def test_the_samples_seeding_fixes_a_callable_and_restores_the_callers_streams():
    def random_shift(image, masks):
        shift = np.random.randint(1, 10) + random.randint(0, 100)
        return np.roll(image, shift, axis=1), np.roll(masks, shift, axis=1)

    augment = as_augmentation(random_shift)
    image, masks = image_and_masks()

    def shifted(seed):
        with seeded_global_generators(seed):
            return augment(image, masks)[0]

    np.random.seed(123)
    random.seed(123)
    before = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    first = shifted(7)
    assert (np.random.random(), random.random()) == before   # the caller's streams go on
    np.testing.assert_array_equal(shifted(7), first)
    assert any(not np.array_equal(shifted(seed), first) for seed in range(8, 20))


@pytest.mark.parametrize("result, message", [
    (lambda image, masks: image, "must return \\(image, masks\\)"),
    (lambda image, masks: (image[:4], masks[:4]), "changed the image from"),
    (lambda image, masks: (image, masks[:, :, :1]), "changed the masks from"),
    (lambda image, masks: (image.astype(np.float32), masks), "uint8"),
])
def test_augmentations_that_change_sizes_or_types_are_refused(result, message):
    image, masks = image_and_masks()
    with pytest.raises(AugmentationError, match=message):
        as_augmentation(result)(image, masks)


def test_none_and_non_callables():
    assert as_augmentation(None) is None
    with pytest.raises(TypeError, match="imgaug augmenter, an albumentations transform"):
        as_augmentation(42)


def test_imgaug_protocol_with_a_stand_in_library(monkeypatch):
    """The imgaug path as Matterport's load_image_gt: one deterministic augmenter for the image
    and the uint8 masks, the masks only through the geometric augmenters (the hook)."""
    hooks_made = []

    class HooksImages:
        def __init__(self, activator):
            self.activator = activator
            hooks_made.append(self)

    fake = types.ModuleType("imgaug")
    fake.HooksImages = HooksImages
    monkeypatch.setitem(sys.modules, "imgaug", fake)

    class Fliplr:
        pass

    class GaussianBlur:
        pass

    class Deterministic:
        def augment_image(self, image, hooks=None):
            out = image[:, ::-1].copy()           # Fliplr acts on everything
            if hooks is None or hooks.activator(None, GaussianBlur(), [], True):
                out = out // 2                     # the blur stands in for a pixel change
            return out

    class Sequential:
        __module__ = "imgaug.augmenters.meta"

        def seed_(self, seed):
            self.seed = seed

        def to_deterministic(self):
            return Deterministic()

    augmenter = Sequential()
    image, masks = image_and_masks()
    with seeded_global_generators(11):
        out_image, out_masks = as_augmentation(augmenter)(image, masks)
        drawn_next = np.random.randint(2 ** 31)
    np.random.seed(11)
    assert augmenter.seed == np.random.randint(2 ** 31) != drawn_next   # seeded from numpy
    np.testing.assert_array_equal(out_image, image[:, ::-1] // 2)
    np.testing.assert_array_equal(out_masks, masks[:, ::-1])
    assert hooks_made[0].activator(None, Fliplr(), [], True)


def usable(module_name):
    try:
        return __import__(module_name)
    except Exception as error:     # imgaug 0.4 fails on numpy 2 with an AttributeError
        pytest.skip(f"{module_name} is not usable here: {type(error).__name__}: {error}")


def test_imgaug_augmenter():
    usable("imgaug")
    import imgaug.augmenters as iaa

    image, masks = image_and_masks()
    augment = as_augmentation(iaa.Sequential([iaa.Fliplr(1.0), iaa.Add(5)]))
    out_image, out_masks = augment(image, masks)
    np.testing.assert_array_equal(out_image, image[:, ::-1] + 5)
    np.testing.assert_array_equal(out_masks, masks[:, ::-1])


def test_albumentations_transform():
    albumentations = usable("albumentations")
    image, masks = image_and_masks()
    transform = albumentations.Compose([albumentations.HorizontalFlip(p=1.0),
                                        albumentations.InvertImg(p=1.0)])
    out_image, out_masks = as_augmentation(transform)(image, masks)
    np.testing.assert_array_equal(out_image, 255 - image[:, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, ::-1])
    # Random transforms repeat with the seed.
    augment = as_augmentation(albumentations.Compose([albumentations.HorizontalFlip(p=0.5)]))

    def flipped(seed):
        with seeded_global_generators(seed):
            return bool(augment(image, masks)[1][1, 9, 0])

    flips = [flipped(seed) for seed in range(16)]
    assert flips == [flipped(seed) for seed in range(16)]
    assert 0 < sum(flips) < 16


# ----------------------------------------------------------------------------- samples

class SquaresDataset(utils.Dataset):
    """Two sources: 'squares' (class 1) and 'dots' (class 2, one image without instances)."""

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        masks = np.zeros((32, 48, len(info["boxes"])), bool)
        for i, (y1, x1, y2, x2) in enumerate(info["boxes"]):
            masks[y1:y2, x1:x2, i] = True
        return masks, np.array(info["classes"], np.int32)


@pytest.fixture
def squares(tmp_path):
    dataset = SquaresDataset()
    dataset.add_class("squares", 1, "square")
    dataset.add_class("dots", 1, "dot")
    for i, (source, boxes, classes) in enumerate([
            ("squares", [[4, 4, 12, 20]], [1]), ("dots", [], []),
            ("dots", [[20, 30, 28, 40]], [2])]):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((32, 48, 3), 50 * i, np.uint8))
        dataset.add_image(source, image_id=i, path=str(path), boxes=boxes, classes=classes)
    dataset.prepare()
    return dataset


def config(**fields):
    return Config(NUM_CLASSES=3, IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=64,
                  IMAGE_MAX_DIM=64, USE_MINI_MASK=False, **fields)


def test_samples_of_a_matterport_dataset(squares):
    assert trainable_image_indices(squares) == [0, 1, 2]
    samples = TrainingSamples(squares, config())
    sample = samples[(1, 0)]          # image 1 has no instance: image 2 is taken instead
    assert sample["image_meta"][0] == 2
    # Only the classes of image 2's source are active (Matterport's active_class_ids).
    np.testing.assert_array_equal(sample["image_meta"][12:], [1, 0, 1])
    np.testing.assert_array_equal(samples[(0, 0)]["image_meta"][12:], [1, 1, 0])


def test_augmentation_and_no_augmentation_sources(squares):
    augment = as_augmentation(flip_and_brighten)
    samples = TrainingSamples(squares, config(), augmentation=augment,
                              no_augmentation_sources=["dots"])
    plain = load_image_gt(squares, 0, config())
    augmented = samples[(0, 0)]
    np.testing.assert_array_equal(augmented["image"], plain["image"][:, ::-1] + 1)
    np.testing.assert_array_equal(augmented["masks"], plain["masks"][:, :, ::-1])
    np.testing.assert_array_equal(samples[(2, 0)]["image"], load_image_gt(squares, 2,
                                                                          config())["image"])


def test_a_dataset_without_instances_is_an_error(squares):
    for info in squares.image_info:
        info["boxes"], info["classes"] = [], []
    sample = TrainingSamples(squares, config())[(0, 0)]
    assert sample["error"].startswith("no image of the dataset gives a training sample")
    assert sample["skipped"] == []
