"""COCO-format instance-segmentation datasets on pycocotools, with Matterport's mask semantics.

`CocoDataset` reads any COCO "instances" file (COCO 2014/2017, the 2014 minival subsets, custom
sets such as `preprocess.synthetic`'s), validates it once with errors that name the file and the
offending entry, maps COCO category ids to contiguous class indices (0 = background) and loads
images and instance masks the way Matterport's `samples/coco/coco.py` does.
"""
import contextlib
import io
import json
import math
import os
import re
from typing import NamedTuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
IMAGE_KEYS = ("id", "file_name", "height", "width")
CATEGORY_KEYS = ("id", "name")
# COCO boxes are floats that may overshoot the image by rounding; more than this is an error.
BOX_TOLERANCE_PX = 1.0


class DatasetError(ValueError):
    """A dataset file that breaks the COCO format; the message names the file and the entry."""


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

    Instances whose mask decodes to no pixel are skipped by `load_mask` (as in Matterport); their
    annotation ids collect in `skipped_annotation_ids`, counted by `skipped_instances` (per process:
    data-loader workers keep their own).
    """

    def __init__(self, annotation_json, image_dir, class_ids=None, *, annotated_only=False):
        self.annotation_json = os.fspath(annotation_json)
        self.image_dir = os.fspath(image_dir)
        if not os.path.isfile(self.annotation_json):
            raise FileNotFoundError(f"annotation file not found: {self.annotation_json}")
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"image directory not found: {self.image_dir}")
        data = _read_json(self.annotation_json)
        images, categories = _check_dataset(data, self.annotation_json)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress messages
            self.coco.createIndex()

        if class_ids is None:
            category_ids = sorted(categories)
        else:
            category_ids = _check_class_ids(class_ids, categories, self.annotation_json)
        self._category_ids = np.array(category_ids, dtype=np.int64)
        self._index_of_category = {cat: index + 1 for index, cat in enumerate(category_ids)}
        self.class_names = ["BG"] + [categories[cat]["name"] for cat in category_ids]

        image_ids = sorted(images)
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
        """RGB uint8 [H, W, 3] of image `index`; its size must match the annotation file."""
        info = self.image_info(index)
        image = _read_rgb(info.path)
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
        rles = [self._annotation_rle(ann, info) for ann in annotations]
        nonempty = [rle is not None and mask_utils.area(rle) > 0 for rle in rles]
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

    def _annotation_rle(self, annotation, info):
        """pycocotools RLE of an annotation (Matterport's annToRLE), None if it has no polygon.

        Polygons with fewer than 3 points have no area; they are left out (pycocotools would read
        a 4-number polygon as a box) and an annotation with only such polygons is empty.
        """
        segmentation = annotation["segmentation"]
        try:
            if isinstance(segmentation, list):
                polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
                if not polygons:
                    return None
                return mask_utils.merge(mask_utils.frPyObjects(polygons, info.height, info.width))
            height, width = segmentation["size"]
            counts = segmentation["counts"]
            if isinstance(counts, list):
                return mask_utils.frPyObjects(segmentation, height, width)
            # pycocotools decodes RLE strings unchecked: run lengths that overrun the image would
            # write past its buffer, so a corrupt string must fail here.
            runs = _rle_string_counts(counts)
            if runs.min(initial=0) < 0 or runs.sum() != height * width:
                raise ValueError(f"its compressed RLE does not cover the {height}x{width} mask "
                                 "exactly (corrupt counts string)")
            return {"size": [height, width], "counts": counts}
        except Exception as error:
            raise DatasetError(
                f"{self.annotation_json}: annotation {annotation['id']} (image {info.coco_id}): "
                f"cannot decode its segmentation: {error}") from error

    def _check_index(self, index):
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"image index {index!r} out of range for a dataset of {len(self)} "
                             "images")
        return int(index)


def _read_rgb(path):
    """RGB uint8 [H, W, 3] of an image file: gray is replicated, alpha dropped, EXIF orientation
    ignored (COCO annotations refer to the stored pixels).

    Stand-in for `preprocess.images.load_image`, which replaces it once merged.
    """
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DatasetError(f"{path} is not a readable image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path} is not a JSON file: {error}") from None


def _check_dataset(data, path):
    """Validates a COCO instances object; returns its images and categories by id."""
    if not isinstance(data, dict) or any(
            not isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        if isinstance(data, list):
            found = "a JSON list (a results file?)"
        elif isinstance(data, dict):
            found = f"an object with keys {sorted(data)[:10]}"
        else:
            found = f"a JSON {type(data).__name__}"
        raise DatasetError(f"{path} is not a COCO instances file: expected an object with lists "
                           f"'images', 'annotations' and 'categories', got {found}")
    images = _entries_by_id(data["images"], "image", IMAGE_KEYS, _check_image, path)
    categories = _entries_by_id(data["categories"], "category", CATEGORY_KEYS, None, path)
    annotation_ids = set()
    for position, annotation in enumerate(data["annotations"]):
        label = (f"annotation {annotation['id']}" if isinstance(annotation, dict)
                 and "id" in annotation else f"annotation #{position} (in file order)")
        try:
            _check_annotation(annotation, images, categories)
            if annotation["id"] in annotation_ids:
                raise ValueError("its id is used by another annotation")
        except ValueError as error:
            raise DatasetError(f"{path}: {label}: {error}") from None
        annotation_ids.add(annotation["id"])
    return images, categories


def _entries_by_id(entries, kind, keys, check, path):
    by_id = {}
    for position, entry in enumerate(entries):
        label = (f"{kind} {entry['id']}" if isinstance(entry, dict) and "id" in entry
                 else f"{kind} #{position} (in file order)")
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"expected an object, got {type(entry).__name__}")
            missing = [key for key in keys if key not in entry]
            if missing:
                raise ValueError(f"missing keys {missing}")
            if not _is_int(entry["id"]):
                raise ValueError(f"id must be an integer, got {entry['id']!r}")
            if entry["id"] in by_id:
                raise ValueError(f"its id is used by another {kind}")
            if check is not None:
                check(entry)
        except ValueError as error:
            raise DatasetError(f"{path}: {label}: {error}") from None
        by_id[entry["id"]] = entry
    return by_id


def _check_image(image):
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        raise ValueError(f"file_name must be a non-empty string, got {image['file_name']!r}")
    for key in ("height", "width"):
        if not _is_int(image[key]) or image[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {image[key]!r}")


def _check_annotation(annotation, images, categories):
    if not isinstance(annotation, dict):
        raise ValueError(f"expected an object, got {type(annotation).__name__}")
    missing = [key for key in ANNOTATION_KEYS if key not in annotation]
    if missing:
        raise ValueError(f"missing keys {missing}")
    for key in ("id", "image_id", "category_id"):
        if not _is_int(annotation[key]):
            raise ValueError(f"{key} must be an integer, got {annotation[key]!r}")
    image = images.get(annotation["image_id"])
    if image is None:
        raise ValueError(f"image_id {annotation['image_id']!r} is not in 'images'")
    if annotation["category_id"] not in categories:
        raise ValueError(f"category_id {annotation['category_id']!r} is not in 'categories' "
                         f"(ids {sorted(categories)[:20]})")
    if annotation["iscrowd"] not in (0, 1):
        raise ValueError(f"iscrowd must be 0 or 1, got {annotation['iscrowd']!r}")
    area = annotation["area"]
    if not _is_number(area) or area < 0:
        raise ValueError(f"area must be a number >= 0, got {area!r}")
    _check_box(annotation["bbox"], image)
    _check_segmentation(annotation["segmentation"], image, annotation["iscrowd"])


def _check_box(box, image):
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ValueError(f"bbox must be [x, y, width, height], got {box!r}")
    x, y, width, height = box
    if width < 0 or height < 0:
        raise ValueError(f"bbox {box} has a negative size")
    tolerance = BOX_TOLERANCE_PX
    if (x < -tolerance or y < -tolerance or x + width > image["width"] + tolerance
            or y + height > image["height"] + tolerance):
        raise ValueError(f"bbox {box} lies outside its {image['width']}x{image['height']} "
                         f"(width x height) image {image['id']}")


def _check_segmentation(segmentation, image, crowd):
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) % 2:
                raise ValueError("a polygon segmentation must be a list of [x1, y1, x2, y2, ...] "
                                 "lists with an even number of coordinates")
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation \
            or "size" not in segmentation:
        raise ValueError("segmentation must be a list of polygons or an RLE object with 'counts' "
                         f"and 'size', got {_describe(segmentation)}")
    size = segmentation["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(
            _is_int(v) and v >= 1 for v in size):
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    # Matterport replaces a crowd mask of the wrong size with an all-ones mask; others are errors.
    if not crowd and size != [image["height"], image["width"]]:
        raise ValueError(f"RLE size {size} does not match its image {image['id']} "
                         f"({image['height']}x{image['width']})")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
            raise ValueError(f"uncompressed RLE counts must be integers >= 0 summing to "
                             f"{size[0]}x{size[1]} = {size[0] * size[1]}")
    elif not isinstance(counts, str):
        raise ValueError(f"RLE counts must be a string or a list, got {_describe(counts)}")


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


def _rle_string_counts(counts):
    """Run lengths [M] int64 encoded by a pycocotools compressed-RLE string (rleFrString).

    Each value is 5-bit chunks, least significant first, as characters 48 + chunk (+ 32 when
    another chunk follows); bit 4 of the last chunk is the sign. Values from the fourth on are
    stored as the difference to the value two places earlier.
    """
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if ((codes < 0) | (codes > 63)).any():
        raise ValueError("the RLE counts string has characters outside pycocotools' alphabet")
    last_chunk = (codes & 0x20) == 0
    if codes.size and not last_chunk[-1]:
        raise ValueError("the RLE counts string ends inside a value")
    value_of_chunk = np.cumsum(last_chunk) - last_chunk
    ends = np.flatnonzero(last_chunk)
    first = np.concatenate([[0], ends[:-1] + 1])
    shift = 5 * (np.arange(codes.size) - first[value_of_chunk])
    if shift.max(initial=0) > 50:
        raise ValueError("the RLE counts string holds a value too large for any mask")
    values = np.zeros(ends.size, dtype=np.int64)
    np.add.at(values, value_of_chunk, (codes & 0x1F) << shift)
    values -= ((codes[ends] & 0x10) != 0) << (shift[ends] + 5)
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def _full_rle(height, width):
    return mask_utils.frPyObjects({"size": [height, width], "counts": [0, height * width]},
                                  height, width)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _describe(value):
    return f"{type(value).__name__} {str(value)[:40]!r}"
