"""CocoDataset and coco_layout on small COCO files written here by hand: loading, validation,
and what is clipped, skipped or refused."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from preprocess.coco import CocoDataset, DatasetError, DatasetWarning, coco_layout, open_dataset
from preprocess.coco_checks import clip_polygon, rle_string_counts
from preprocess.images import ImageLoadError, ImageTooLargeError

HEIGHT, WIDTH = 20, 30


def uncompressed_rle(mask):
    """COCO's uncompressed RLE, by hand: column-major run lengths, starting with a run of 0s."""
    flat = mask.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def box_of(mask):
    ys, xs = np.nonzero(mask)
    x, y = int(xs.min()), int(ys.min())
    return [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1]


def expected_masks():
    """The masks of image 10's usable annotations, built without pycocotools."""
    rng = np.random.default_rng(0)
    polygons = np.zeros((HEIGHT, WIDTH), dtype=bool)
    polygons[3:9, 2:8] = True     # polygon [2,3, 8,3, 8,9, 2,9]: pixel squares inside it
    polygons[10:15, 20:25] = True  # second part [20,10, 25,10, 25,15, 20,15]
    random = rng.random((HEIGHT, WIDTH)) < 0.3
    block = np.zeros((HEIGHT, WIDTH), dtype=bool)
    block[10:14, 12:20] = True
    crowd = np.zeros((HEIGHT, WIDTH), dtype=bool)
    crowd[0:3, 0:30] = True
    crowd[15:20, 5:9] = True
    return polygons, random, block, crowd


def annotation(ann_id, image_id, category_id, segmentation, mask=None, iscrowd=0):
    area = int(mask.sum()) if mask is not None and mask.any() else 0
    bbox = box_of(mask) if mask is not None and mask.any() else [0, 0, 0, 0]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "segmentation": segmentation, "area": area, "bbox": bbox}


def dataset_dict():
    polygons, random, block, crowd = expected_masks()
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    small_crowd = np.zeros((10, 10), dtype=bool)
    small_crowd[2:5, 2:5] = True
    rectangle = np.zeros((HEIGHT, WIDTH), dtype=bool)
    rectangle[5:10, 10:20] = True
    return {
        "info": {"description": "hand-made"},
        # Out of order on purpose: class indices follow the sorted ids 1, 5, 90.
        "categories": [{"id": 90, "name": "zebra"}, {"id": 1, "name": "person"},
                       {"id": 5, "name": "cat"}],
        "images": [{"id": 12, "file_name": "c.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 10, "file_name": "a.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 11, "file_name": "b.png", "height": 16, "width": 16}],
        "annotations": [
            annotation(100, 10, 5, [[2, 3, 8, 3, 8, 9, 2, 9], [20, 10, 25, 10, 25, 15, 20, 15]],
                       polygons),
            annotation(101, 10, 90, compressed_rle(random), random),
            annotation(102, 10, 1, uncompressed_rle(block), block),
            annotation(103, 10, 1, uncompressed_rle(crowd), crowd, iscrowd=1),
            # A sliver of a triangle that covers no pixel centre: load_mask skips it.
            dict(annotation(104, 10, 5, [[1.1, 1.1, 1.3, 1.1, 1.2, 1.3]], empty),
                 bbox=[1.1, 1.1, 0.2, 0.2]),
            # A crowd RLE of another size than its image becomes all ones (Matterport).
            dict(annotation(106, 12, 1, uncompressed_rle(small_crowd), None, iscrowd=1),
                 bbox=[2, 2, 3, 3]),
            annotation(107, 12, 90, [[10, 5, 20, 5, 20, 10, 10, 10]], rectangle),
        ],
    }


def write_dataset(root, data):
    """Writes the images of dataset_dict() and `data` as the annotation file."""
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for image in dataset_dict()["images"]:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / image["file_name"])
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, root / "images"


@pytest.fixture
def files(tmp_path):
    return write_dataset(tmp_path, dataset_dict())


def test_classes_and_images(files):
    dataset = CocoDataset(*files)
    assert dataset.class_names == ["BG", "person", "cat", "zebra"]
    assert dataset.num_classes == 4
    assert dataset.category_ids == [1, 5, 90]
    assert len(dataset) == 3 and dataset.coco_image_ids == [10, 11, 12]
    np.testing.assert_array_equal(dataset.image_ids, [0, 1, 2])
    info = dataset.image_info(2)
    assert (info.coco_id, info.height, info.width) == (12, HEIGHT, WIDTH)
    assert info.path == str(files[1] / "c.png")
    with pytest.raises(IndexError):
        dataset.image_info(3)


def test_category_id_maps_both_ways(files):
    dataset = CocoDataset(*files)
    assert [dataset.to_coco_category_id(i) for i in (1, 2, 3)] == [1, 5, 90]
    assert [dataset.from_coco_category_id(c) for c in (1, 5, 90)] == [1, 2, 3]
    np.testing.assert_array_equal(dataset.to_coco_category_id(np.array([3, 1, 2])), [90, 1, 5])
    np.testing.assert_array_equal(dataset.from_coco_category_id([90, 90, 5]), [3, 3, 2])
    with pytest.raises(ValueError, match="background"):
        dataset.to_coco_category_id(0)
    with pytest.raises(ValueError, match=r"\[7\]"):
        dataset.from_coco_category_id([5, 7])


def test_class_ids_select_and_order(files):
    dataset = CocoDataset(*files, class_ids=[90, 1])
    assert dataset.class_names == ["BG", "zebra", "person"]
    assert dataset.to_coco_category_id(1) == 90 and dataset.from_coco_category_id(1) == 2
    _, random, block, crowd = expected_masks()
    masks, class_ids = dataset.load_mask(0)
    np.testing.assert_array_equal(class_ids, [1, 2, -2])  # cat-5 annotations are ignored
    np.testing.assert_array_equal(masks, np.stack([random, block, crowd], axis=2))
    assert len(CocoDataset(*files, class_ids=[5])) == 3
    assert CocoDataset(*files, class_ids=[5], annotated_only=True).coco_image_ids == [10]
    assert CocoDataset(*files, annotated_only=True).coco_image_ids == [10, 12]
    assert CocoDataset(*files, class_ids=np.array([90, 1])).category_ids == [90, 1]
    with pytest.raises(ValueError, match=r"class_ids \[7\]"):
        CocoDataset(*files, class_ids=[1, 7])
    with pytest.raises(ValueError, match="integers"):
        CocoDataset(*files, class_ids=["90"])


def test_load_mask_decodes_every_format(files):
    dataset = CocoDataset(*files)
    masks, class_ids = dataset.load_mask(0)
    assert masks.dtype == bool and masks.shape == (HEIGHT, WIDTH, 4)
    assert class_ids.dtype == np.int32
    np.testing.assert_array_equal(class_ids, [2, 3, 1, -1])  # the crowd gets a negative id
    np.testing.assert_array_equal(masks, np.stack(expected_masks(), axis=2))
    assert dataset.skipped_annotation_ids == {104}
    assert dataset.skipped_instances == 1
    dataset.load_mask(0)
    assert dataset.skipped_instances == 1  # counted once per instance, not per load


def test_crowd_of_another_size_is_all_ones(files):
    masks, class_ids = CocoDataset(*files).load_mask(2)
    np.testing.assert_array_equal(class_ids, [-1, 3])
    assert masks[..., 0].all()
    assert masks[..., 1].sum() == 50 and masks[5:10, 10:20, 1].all()


def test_image_without_annotations(files):
    masks, class_ids = CocoDataset(*files).load_mask(1)
    assert masks.shape == (16, 16, 0) and masks.dtype == bool
    assert class_ids.shape == (0,) and class_ids.dtype == np.int32


def test_load_image_is_rgb(files):
    dataset = CocoDataset(*files)
    expected = np.asarray(Image.open(files[1] / "a.png").convert("RGB"))
    image = dataset.load_image(0)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, expected)
    gray = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH)
    Image.fromarray(gray).save(files[1] / "a.png")
    np.testing.assert_array_equal(dataset.load_image(0), np.repeat(gray[..., None], 3, axis=2))


def test_bad_images(files):
    dataset = CocoDataset(*files)
    (files[1] / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageLoadError, match="a.png: not a readable image"):
        dataset.load_image(0)
    Image.fromarray(np.zeros((HEIGHT + 1, WIDTH, 3), dtype=np.uint8)).save(files[1] / "c.png")
    with pytest.raises(DatasetError, match=r"c.png is 21x30 pixels .* image 12 as 20x30"):
        dataset.load_image(2)
    (files[1] / "b.png").unlink()
    with pytest.raises(FileNotFoundError):
        dataset.load_image(1)


def break_annotation(key, value, ann_id=101):
    def mutate(data):
        ann = next(a for a in data["annotations"] if a["id"] == ann_id)
        if value is DELETE:
            del ann[key]
        else:
            ann[key] = value
    return mutate


def set_entry(kind, position, key, value):
    def mutate(data):
        data[kind][position][key] = value
    return mutate


DELETE = object()
# A file that cannot be read as COCO is refused, strict or not.
BROKEN = {
    "missing key": (break_annotation("segmentation", DELETE),
                    r"annotation 101: missing keys \['segmentation'\]"),
    "unknown category": (break_annotation("category_id", 7),
                         r"annotation 101: category_id 7 is not in 'categories'"),
    "unknown image": (break_annotation("image_id", 99),
                      r"annotation 101: image_id 99 is not in 'images'"),
    "id type": (break_annotation("category_id", [5]),
                r"annotation 101: category_id must be an integer in int64 range, got \[5\]"),
    "id past int64": (break_annotation("id", 2 ** 70),
                      r"annotation 1180591620717411303424: id must be an integer in int64 range"),
    "category id past int64": (set_entry("categories", 0, "id", 2 ** 70),
                               r"category 1180591620717411303424: id must be an integer in int64"),
    "image id past int64": (set_entry("images", 0, "id", -2 ** 64),
                            r"image -18446744073709551616: id must be an integer in int64"),
    "boolean id": (break_annotation("image_id", True),
                   r"annotation 101: image_id must be an integer in int64 range, got True"),
    "duplicate id": (break_annotation("id", 100),
                     r"annotation 100: its id is used by another annotation"),
    "image without size": (lambda data: data["images"][0].pop("height"),
                           r"image 12: missing keys \['height'\]"),
    "image size type": (set_entry("images", 0, "width", 30.0),
                        r"image 12: width must be a positive integer, got 30.0"),
    "duplicate category": (lambda data: data["categories"].append({"id": 5, "name": "dog"}),
                           r"category 5: its id is used by another category"),
    "annotation not an object": (lambda data: data["annotations"].insert(0, [1, 2]),
                                 r"annotation #0 \(in file order\): expected an object"),
    "name null": (set_entry("categories", 0, "name", None),
                  r"category 90: name must be a string, got NoneType None"),
    "name list": (set_entry("categories", 0, "name", ["zebra"]),
                  r"category 90: name must be a string, got list \['zebra'\]"),
    "name object": (set_entry("categories", 0, "name", {"en": "zebra"}),
                    r"category 90: name must be a string, got dict"),
    "name boolean": (set_entry("categories", 0, "name", False),
                     r"category 90: name must be a string, got bool False"),
    "name number": (set_entry("categories", 0, "name", 7),
                    r"category 90: name must be a string, got int 7"),
    "file name up": (set_entry("images", 0, "file_name", "../c.png"),
                     r"image 12: file_name '../c.png' leads out of the image folder"),
    "file name absolute": (set_entry("images", 0, "file_name", "/etc/hostname"),
                           r"image 12: file_name '/etc/hostname' leads out of the image folder"),
    "file name NUL": (set_entry("images", 0, "file_name", "c\0.png"),
                      r"image 12: file_name must be a non-empty string without NUL"),
}


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_name_file_and_entry(tmp_path, case, strict):
    mutate, message = BROKEN[case]
    data = dataset_dict()
    mutate(data)
    path, image_dir = write_dataset(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as error:
        CocoDataset(path, image_dir, strict=strict)
    assert str(error.value).startswith(str(path))


# An annotation that cannot be used is skipped and counted by reason; --strict refuses it.
SKIPPED = {
    "segmentation type": ("polygon", "unreadable",
                          "segmentation must be a list of polygons or an RLE"),
    "odd polygon": ([[1, 2, 3, 4, 5, 6, 7]], "unreadable", "a polygon segmentation must be"),
    "null coordinate": ([[1, 2, None, 4, 5, 6]], "unreadable",
                        "polygon coordinates must be numbers, got None"),
    "string coordinate": ([[1, 2, "3", 4, 5, 6]], "unreadable",
                          "polygon coordinates must be numbers, got '3'"),
    "boolean coordinate": ([[1, 2, True, 4, 5, 6]], "unreadable",
                           "polygon coordinates must be numbers, got True"),
    "nan coordinate": ([[1, 2, float("nan"), 4, 5, 6]], "unreadable",
                       "polygon coordinates must be finite numbers, got nan"),
    "infinite coordinate": ([[1, 2, 3, 4, float("-inf"), 6]], "unreadable",
                            "polygon coordinates must be finite numbers, got -inf"),
    "huge integer coordinate": ([[1, 2, 3, 10 ** 400, 5, 6]], "unreadable",
                                "polygon coordinates must be finite numbers"),
    "no polygon": ([], "degenerate", "no polygon with 3 or more points"),
    "empty polygon": ([[]], "degenerate", "no polygon with 3 or more points"),
    "one point": ([[3, 4]], "degenerate", "no polygon with 3 or more points"),
    "two points": ([[1, 1, 5, 5]], "degenerate", "no polygon with 3 or more points"),
    "collinear points": ([[1, 1, 3, 3, 5, 5]], "empty", "its polygons have no area"),
    "polygon outside": ([[40, 1, 50, 1, 50, 5]], "empty", "its polygons have no area inside"),
    "rle size": ({"size": [10, 30], "counts": [300]}, "unreadable",
                 r"RLE size [10, 30] does not match its image 10 (20x30)"),
    "rle counts sum": ({"size": [20, 30], "counts": [10, 5]}, "unreadable",
                       "its RLE counts cover 15 pixels, not the 20x30 = 600"),
    "rle negative count": ({"size": [20, 30], "counts": [700, -100]}, "unreadable",
                           "uncompressed RLE counts must be integers >= 0"),
    "rle bad characters": ({"size": [20, 30], "counts": "!!"}, "unreadable",
                           "outside pycocotools' alphabet"),
    "rle empty string": ({"size": [20, 30], "counts": ""}, "unreadable",
                         "its RLE counts cover 0 pixels"),
    "rle truncated": ({"size": [20, 30], "counts": "0e"}, "unreadable",
                      "ends inside a value"),
    "rle overrun": ({"size": [20, 30], "counts": "05"}, "unreadable",
                    "cover 5 pixels, not the 20x30"),
    "rle non-ascii": ({"size": [20, 30], "counts": "é"}, "unreadable", "codec"),
    "rle no pixel": ({"size": [20, 30], "counts": [600]}, "empty", "its RLE mask has no pixel"),
    "rle huge size": ({"size": [2 ** 20, 2 ** 20], "counts": [2 ** 40]}, "unreadable",
                      "RLE size must be [height, width] of at most"),
}


def skipped_case(segmentation):
    data = dataset_dict()
    ann = next(a for a in data["annotations"] if a["id"] == 101)
    ann["segmentation"] = segmentation
    return data


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_unusable_segmentations_are_skipped_by_reason(tmp_path, case):
    segmentation, reason, message = SKIPPED[case]
    path, image_dir = write_dataset(tmp_path, skipped_case(segmentation))
    with pytest.warns(DatasetWarning) as caught:
        dataset = CocoDataset(path, image_dir)
    assert dataset.repairs.counts() == {
        "clipped": 0, "skipped": {name: int(name == reason)
                                  for name in ("unreadable", "degenerate", "empty")}}
    text = str(caught[0].message)
    assert text.startswith(f"{path}: skipped 1 annotation: 1 {reason} (annotation 101: ")
    assert message in text and "--strict refuses such files" in text
    assert 101 not in dataset.coco.anns  # neither training nor evaluation sees it
    assert [ann["id"] for ann in dataset.coco.imgToAnns[10]] == [100, 102, 103, 104]
    with pytest.raises(DatasetError, match="annotation 101: .*without --strict it is skipped"):
        CocoDataset(path, image_dir, strict=True)


@pytest.mark.parametrize("key, value, reason, message", [
    ("bbox", [2, 2, -1, 5], "unreadable", "bbox [2, 2, -1, 5] has a negative size"),
    ("bbox", [1, 2, 3], "unreadable", "bbox must be [x, y, width, height] of finite numbers"),
    ("bbox", [1, 2, float("nan"), 3], "unreadable", "bbox must be [x, y, width, height]"),
    ("bbox", [1, 2, 1e400, 3], "unreadable", "bbox must be [x, y, width, height]"),
    ("bbox", [40, 2, 3, 3], "empty", "bbox [40, 2, 3, 3] has no area inside its 30x20"),
    ("bbox", [3, 2, 0, 3], "empty", "has no area inside"),
    ("iscrowd", 2, "unreadable", "iscrowd must be 0 or 1, got 2"),
    ("area", "big", "unreadable", "area must be a finite number >= 0, got 'big'"),
    ("area", -1, "unreadable", "area must be a finite number >= 0, got -1"),
])
def test_unusable_boxes_and_fields_are_skipped(tmp_path, key, value, reason, message):
    data = dataset_dict()
    break_annotation(key, value)(data)
    path, image_dir = write_dataset(tmp_path, data)
    with pytest.warns(DatasetWarning, match=f"1 {reason} \\(annotation 101: "):
        dataset = CocoDataset(path, image_dir)
    assert message in str(dataset.repairs) and 101 not in dataset.coco.anns
    with pytest.raises(DatasetError, match="annotation 101"):
        CocoDataset(path, image_dir, strict=True)


def test_skipped_annotations_are_counted_by_reason_naming_the_first(tmp_path):
    data = dataset_dict()
    template = data["annotations"][0]
    data["annotations"] += [dict(template, id=300 + i, segmentation=[[1, 2, None, 4, 5, 6]])
                            for i in range(7)]
    data["annotations"] += [dict(template, id=400, segmentation=[[]]),
                            dict(template, id=401, segmentation=[[1, 1, 3, 3, 5, 5]])]
    path, image_dir = write_dataset(tmp_path, data)
    with pytest.warns(DatasetWarning) as caught:
        dataset = CocoDataset(path, image_dir)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"{path}: skipped 9 annotations: 7 unreadable (annotation 300: polygon coordinates must "
        "be numbers, got None; also 301, 302, 303, 304, 305 and 1 more); 1 degenerate "
        "(annotation 400: no polygon with 3 or more points, segmentation [[]]); 1 empty "
        "(annotation 401: its polygons have no area) (--strict refuses such files)")
    assert dataset.repairs.counts()["skipped"] == {"unreadable": 7, "degenerate": 1, "empty": 1}
    said = []
    assert open_dataset(path, image_dir, said.append).repairs.counts() == \
        dataset.repairs.counts()
    assert said == [str(caught[0].message)]


def test_geometry_past_the_border_is_clipped_and_counted(tmp_path):
    data = dataset_dict()
    # Image 10 is 30x20: a box 3 px past the right border, and a polygon reaching far out
    # (1e300 crashed pycocotools' C code).
    break_annotation("bbox", [20, 5, 13, 5], ann_id=102)(data)
    break_annotation("segmentation", [[-10, -10, 1e300, -10, 40, 30, -10, 30]])(data)
    break_annotation("bbox", [-10, -10, 50, 40])(data)
    # Within BOX_TOLERANCE_PX: rounding, left as it is.
    break_annotation("bbox", [10, 5, 20.5, 5], ann_id=107)(data)
    path, image_dir = write_dataset(tmp_path, data)
    with pytest.warns(DatasetWarning) as caught:
        dataset = CocoDataset(path, image_dir)
    assert str(caught[0].message) == (
        f"{path}: clipped 2 annotations to their image (box or polygons past the border: "
        "101, 102) (--strict refuses such files)")
    assert dataset.repairs.counts() == {
        "clipped": 2, "skipped": {"unreadable": 0, "degenerate": 0, "empty": 0}}
    assert dataset.coco.anns[102]["bbox"] == [20, 5, 10, 5]
    assert dataset.coco.anns[101]["bbox"] == [0, 0, 30, 20]
    assert dataset.coco.anns[107]["bbox"] == [10, 5, 20.5, 5]
    np.testing.assert_allclose(dataset.coco.anns[101]["segmentation"],
                               [[0, 20, 0, 0, 30, 0, 30, 20]], atol=1e-9)
    masks, _ = dataset.load_mask(0)
    assert masks[:, :, 1].all()  # the polygon covered the whole image
    with pytest.raises(DatasetError, match=r"annotation 101: its bbox \[-10, -10, 50, 40\] or "
                                           r"polygons lie outside its 30x20 .* clipped"):
        CocoDataset(path, image_dir, strict=True)


def test_short_polygons_beside_real_ones_are_dropped(tmp_path):
    data = dataset_dict()
    # pycocotools would read the whole list as boxes because the first has 4 numbers.
    break_annotation("segmentation", [[1, 1, 5, 5], [10, 5, 20, 5, 20, 10, 10, 10]],
                     ann_id=107)(data)
    path, image_dir = write_dataset(tmp_path, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoDataset(path, image_dir, strict=True)
    assert dataset.coco.anns[107]["segmentation"] == [[10, 5, 20, 5, 20, 10, 10, 10]]
    masks, _ = dataset.load_mask(2)
    assert masks[..., 1].sum() == 50 and masks[5:10, 10:20, 1].all()


@pytest.mark.parametrize("polygon, expected", [
    ([2, 2, 8, 2, 8, 6, 2, 6], [2, 2, 8, 2, 8, 6, 2, 6]),             # inside: unchanged
    ([-4, 2, 5, 2, 5, 6, -4, 6], [0, 2, 5, 2, 5, 6, 0, 6]),           # past the left border
    ([1, 1, 20, 4, 1, 6], [1, 1, 10, 1 + 27 / 19, 10, 4 + 20 / 19, 1, 6]),  # right
    ([2, -3, 6, -3, 6, 5, 2, 5], [2, 0, 6, 0, 6, 5, 2, 5]),           # past the top
    ([20, 20, 30, 20, 30, 30], []),                                    # all outside
    ([-5, -5, 15, -5, 15, 13, -5, 13], [0, 8, 0, 0, 10, 0, 10, 8]),  # around the image
])
def test_clip_polygon_by_hand(polygon, expected):
    """Sutherland-Hodgman on a 10x8 image; expected vertices worked out by hand."""
    clipped = clip_polygon(polygon, 10, 8)
    assert len(clipped) == len(expected)
    np.testing.assert_allclose(clipped, expected, atol=1e-12)


def test_rle_string_counts_decodes_what_pycocotools_encodes():
    rng = np.random.default_rng(4)
    for probability in (0.0, 0.02, 0.5, 1.0):
        mask = np.asfortranarray((rng.random((23, 17)) < probability).astype(np.uint8))
        counts = mask_utils.encode(mask)["counts"].decode("ascii")
        uncompressed = uncompressed_rle(mask.astype(bool))["counts"]
        assert rle_string_counts(counts).tolist() == uncompressed


def test_deeply_nested_json_is_a_clean_error(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        CocoDataset(path, tmp_path)
    data = dataset_dict()
    nested = []
    for _ in range(500):  # parses, but too deep for a repr in an error message
        nested = [nested]
    data["annotations"][0]["segmentation"] = [nested]
    path, image_dir = write_dataset(tmp_path, data)
    with pytest.warns(DatasetWarning, match=r"annotation 100: a polygon segmentation must be .* "
                                            r"got \[\[\[\[\.\.\.\]\]\]\]\)"):
        CocoDataset(path, image_dir)


def test_integers_python_cannot_read_are_a_clean_error(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [], "annotations": [], "categories": [{"id": 1' + "0" * 5000
                    + ', "name": "x"}]}')
    with pytest.raises(DatasetError, match="its JSON cannot be read"):
        CocoDataset(path, tmp_path)


def test_external_image_paths_need_permission(tmp_path):
    data = dataset_dict()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    path, image_dir = write_dataset(tmp_path, data)
    os.replace(image_dir / "c.png", outside / "c.png")
    data["images"][0]["file_name"] = "../elsewhere/c.png"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="leads out of the image folder"):
        CocoDataset(path, image_dir)
    dataset = CocoDataset(path, image_dir, allow_external_paths=True)
    assert dataset.load_image(2).shape == (HEIGHT, WIDTH, 3)


def test_images_past_the_pixel_budget_are_refused_before_reading(files):
    dataset = CocoDataset(*files, max_pixels=HEIGHT * WIDTH - 1)
    (files[1] / "a.png").write_bytes(b"not even an image")
    with pytest.raises(ImageTooLargeError, match=r"a.png \(by its size in .*instances.json\): "
                                                 r"30x20 pixels \(600\) is more than the limit "
                                                 r"of 599 "):
        dataset.load_image(0)
    assert dataset.load_image(1).shape == (16, 16, 3)


def test_compressed_rle_round_trips_many_masks(tmp_path):
    rng = np.random.default_rng(5)
    data = dataset_dict()
    masks = [rng.random((HEIGHT, WIDTH)) < p for p in (0.01, 0.5, 0.97)]
    masks.append(np.ones((HEIGHT, WIDTH), dtype=bool))
    data["annotations"] = [annotation(200 + i, 10, 1, compressed_rle(m), m)
                           for i, m in enumerate(masks)]
    masks_out, _ = CocoDataset(*write_dataset(tmp_path, data)).load_mask(0)
    np.testing.assert_array_equal(masks_out, np.stack(masks, axis=2))


@pytest.mark.parametrize("content, message", [
    ("[{\"image_id\": 1}]", "a JSON list \\(a results file\\?\\)"),
    ("{\"images\": []}", "expected an object with lists 'images', 'annotations'"),
    ("{not json", "is not a JSON file"),
])
def test_not_a_coco_file(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        CocoDataset(path, tmp_path)


def test_binary_file_is_not_json(files):
    with pytest.raises(DatasetError, match="a.png is not a JSON file"):
        CocoDataset(files[1] / "a.png", files[1])


def test_missing_files(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*nope.json"):
        CocoDataset(tmp_path / "nope.json", files[1])
    with pytest.raises(FileNotFoundError, match="image directory not found: .*nowhere"):
        CocoDataset(files[0], tmp_path / "nowhere")


def test_coco_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    for split, image_dir in [("val2017", "val2017"), ("train", "train"),
                             ("minival2014", "val2014"), ("valminusminival2014", "val2014")]:
        (tmp_path / "annotations" / f"instances_{split}.json").write_text("{}")
        (tmp_path / image_dir).mkdir(exist_ok=True)
        assert coco_layout(tmp_path, split) == (
            str(tmp_path / "annotations" / f"instances_{split}.json"), str(tmp_path / image_dir))
    (tmp_path / "annotations" / "instances_test2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="test2017 not found"):
        coco_layout(tmp_path, "test2017")
    with pytest.raises(FileNotFoundError, match="instances_train2017.json and .*train2017 not"):
        coco_layout(tmp_path, "train2017")

