"""Training augmentation: imgaug augmenters, albumentations transforms or plain callables, as one
kind of callable for the training samples.

`as_augmentation(augmentation)` returns `augment(image, masks) -> (image, masks)`:

    image  [H, W, 3] uint8, the resized (molded-size) training image
    masks  [H, W, N] bool, its instance masks

whose random choices all come from `numpy.random` (imgaug's and albumentations' own generators
are seeded from it), so that seeding numpy's global generator for a sample (as the training
samples do, preprocess.training_data.augment) fixes its augmentation.

applied as Matterport's load_image_gt applies its imgaug augmentation: after resizing, the
same random transformation on the image and its masks, the image size unchanged (the image
meta's window is not moved, as in Matterport). It accepts

- an imgaug augmenter (Matterport's samples pass `iaa.Sometimes(...)`, `iaa.Fliplr(0.5)`):
  made deterministic once per sample (`to_deterministic`) and applied to the image and to the
  masks as uint8, where only the augmenters that move pixels act on the masks (Matterport's
  list: Sequential, SomeOf, OneOf, Sometimes, Fliplr, Flipud, CropAndPad, Affine,
  PiecewiseAffine); a blur or a colour change leaves them alone;
- an albumentations transform (e.g. `A.Compose([A.HorizontalFlip(), A.RandomBrightnessContrast()])`),
  called as `transform(image=image, masks=[one mask per instance])`, which moves the masks with
  the spatial transforms only;
- any callable `(image, masks) -> (image, masks)` (returned as it is, with its result
  checked), which should draw its randomness from `random` or `numpy.random`.

Neither library is a dependency: an augmenter of either is recognised without importing it.
"""
import numpy as np

# The imgaug augmenters that Matterport applies to masks: they move pixels and keep values.
IMGAUG_MASK_AUGMENTERS = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                          "CropAndPad", "Affine", "PiecewiseAffine")


class AugmentationError(ValueError):
    """An augmentation that returned something the training samples cannot use."""


def as_augmentation(augmentation):
    """`augment(image, masks) -> (image, masks)` for an imgaug augmenter, an albumentations
    transform or a callable `(image, masks) -> (image, masks)` (see the module docstring),
    whose result is checked to keep the sizes; None stays None."""
    if augmentation is None:
        return None
    if _is_imgaug(augmentation):
        apply = _imgaug_call(augmentation)
    elif _is_albumentations(augmentation):
        apply = _albumentations_call(augmentation)
    elif callable(augmentation):
        apply = augmentation
    else:
        raise TypeError(f"augmentation must be an imgaug augmenter, an albumentations transform "
                        f"or a callable (image, masks) -> (image, masks); got "
                        f"{type(augmentation).__name__}")

    def augment(image, masks):
        return _checked(apply(image, masks), image, masks, augmentation)

    return augment


def _seed_from_numpy():
    return int(np.random.randint(2 ** 31))


def _is_imgaug(augmentation):
    return _library_of(augmentation) == "imgaug"


def _is_albumentations(augmentation):
    return _library_of(augmentation) == "albumentations"


def _library_of(augmentation):
    return type(augmentation).__module__.split(".")[0]


def _imgaug_call(augmenter):
    import imgaug

    def keeps_masks(images, child, parents, default):
        return type(child).__name__ in IMGAUG_MASK_AUGMENTERS

    hooks = imgaug.HooksImages(activator=keeps_masks)

    def apply(image, masks):
        seed = _seed_from_numpy()
        if hasattr(augmenter, "seed_"):      # imgaug >= 0.4: the augmenter's own generator
            augmenter.seed_(seed)
        else:
            imgaug.seed(seed)
        deterministic = augmenter.to_deterministic()
        image = deterministic.augment_image(image)
        if masks.shape[2]:
            masks = deterministic.augment_image(masks.astype(np.uint8), hooks=hooks)
        return image, masks

    return apply


def _albumentations_call(transform):
    def apply(image, masks):
        if hasattr(transform, "set_random_seed"):   # albumentations >= 1.4.21
            transform.set_random_seed(_seed_from_numpy())
        if not masks.shape[2]:
            return transform(image=image)["image"], masks
        result = transform(image=image, masks=[masks[:, :, i].astype(np.uint8)
                                               for i in range(masks.shape[2])])
        return result["image"], np.stack([np.asarray(m) for m in result["masks"]], axis=2)

    return apply


def _checked(result, image, masks, augmentation):
    """The augmented (image [H, W, 3] uint8, masks [H, W, N] bool), checked to keep the sizes."""
    name = type(augmentation).__name__
    if not isinstance(result, tuple) or len(result) != 2:
        raise AugmentationError(f"the augmentation {name} must return (image, masks), got "
                                f"{type(result).__name__}")
    new_image, new_masks = (np.asarray(value) for value in result)
    if new_image.dtype != np.uint8:
        raise AugmentationError(f"the augmentation {name} returned a {new_image.dtype} image; "
                                "it must return uint8 pixels, as it gets them")
    if new_image.shape != image.shape:
        raise AugmentationError(f"the augmentation {name} changed the image from "
                                f"{image.shape} to {new_image.shape}; it must keep the size (as "
                                "in Matterport: crop or scale within the image, e.g. imgaug's "
                                "CropAndPad with keep_size)")
    if new_masks.shape != masks.shape:
        raise AugmentationError(f"the augmentation {name} changed the masks from "
                                f"{masks.shape} to {new_masks.shape}; it must keep them "
                                "[H, W, instances]")
    return np.ascontiguousarray(new_image), np.ascontiguousarray(new_masks, dtype=bool)
