"""Validation and repair of COCO instances files, done once before any image or model work.

`check_instances` reads every field of a COCO "instances" object for type, range and finiteness,
so that nothing reaches pycocotools' C code that could crash or hang it (non-finite or enormous
polygon coordinates, corrupt compressed RLE) and nothing reaches numpy that overflows (ids past
int64). What it does with a problem depends on its kind:

- a file that cannot be read as COCO at all (not JSON, the wrong structure, an entry that is not
  an object or lacks a key, ids that are not integers in int64 range or are used twice, an
  annotation of an unknown image or category, a category name that is not a string, an image
  whose `file_name` leaves the image folder): DatasetError naming the file and the entry;
- an annotation whose box or polygons reach past its image: clipped to the image (boxes to its
  bounds, polygons by Sutherland-Hodgman), and counted. Overshoot up to BOX_TOLERANCE_PX is
  rounding and is left as it is (pycocotools handles it);
- an annotation that is unreadable (a box, area, iscrowd or segmentation of the wrong type,
  non-finite coordinates, an RLE that does not decode to exactly height x width), degenerate (no
  polygon with 3 or more points, which is valid COCO but has no area) or empty (no area inside
  the image): skipped, and counted by reason.

With `strict`, every clip or skip is a DatasetError instead. Polygons with fewer than 3 points
beside real ones are dropped silently in both modes, as detectron2 does: pycocotools would read a
leading 4-number polygon as a box.
"""
import math
import os
import reprlib
from dataclasses import dataclass, field
from itertools import chain
from typing import NamedTuple

import numpy as np

ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
IMAGE_KEYS = ("id", "file_name", "height", "width")
CATEGORY_KEYS = ("id", "name")
# Overshoot past the image border up to this is rounding: left as it is, not counted.
BOX_TOLERANCE_PX = 1.0
# numpy holds ids as int64.
ID_RANGE = (-2 ** 63, 2 ** 63 - 1)
NUMBER_TYPES = {int, float}  # bool is not a number here, though a subclass of int
# pycocotools counts RLE runs in 32-bit unsigned integers.
MAX_MASK_PIXELS = 2 ** 32 - 1
# Reasons an annotation is skipped, in the order they are checked and reported.
SKIP_REASONS = ("unreadable", "degenerate", "empty")
# Polygon coordinates are brought within +-FAR before clipping, so that nothing overflows.
FAR = 1e150
# How many annotation ids a warning names per reason.
NAMED_IN_WARNINGS = 5

_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 40, 40, 40
_SHOW.maxlist = _SHOW.maxdict = 8


class DatasetError(ValueError):
    """A dataset file that breaks the COCO format; the message names the file and the entry."""


class DatasetWarning(UserWarning):
    """A dataset whose annotations were clipped or skipped (DatasetRepairs says which)."""


@dataclass
class DatasetRepairs:
    """What check_instances changed in a dataset: the ids of the clipped annotations, and the
    (id, why) of the skipped ones by reason (SKIP_REASONS)."""
    path: str
    clipped: list = field(default_factory=list)
    skipped: dict = field(default_factory=lambda: {reason: [] for reason in SKIP_REASONS})

    def __bool__(self):
        return bool(self.clipped) or any(self.skipped.values())

    def counts(self):
        """{"clipped": n, "skipped": {reason: n}}: the same numbers wherever the file is read."""
        return {"clipped": len(self.clipped),
                "skipped": {reason: len(found) for reason, found in self.skipped.items()}}

    def __str__(self):
        parts = []
        if self.clipped:
            parts.append(f"clipped {_count(self.clipped, 'annotation')} to their image (box or "
                         f"polygons past the border: {_ids(self.clipped)})")
        skipped = [(reason, found) for reason, found in self.skipped.items() if found]
        if skipped:
            total = sum(len(found) for _, found in skipped)
            details = "; ".join(
                f"{len(found)} {reason} (annotation {found[0][0]}: {found[0][1]}"
                + (f"; also {_ids([ann_id for ann_id, _ in found[1:]])}" if len(found) > 1
                   else "") + ")" for reason, found in skipped)
            parts.append(f"skipped {_count(range(total), 'annotation')}: {details}")
        if not parts:
            return f"{self.path}: every annotation is usable as it is"
        return f"{self.path}: {'; '.join(parts)} (--strict refuses such files)"


class CheckedInstances(NamedTuple):
    images: dict       # {image id: image entry}
    categories: dict   # {category id: category entry}
    annotations: list  # the usable annotations, clipped ones replaced by clipped copies
    repairs: DatasetRepairs


def check_instances(data, path, strict=False, allow_external_paths=False):
    """Validates a COCO instances object (as json.load returns it) read from `path`.

    Args:
        data: the parsed file.
        path: the file's name, for messages.
        strict: refuse (DatasetError) instead of clipping or skipping annotations.
        allow_external_paths: let image `file_name`s be absolute or climb out of the image
            folder with '..'.
    Returns:
        CheckedInstances: images and categories by id, the usable annotations in file order
        (the entries themselves, or copies with a clipped bbox and segmentation), and the
        DatasetRepairs.
    Raises:
        DatasetError naming the file and the entry.
    """
    _check_layout(data, path)
    images = _entries_by_id(data["images"], "image", IMAGE_KEYS,
                            lambda image: _check_image(image, allow_external_paths), path)
    categories = _entries_by_id(data["categories"], "category", CATEGORY_KEYS, _check_category,
                                path)
    annotations = _entries_by_id(data["annotations"], "annotation", ANNOTATION_KEYS,
                                 lambda ann: _check_references(ann, images, categories), path)
    repairs = DatasetRepairs(path)
    kept = []
    for annotation, (outcome, detail) in zip(annotations.values(),
                                             _check_geometry(list(annotations.values()), images)):
        if strict and outcome != "ok":
            raise DatasetError(f"{path}: annotation {annotation['id']}: "
                               + (f"{detail} (without --strict it is skipped)"
                                  if outcome in SKIP_REASONS else _clip_refusal(annotation,
                                                                                images)))
        if outcome in SKIP_REASONS:
            repairs.skipped[outcome].append((annotation["id"], detail))
            continue
        if outcome == "clipped":
            repairs.clipped.append(annotation["id"])
        kept.append(annotation if detail is None else detail)
    return CheckedInstances(images, categories, kept, repairs)


def rle_string_counts(counts):
    """Run lengths [M] int64 encoded by a pycocotools compressed-RLE string (rleFrString).

    Each value is 5-bit chunks, least significant first, as characters 48 + chunk (+ 32 when
    another chunk follows); bit 4 of the last chunk is the sign. Values from the fourth on are
    stored as the difference to the value two places earlier. pycocotools decodes such strings
    unchecked (a string ending inside a value makes it read past the end, which hangs or
    crashes), so every string is read here first.

    Raises ValueError for characters outside the alphabet, a string that ends inside a value,
    or a value too large for any mask.
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


def show(value):
    """A short repr of any JSON value, safe for deep nesting and huge strings."""
    return _SHOW.repr(value)


# The file's structure: errors.

def _check_layout(data, path):
    if isinstance(data, dict) and all(isinstance(data.get(key), list)
                                      for key in ("images", "annotations", "categories")):
        return
    if isinstance(data, list):
        found = "a JSON list (a results file?)"
    elif isinstance(data, dict):
        found = f"an object with keys {show(sorted(data)[:10])}"
    else:
        found = f"a JSON {type(data).__name__}"
    raise DatasetError(f"{path} is not a COCO instances file: expected an object with lists "
                       f"'images', 'annotations' and 'categories', got {found}")


def _entries_by_id(entries, kind, keys, check, path):
    """{id: entry} of a list of objects with an integer id each; `check(entry)` raises
    ValueError for what else is wrong with one."""
    by_id = {}
    for position, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"expected an object, got {_describe(entry)}")
            missing = [key for key in keys if key not in entry]
            if missing:
                raise ValueError(f"missing keys {missing}")
            _check_id(entry["id"], "id")
            if entry["id"] in by_id:
                raise ValueError(f"its id is used by another {kind}")
            check(entry)
        except ValueError as error:
            label = (f"{kind} {show(entry['id'])}" if isinstance(entry, dict) and "id" in entry
                     else f"{kind} #{position} (in file order)")
            raise DatasetError(f"{path}: {label}: {error}") from None
        by_id[entry["id"]] = entry
    return by_id


def _check_id(value, key):
    if not _is_int(value) or not ID_RANGE[0] <= value <= ID_RANGE[1]:
        raise ValueError(f"{key} must be an integer in int64 range, got {show(value)}")


def _check_image(image, allow_external_paths):
    name = image["file_name"]
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"file_name must be a non-empty string without NUL characters, got "
                         f"{show(name)}")
    if not allow_external_paths and (
            os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir):
        raise ValueError(f"file_name {name!r} leads out of the image folder (allow it with "
                         "--allow-external-images, or allow_external_paths=True)")
    for key in ("height", "width"):
        if not _is_int(image[key]) or not 1 <= image[key] <= ID_RANGE[1]:
            raise ValueError(f"{key} must be a positive integer, got {show(image[key])}")


def _check_category(category):
    if not isinstance(category["name"], str):
        raise ValueError(f"name must be a string, got {_describe(category['name'])}")


def _check_references(annotation, images, categories):
    for key in ("image_id", "category_id"):
        _check_id(annotation[key], key)
    if annotation["image_id"] not in images:
        raise ValueError(f"image_id {annotation['image_id']} is not in 'images'")
    if annotation["category_id"] not in categories:
        raise ValueError(f"category_id {annotation['category_id']} is not in 'categories' "
                         f"(ids {sorted(categories)[:20]})")


# The annotations' content: clip or skip.

def _check_geometry(annotations, images):
    """(outcome, detail) per annotation: ("ok", None or a copy without short polygons),
    ("clipped", the clipped copy) or (a SKIP_REASONS reason, why).

    A first pass reads each annotation's fields for type; the numbers of all boxes and polygons
    are then checked at once.
    """
    image_of = [images[annotation["image_id"]] for annotation in annotations]
    sizes = np.array([[image["width"], image["height"]] for image in image_of],
                     dtype=np.float64).reshape(-1, 2)
    found, boxes, polygons, owners = [], [], [], []
    for index, annotation in enumerate(annotations):
        try:
            read = _read_annotation(annotation, image_of[index])
        except ValueError as error:
            read = ("unreadable", str(error))
        found.append(read)
        unreadable = isinstance(read, tuple) and read[0] == "unreadable"
        boxes.append([0] * 4 if unreadable else annotation["bbox"])
        if isinstance(read, list):
            polygons += read
            owners += [index] * len(read)
    box_check = _BoxCheck(_float_array(boxes, (-1, 4)), sizes)
    owners = np.array(owners, dtype=np.int64)
    table = _PolygonTable(polygons, sizes[owners])
    first_row = np.searchsorted(owners, np.arange(len(annotations) + 1)).tolist()
    return [_outcome(annotation, image_of[index], found[index], box_check, index, table,
                     range(first_row[index], first_row[index + 1]))
            for index, annotation in enumerate(annotations)]


def _read_annotation(annotation, image):
    """Reads an annotation's fields for type. Returns an outcome found by reading (a degenerate
    or empty segmentation), the polygons (lists of >= 6 values) whose coordinates are still to
    check, or None (an RLE segmentation, checked). Raises ValueError: unreadable."""
    if annotation["iscrowd"] not in (0, 1):
        raise ValueError(f"iscrowd must be 0 or 1, got {show(annotation['iscrowd'])}")
    area = annotation["area"]
    if type(area) not in NUMBER_TYPES or not math.isfinite(_as_float(area)) or area < 0:
        raise ValueError(f"area must be a finite number >= 0, got {show(area)}")
    box = annotation["bbox"]
    if type(box) is not list or len(box) != 4 or not set(map(type, box)) <= NUMBER_TYPES:
        raise ValueError(f"bbox must be [x, y, width, height] of finite numbers, got {show(box)}")
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        polygons = _read_polygons(segmentation)
        if not polygons:
            return ("degenerate", "no polygon with 3 or more points, segmentation "
                                  f"{show(segmentation)}")
        return polygons
    if not _rle_has_pixels(segmentation, image, annotation["iscrowd"]):
        return "empty", "its RLE mask has no pixel"
    return None


class _BoxCheck:
    """The boxes [N, 4] (x, y, width, height) of N annotations on images of sizes [N, 2]
    (width, height), checked at once: finite [N], negative (size) [N], empty (no area inside
    the image) [N], past (the border, beyond the tolerance) [N], clipped [N, 4]."""

    def __init__(self, boxes, sizes):
        with np.errstate(over="ignore", invalid="ignore"):
            corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
            self.finite = np.isfinite(corners).all(1).tolist()
            self.negative = (boxes[:, 2:] < 0).any(1).tolist()
            low = np.maximum(corners[:, :2], 0)
            high = np.minimum(corners[:, 2:], sizes)
            self.empty = (high <= low).any(1).tolist()
            self.past = _past_border(corners[:, :2], corners[:, 2:], sizes).tolist()
            self.clipped = np.concatenate([low, high - low], axis=1).tolist()


class _PolygonTable:
    """P polygons (lists of 2n >= 6 values) on images of sizes [P, 2], checked at once:
    wrong [P] (a 1-tuple of the first value that is not a number, else ()), finite [P], past
    (the border, beyond the tolerance) [P], area [P] (shoelace)."""

    def __init__(self, polygons, sizes):
        self.polygons = polygons
        flat = list(chain.from_iterable(polygons))
        self.wrong = [()] * len(polygons)
        if not set(map(type, flat)) <= NUMBER_TYPES:
            self.wrong = [tuple(v for v in polygon if type(v) not in NUMBER_TYPES)[:1]
                          for polygon in polygons]
            flat = [v if type(v) in NUMBER_TYPES else math.nan for v in flat]
        points = _float_array(flat, (-1, 2))
        lengths = np.fromiter(map(len, polygons), np.int64, len(polygons)) // 2
        if not polygons:
            self.finite = self.past = self.area = []
            return
        starts = np.cumsum(lengths) - lengths
        finite = np.isfinite(points).all(1)
        self.finite = np.logical_and.reduceat(finite, starts).tolist()
        points = np.where(finite[:, None], points, 0.0)
        low, high = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
        self.past = _past_border(low, high, sizes).tolist()
        following = np.arange(1, len(points) + 1)
        following[starts + lengths - 1] = starts
        with np.errstate(over="ignore", invalid="ignore"):
            cross = points[:, 0] * points[following, 1] - points[following, 0] * points[:, 1]
            self.area = np.abs(np.add.reduceat(cross, starts)).tolist()


def _outcome(annotation, image, found, boxes, index, table, rows):
    """The outcome of one annotation from what reading found and the box and polygon checks."""
    if isinstance(found, tuple) and found[0] == "unreadable":
        return found
    if not boxes.finite[index]:
        return "unreadable", (f"bbox must be [x, y, width, height] of finite numbers, got "
                              f"{show(annotation['bbox'])}")
    if boxes.negative[index]:
        return "unreadable", f"bbox {show(annotation['bbox'])} has a negative size"
    for row in rows:
        if table.wrong[row]:
            return "unreadable", ("polygon coordinates must be numbers, got "
                                  f"{show(table.wrong[row][0])}")
        if not table.finite[row]:
            bad = next(v for v in table.polygons[row] if not math.isfinite(_as_float(v)))
            return "unreadable", f"polygon coordinates must be finite numbers, got {show(bad)}"
    if isinstance(found, tuple) and found[0] == "degenerate":
        return found
    if boxes.empty[index]:
        return "empty", (f"bbox {show(annotation['bbox'])} has no area inside its "
                         f"{image['width']}x{image['height']} (width x height) image "
                         f"{image['id']}")
    if isinstance(found, tuple):  # an empty RLE
        return found
    polygons_past = any(table.past[row] for row in rows)
    if rows and not polygons_past and not any(table.area[row] for row in rows):
        return "empty", "its polygons have no area"
    if not boxes.past[index] and not polygons_past:
        if rows and len(rows) < len(annotation["segmentation"]):  # ones of < 3 points dropped
            return "ok", dict(annotation, segmentation=found)
        return "ok", None
    copy = dict(annotation, bbox=boxes.clipped[index]) if boxes.past[index] else dict(annotation)
    if rows:
        polygons = [clip_polygon(table.polygons[row], image["width"], image["height"])
                    if table.past[row] else table.polygons[row] for row in rows]
        polygons = [polygon for polygon in polygons if len(polygon) >= 6]
        if not any(_shoelace(polygon) for polygon in polygons):
            return "empty", (f"its polygons have no area inside its {image['width']}x"
                             f"{image['height']} (width x height) image {image['id']}")
        copy["segmentation"] = polygons
    return "clipped", copy


def _read_polygons(segmentation):
    """The polygons of a list segmentation with 3 or more points, checked for shape (the type
    of their values is _PolygonTable's)."""
    for polygon in segmentation:
        if type(polygon) is not list or len(polygon) % 2:
            raise ValueError("a polygon segmentation must be a list of [x1, y1, x2, y2, ...] "
                             f"lists with an even number of coordinates, got {show(polygon)}")
    return [polygon for polygon in segmentation if len(polygon) >= 6]


def _rle_has_pixels(segmentation, image, crowd):
    """Checks an RLE segmentation completely; returns whether its mask has a foreground pixel."""
    if not isinstance(segmentation, dict) or "counts" not in segmentation \
            or "size" not in segmentation:
        raise ValueError("segmentation must be a list of polygons or an RLE object with 'counts' "
                         f"and 'size', got {_describe(segmentation)}")
    size = segmentation["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(
            _is_int(v) and v >= 1 for v in size) or size[0] * size[1] > MAX_MASK_PIXELS:
        raise ValueError(f"RLE size must be [height, width] of at most {MAX_MASK_PIXELS} "
                         f"pixels, got {show(size)}")
    # Matterport replaces a crowd mask of the wrong size with an all-ones mask; others are errors.
    if not crowd and size != [image["height"], image["width"]]:
        raise ValueError(f"RLE size {size} does not match its image {image['id']} "
                         f"({image['height']}x{image['width']})")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(type(v) is int and v >= 0 for v in counts):
            raise ValueError("uncompressed RLE counts must be integers >= 0, got "
                             f"{show(counts)}")
        runs = counts
    elif isinstance(counts, str):
        runs = rle_string_counts(counts).tolist()
        if min(runs, default=0) < 0:
            raise ValueError("its compressed RLE has negative run lengths (corrupt counts "
                             "string)")
    else:
        raise ValueError(f"RLE counts must be a string or a list, got {_describe(counts)}")
    if sum(runs) != size[0] * size[1]:
        raise ValueError(f"its RLE counts cover {sum(runs)} pixels, not the {size[0]}x{size[1]} "
                         f"= {size[0] * size[1]} of its mask")
    return any(runs[1::2])


def clip_polygon(polygon, width, height):
    """A polygon [x1, y1, ...] clipped to the rectangle [0, width] x [0, height].

    Sutherland-Hodgman: the part of the polygon inside the rectangle, as a polygon (possibly
    with fewer than 3 points, when nothing is inside). Returns a list of floats.
    """
    # Far points move along their edges' direction by a negligible angle, and no product below
    # overflows.
    points = np.clip(np.asarray(polygon, dtype=np.float64).reshape(-1, 2), -FAR, FAR)
    for axis, bound, keep_below in ((0, 0.0, False), (0, width, True),
                                    (1, 0.0, False), (1, height, True)):
        if len(points) == 0:
            break
        previous = np.roll(points, 1, axis=0)
        inside = points[:, axis] <= bound if keep_below else points[:, axis] >= bound
        was_inside = np.roll(inside, 1)
        with np.errstate(invalid="ignore", divide="ignore"):  # edges along the bound: unused
            fraction = (bound - previous[:, axis]) / (points[:, axis] - previous[:, axis])
            crossing = previous + fraction[:, None] * (points - previous)
        crossing[:, axis] = bound  # exact, whatever the rounding of the line above
        # Per edge (previous -> point): its crossing when it crosses, then the point if inside.
        emitted = np.stack([crossing, points], axis=1)
        keep = np.stack([inside != was_inside, inside], axis=1)
        points = emitted[keep]
    return np.clip(points, 0.0, [width, height]).ravel().tolist()


def _shoelace(polygon):
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    following = np.roll(points, -1, axis=0)
    return abs(float(np.sum(points[:, 0] * following[:, 1] - following[:, 0] * points[:, 1])))


def _clip_refusal(annotation, images):
    image = images[annotation["image_id"]]
    return (f"its bbox {show(annotation['bbox'])} or polygons lie outside its {image['width']}x"
            f"{image['height']} (width x height) image {image['id']} (without --strict they "
            "are clipped)")


def _past_border(low, high, sizes):
    """[N] bool: whether bounds low, high [N, 2] (x, y) reach past images of sizes [N, 2]
    (width, height) by more than BOX_TOLERANCE_PX."""
    return ((low < -BOX_TOLERANCE_PX) | (high > sizes + BOX_TOLERANCE_PX)).any(1)


def _is_int(value):
    return type(value) is int


def _float_array(values, shape):
    """float64 array of numbers, integers past float range becoming infinite."""
    try:
        return np.array(values, dtype=np.float64).reshape(shape)
    except OverflowError:
        return np.array([[_as_float(v) for v in row] if isinstance(row, list) else _as_float(row)
                         for row in values], dtype=np.float64).reshape(shape)


def _as_float(value):
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _describe(value):
    return f"{type(value).__name__} {show(value)}"


def _count(items, noun):
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _ids(ids):
    shown = ", ".join(str(ann_id) for ann_id in ids[:NAMED_IN_WARNINGS])
    return f"{shown} and {len(ids) - NAMED_IN_WARNINGS} more" if len(ids) > NAMED_IN_WARNINGS \
        else shown
