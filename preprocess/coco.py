"""COCO-format instance-segmentation datasets on pycocotools, with Matterport's mask semantics.

`CocoDataset` reads any COCO "instances" file (COCO 2014/2017, the 2014 minival subsets, custom
sets such as `preprocess.synthetic`'s), validates it completely once (preprocess.coco_checks:
broken files are errors that name the file and the entry; annotations past their image are
clipped and unusable ones skipped, with one warning that counts them), maps COCO category ids to
contiguous class indices (0 = background) and loads images and instance masks the way
Matterport's `samples/coco/coco.py` does.
"""
import contextlib
import io
import json
import os
import re
import warnings
from typing import NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from preprocess.coco_checks import DatasetError, DatasetWarning, check_instances
from preprocess.images import DEFAULT_MAX_PIXELS, check_pixel_budget, load_image

__all__ = ["CocoDataset", "DatasetError", "DatasetWarning", "ImageInfo", "coco_layout",
           "open_dataset"]


class ImageInfo(NamedTuple):
    coco_id: int
    path: str
    height: int
    width: int


def coco_layout(dataset_dir, split):
    """(annotation_json, image_dir) of `split` in a COCO-style directory.

    COCO 2017 layout: `DIR/annotations/instances_<split>.json` with the images in `DIR/<split>/`
    (split "train2017", "val2017"; "train", "val" for `preprocess.synthetic`). The COCO 2014
    subsets "minival2014" and "valminusminival2014" (Matterport's evaluation and extra training
    sets) have their images in `DIR/val2014/`.
    """
    annotation_json = os.path.join(dataset_dir, "annotations", f"instances_{split}.json")
    image_dir = os.path.join(dataset_dir, re.sub(r"^(minival|valminusminival)", "val", split))
    missing = [path for path in (annotation_json, image_dir) if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(
            f"split {split!r} of {dataset_dir} is incomplete: {' and '.join(missing)} not found "
            f"(expected DIR/annotations/instances_<split>.json and images in DIR/<split>/)")
    return annotation_json, image_dir


class CocoDataset:
    """A COCO-format instance-segmentation dataset.

    Class indices are contiguous: 0 is the background and 1..K follow the sorted COCO category
    ids, or the order of `class_ids` when given (then annotations of other categories are
    ignored). Images are ordered by COCO image id; index i of this dataset is `coco_image_ids[i]`.

    Matterport's `load_coco` keeps only images with at least one annotation of the selected
    classes; `annotated_only=True` does the same. By default every image is kept, since an
    evaluation must also see the images without objects.

    The file is validated completely here (preprocess.coco_checks.check_instances): the dataset
    holds only usable annotations, clipped to their image; `repairs` says what was clipped and
    skipped, and a DatasetWarning says it once (with `strict`, a DatasetError instead). Both
    training and evaluation read the dataset through this class, so they report the same counts.

    Instances whose mask decodes to no pixel are skipped by `load_mask` (as in Matterport); their
    annotation ids collect in `skipped_annotation_ids`, counted by `skipped_instances` (per process:
    data-loader workers keep their own).

    Args:
        annotation_json, image_dir: the annotation file and the folder its file_names are in.
        class_ids: COCO category ids to use, in class-index order (default: all, sorted).
        annotated_only: keep only images with an annotation of those classes.
        strict: refuse files with annotations to clip or skip (DatasetError).
        max_pixels: load_image refuses larger images (preprocess.images); None: no limit.
        allow_external_paths: let image file_names be absolute or lead out of image_dir.
    """

    def __init__(self, annotation_json, image_dir, class_ids=None, *, annotated_only=False,
                 strict=False, max_pixels=DEFAULT_MAX_PIXELS, allow_external_paths=False):
        self.annotation_json = os.fspath(annotation_json)
        self.image_dir = os.fspath(image_dir)
        self.max_pixels = max_pixels
        if not os.path.isfile(self.annotation_json):
            raise FileNotFoundError(f"annotation file not found: {self.annotation_json}")
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"image directory not found: {self.image_dir}")
        data = _read_json(self.annotation_json)
        checked = check_instances(data, self.annotation_json, strict=strict,
                                  allow_external_paths=allow_external_paths)
        self.repairs = checked.repairs
        if self.repairs:
            warnings.warn(str(self.repairs), DatasetWarning, stacklevel=2)
        self.coco = COCO()
        self.coco.dataset = {**data, "annotations": checked.annotations}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress messages
            self.coco.createIndex()

        categories = checked.categories
        if class_ids is None:
            category_ids = sorted(categories)
        else:
            category_ids = _check_class_ids(class_ids, categories, self.annotation_json)
        self._category_ids = np.array(category_ids, dtype=np.int64)
        self._index_of_category = {cat: index + 1 for index, cat in enumerate(category_ids)}
        self.class_names = ["BG"] + [categories[cat]["name"] for cat in category_ids]

        image_ids = sorted(checked.images)
        if annotated_only:
            image_ids = [image_id for image_id in image_ids
                         if any(ann["category_id"] in self._index_of_category
                                for ann in self.coco.imgToAnns[image_id])]
        self.coco_image_ids = image_ids
        self.skipped_annotation_ids = set()

    def __len__(self):
        return len(self.coco_image_ids)

    def __repr__(self):
        return (f"<CocoDataset {self.annotation_json} with images in {self.image_dir}: "
                f"{len(self)} images, {self.num_classes - 1} classes>")

    @property
    def num_classes(self):
        """Number of classes, background included (Config.NUM_CLASSES)."""
        return len(self.class_names)

    @property
    def image_ids(self):
        """Dataset indices 0..len-1 (Matterport's `Dataset.image_ids`)."""
        return np.arange(len(self))

    @property
    def category_ids(self):
        """COCO category ids of class indices 1..K, in index order."""
        return self._category_ids.tolist()

    @property
    def skipped_instances(self):
        """How many instances load_mask has skipped because their mask is empty."""
        return len(self.skipped_annotation_ids)

    def to_coco_category_id(self, index):
        """COCO category id of class index (1..K); an int, or an array for an array of indices."""
        index = np.asarray(index)
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"class indices must be integers, got dtype {index.dtype}")
        invalid = (index < 1) | (index >= self.num_classes)
        if invalid.any():
            raise ValueError(f"class indices {np.unique(index[invalid]).tolist()} are not in "
                             f"1..{self.num_classes - 1} (0 is the background, which has no "
                             "COCO category)")
        category_ids = self._category_ids[index - 1]
        return int(category_ids) if category_ids.ndim == 0 else category_ids

    def from_coco_category_id(self, category_id):
        """Class index of a COCO category id; an int, or an array for an array of ids."""
        category_id = np.asarray(category_id)
        order = np.argsort(self._category_ids)
        sorted_ids = self._category_ids[order]
        position = np.clip(np.searchsorted(sorted_ids, category_id), 0, len(sorted_ids) - 1)
        unknown = sorted_ids[position] != category_id
        if unknown.any():
            raise ValueError(f"COCO category ids {np.unique(category_id[unknown]).tolist()} are "
                             f"not classes of this dataset ({self.category_ids})")
        index = order[position] + 1
        return int(index) if index.ndim == 0 else index

    def image_info(self, index):
        """ImageInfo(coco_id, path, height, width) of dataset index `index`."""
        coco_id = self.coco_image_ids[self._check_index(index)]
        image = self.coco.imgs[coco_id]
        return ImageInfo(coco_id, os.path.join(self.image_dir, image["file_name"]),
                         image["height"], image["width"])

    def image_reference(self, index):
        """The file of image `index` (Matterport's `Dataset.image_reference`)."""
        return self.image_info(index).path

    def load_image(self, index):
        """RGB uint8 [H, W, 3] of image `index` (its stored pixels: EXIF orientation ignored, as
        COCO annotations refer to them); its size must match the annotation file.

        Raises FileNotFoundError, ImageTooLargeError (more than max_pixels, told from the
        annotation file or the image's header before decoding), ImageLoadError (unreadable) or
        DatasetError (a size other than the annotation file's); each message names the file.
        """
        info = self.image_info(index)
        check_pixel_budget((info.height, info.width), self.max_pixels,
                           f"{info.path} (by its size in {self.annotation_json})")
        image = load_image(info.path, max_pixels=self.max_pixels, orientation=False)
        if image.shape[:2] != (info.height, info.width):
            raise DatasetError(f"{info.path} is {image.shape[0]}x{image.shape[1]} pixels but "
                               f"{self.annotation_json} gives image {info.coco_id} as "
                               f"{info.height}x{info.width}")
        return image

    def load_mask(self, index):
        """Instance masks of image `index` (Matterport's `CocoDataset.load_mask`).

        Returns masks [H, W, N] bool and class_ids [N] int32, in annotation-file order. Crowd
        instances get the negated class index, and a crowd mask whose size differs from the
        image's becomes all ones; instances with an empty mask are skipped. An image without
        usable instances gives masks [H, W, 0] and class_ids [0].
        """
        info = self.image_info(index)
        annotations = [ann for ann in self.coco.imgToAnns[info.coco_id]
                       if ann["category_id"] in self._index_of_category]
        rles = [_annotation_rle(ann, info) for ann in annotations]
        nonempty = [mask_utils.area(rle) > 0 for rle in rles]
        self.skipped_annotation_ids.update(
            ann["id"] for ann, keep in zip(annotations, nonempty) if not keep)
        kept = [(ann, rle) for ann, rle, keep in zip(annotations, rles, nonempty) if keep]
        if not kept:
            return (np.zeros((info.height, info.width, 0), dtype=bool),
                    np.zeros(0, dtype=np.int32))
        full_image = _full_rle(info.height, info.width)
        rles = [full_image if list(rle["size"]) != [info.height, info.width] else rle
                for _, rle in kept]
        class_ids = np.array([self._index_of_category[ann["category_id"]]
                              * (-1 if ann["iscrowd"] else 1) for ann, _ in kept], dtype=np.int32)
        return mask_utils.decode(rles).astype(bool, order="C"), class_ids

    def _check_index(self, index):
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"image index {index!r} out of range for a dataset of {len(self)} "
                             "images")
        return int(index)


def open_dataset(annotation_json, image_dir, say, **options):
    """CocoDataset(annotation_json, image_dir, **options) whose repairs, if any, are told
    through `say(line)` (e.g. a script's warning printer) instead of a DatasetWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        dataset = CocoDataset(annotation_json, image_dir, **options)
    if dataset.repairs:
        say(str(dataset.repairs))
    return dataset


def _annotation_rle(annotation, info):
    """pycocotools RLE of a checked annotation (Matterport's annToRLE)."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, info.height, info.width))
    height, width = segmentation["size"]
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": [height, width], "counts": segmentation["counts"]}


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path} is not a JSON file: {error}") from None
    except RecursionError:
        raise DatasetError(f"{path} is not a COCO file: its JSON is nested too deeply for "
                           "Python's parser") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise DatasetError(f"{path}: its JSON cannot be read: {error}") from None


def _check_class_ids(class_ids, categories, path):
    if not all(isinstance(cat, (int, np.integer)) for cat in class_ids):
        raise ValueError(f"class_ids must be COCO category ids (integers), got {class_ids!r}")
    class_ids = [int(cat) for cat in class_ids]
    unknown = [cat for cat in class_ids if cat not in categories]
    if unknown:
        raise ValueError(f"class_ids {unknown} are not categories of {path} "
                         f"(ids {sorted(categories)})")
    if len(set(class_ids)) != len(class_ids) or not class_ids:
        raise ValueError(f"class_ids must be distinct and non-empty, got {class_ids}")
    return class_ids


def _full_rle(height, width):
    return mask_utils.frPyObjects({"size": [height, width], "counts": [0, height * width]},
                                  height, width)
