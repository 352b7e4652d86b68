"""postprocess.coco_eval: the ground truth written out as predictions, crowds, id mapping, mask-score
ranking, bad input, and the split across processes (a stub detector stands in for the network)."""
import hashlib
import json
import os
import types

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image
import torch.multiprocessing as mp
from pycocotools.coco import COCO

from postprocess import coco_eval
from preprocess import synthetic
from preprocess.coco import CocoDataset, DatasetError, coco_layout
from mrcnn.config import Config

SIZE = 96
IMAGES = 6
# The synthetic categories circle, square, triangle get these ids, and images these ids, so that
# only a correct mapping between class index and category id (and image ids) can score.
CATEGORY_IDS = {1: 17, 2: 3, 3: 42}
IMAGE_IDS = {1: 1005, 2: 7, 3: 300, 4: 12, 5: 99, 6: 2}
# COCOeval's recall thresholds.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


@pytest.fixture(scope="module")
def dataset_files(tmp_path_factory):
    """A 3-category synthetic dataset with renumbered categories and images."""
    root = tmp_path_factory.mktemp("coco_eval") / "shapes"
    synthetic.write_dataset(root, 0, IMAGES, seed=11, size=SIZE, progress=False,
                            categories=("circle", "square", "triangle"))
    annotation_json, image_dir = coco_layout(root, "val")
    with open(annotation_json) as f:
        data = json.load(f)
    for category in data["categories"]:
        category["id"] = CATEGORY_IDS[category["id"]]
    for image in data["images"]:
        image["id"] = IMAGE_IDS[image["id"]]
    for annotation in data["annotations"]:
        annotation["category_id"] = CATEGORY_IDS[annotation["category_id"]]
        annotation["image_id"] = IMAGE_IDS[annotation["image_id"]]
    with open(annotation_json, "w") as f:
        json.dump(data, f)
    return annotation_json, image_dir


@pytest.fixture
def dataset(dataset_files):
    return CocoDataset(*dataset_files)


def image_key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def result_of(masks, class_ids, scores, mask_scores):
    """A detect() result of masks [H, W, N] with their bounding boxes, computed here."""
    height, width = masks.shape[:2]
    rows, cols = masks.any(axis=1), masks.any(axis=0)
    rois = np.stack([rows.argmax(axis=0), cols.argmax(axis=0),
                     height - rows[::-1].argmax(axis=0), width - cols[::-1].argmax(axis=0)],
                    axis=1)
    return {"rois": rois.astype(np.int32), "class_ids": np.asarray(class_ids, dtype=np.int32),
            "scores": np.asarray(scores, dtype=np.float32),
            "mask_scores": np.asarray(mask_scores, dtype=np.float32), "masks": masks}


def ground_truth_results(annotation_json, image_dir, keep=lambda annotations: annotations):
    """{image key: detect() result} holding the non-crowd annotations, decoded by pycocotools,
    with class index = rank of the category id among the sorted ids (Matterport's order)."""
    coco = COCO(annotation_json)
    class_of = {category: index + 1 for index, category in enumerate(sorted(coco.cats))}
    dataset = CocoDataset(annotation_json, image_dir)
    results = {}
    for position, image_id in enumerate(sorted(coco.imgs)):
        image = coco.imgs[image_id]
        annotations = keep([ann for ann in coco.imgToAnns[image_id] if not ann["iscrowd"]])
        masks = np.zeros((image["height"], image["width"], len(annotations)), dtype=bool)
        for k, ann in enumerate(annotations):
            masks[:, :, k] = coco.annToMask(ann) > 0
        count = len(annotations)
        results[image_key(dataset.load_image(position))] = result_of(
            masks, [class_of[ann["category_id"]] for ann in annotations],
            np.linspace(0.99, 0.5, count), np.linspace(0.9, 0.4, count))
    return results


class LookupModel:
    """A stand-in detector: detect() answers from a table keyed by the image's pixels."""

    def __init__(self, answers, batch_size=2):
        self.answers = answers
        self.config = Config(IMAGES_PER_GPU=batch_size)
        self.calls = []

    def detect(self, images, batch_size=None):
        self.calls.append(len(images))
        return [self.answers[image_key(image)] for image in images]


def evaluate_quietly(model, dataset, **kwargs):
    # LookupModel has no detection threshold to set: it keeps its own (None).
    return coco_eval.evaluate(model, dataset, progress=False, print_tables=False,
                              min_confidence=None, **kwargs)


def test_evaluation_uses_matterports_threshold_unless_told(dataset_files, dataset, capsys):
    class ThresholdModel(LookupModel):
        def __init__(self, answers):
            super().__init__(answers)
            self.detection_layer = types.SimpleNamespace(min_confidence=0.7)
            self.seen = []

        def detect(self, images, batch_size=None):
            self.seen.append(self.detection_layer.min_confidence)
            return super().detect(images, batch_size)

    model = ThresholdModel(ground_truth_results(*dataset_files))
    summary = coco_eval.evaluate(model, dataset, limit=2, progress=False)
    assert set(model.seen) == {0.0} and summary["min_confidence"] == 0.0
    assert "detections with a class score >= 0.0" in capsys.readouterr().out
    assert model.detection_layer.min_confidence == 0.7  # restored
    model.seen.clear()
    summary = evaluate_quietly(model, dataset, limit=2)
    assert set(model.seen) == {0.7} and summary["min_confidence"] == 0.7
    summary = coco_eval.evaluate(model, dataset, limit=2, progress=False, print_tables=False,
                                 min_confidence=0.5)
    assert summary["min_confidence"] == 0.5 and model.detection_layer.min_confidence == 0.7
    with pytest.raises(TypeError, match="min_confidence=None"):
        coco_eval.evaluate(LookupModel({}), dataset, progress=False)


def test_ground_truth_as_predictions_scores_one(dataset_files, dataset, tmp_path, capsys):
    model = LookupModel(ground_truth_results(*dataset_files))
    summary = coco_eval.evaluate(model, dataset, out_dir=tmp_path / "out", progress=False,
                                 min_confidence=None)
    for iou_type in ("bbox", "segm"):
        stats = summary[iou_type]
        assert list(stats) == list(coco_eval.STAT_NAMES)
        assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
        assert stats["AR100"] == pytest.approx(1.0)
    assert model.calls == [2, 2, 2]  # batches of config.BATCH_SIZE
    assert summary["image_count"] == IMAGES and summary["processes"] == 1
    assert summary["seconds_per_image"] > 0 and summary["mask_score"] == "maskiou"

    out = capsys.readouterr().out
    assert out.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]") == 2
    assert out.count("Average Recall") == 12
    assert "COCO bbox" in out and "COCO segm" in out

    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == summary
    bbox = json.loads((tmp_path / "out" / "bbox_results.json").read_text())
    segm = json.loads((tmp_path / "out" / "segm_results.json").read_text())
    coco = COCO(dataset_files[0])
    instances = len(coco.dataset["annotations"])
    assert len(bbox) == len(segm) == summary["detections"] == instances
    assert {e["category_id"] for e in bbox} == {e["category_id"] for e in segm} == {17, 3, 42}
    assert {e["image_id"] for e in segm} == set(IMAGE_IDS.values())
    # Boxes ranked by the class score; masks by the mask score, without a box (mask area counts).
    assert all("segmentation" not in e and e["score"] > e["mask_score"] for e in bbox)
    assert all("bbox" not in e and e["score"] == e["mask_score"] for e in segm)


def test_dropping_half_the_instances_lowers_recall_by_hand(dataset_files, dataset):
    def every_other(annotations):
        return annotations[::2]

    model = LookupModel(ground_truth_results(*dataset_files, keep=every_other))
    summary = evaluate_quietly(model, dataset)

    coco = COCO(dataset_files[0])
    kept, total = {}, {}
    for image_id in coco.imgs:
        annotations = [ann for ann in coco.imgToAnns[image_id] if not ann["iscrowd"]]
        for ann in annotations:
            total[ann["category_id"]] = total.get(ann["category_id"], 0) + 1
        for ann in every_other(annotations):
            kept[ann["category_id"]] = kept.get(ann["category_id"], 0) + 1
    recalls = np.array([kept.get(category, 0) / total[category] for category in total])
    assert 0.3 < recalls.mean() < 0.8
    # Every detection is a perfect match: precision is 1 up to each category's recall, then 0.
    expected_ap = np.mean([(RECALL_THRESHOLDS <= recall).mean() for recall in recalls])
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["AR100"] == pytest.approx(recalls.mean())
        assert summary[iou_type]["AP"] == pytest.approx(expected_ap)


def test_mask_score_ranks_the_masks_and_class_score_the_boxes(dataset_files, dataset):
    """One image: its instances (class score 0.5, mask score 0.9) and a false detection on the
    background (class score 0.95, mask score 0.1). Ranked by mask score the false mask comes last
    and costs no precision; ranked by class score it comes first."""
    answers = ground_truth_results(*dataset_files)
    first = dataset.load_image(0)
    truth = answers[image_key(first)]
    covered = truth["masks"].any(axis=2)
    background = np.zeros_like(covered)
    ys, xs = np.nonzero(~covered)
    background[ys[0]:ys[0] + 1, xs[0]:xs[0] + 1] = True  # one uncovered pixel
    count = len(truth["class_ids"])
    answers[image_key(first)] = result_of(
        np.concatenate([truth["masks"], background[:, :, None]], axis=2),
        np.append(truth["class_ids"], 1), [0.5] * count + [0.95], [0.9] * count + [0.1])
    model = LookupModel(answers)

    by_mask_iou = evaluate_quietly(model, dataset, limit=1)
    by_class = evaluate_quietly(model, dataset, limit=1, mask_score="cls")
    assert by_mask_iou["segm"]["AP"] == pytest.approx(1.0)
    assert by_class["segm"]["AP"] < 0.99
    # Boxes always follow the class score.
    assert by_mask_iou["bbox"]["AP"] == pytest.approx(by_class["bbox"]["AP"])
    assert by_mask_iou["bbox"]["AP"] < 0.99
    assert by_mask_iou["image_count"] == 1 and by_class["mask_score"] == "cls"


def test_crowd_regions_are_ignored_not_false_positives(dataset_files, tmp_path):
    """A detection on a crowd region is neither a hit nor a miss; without the crowd it is a false
    positive."""
    with open(dataset_files[0]) as f:
        data = json.load(f)
    first_image_id = min(image["id"] for image in data["images"])  # dataset position 0
    answers = ground_truth_results(*dataset_files)
    crowd = np.zeros((SIZE, SIZE), dtype=bool)
    crowd[:6, :] = True
    data["annotations"].append({
        "id": 10_000, "image_id": first_image_id, "category_id": 17, "iscrowd": 1,
        "area": int(crowd.sum()), "bbox": [0, 0, SIZE, 6],
        "segmentation": {"size": [SIZE, SIZE], "counts": [0, 6] + [SIZE - 6, 6] * (SIZE - 1)
                         + [SIZE - 6]}})
    with_crowd = tmp_path / "with_crowd.json"
    with_crowd.write_text(json.dumps(data))
    crowd_dataset = CocoDataset(with_crowd, dataset_files[1])
    assert (crowd_dataset.load_mask(0)[1] == -2).sum() == 1  # category 17 is class 2

    key = image_key(crowd_dataset.load_image(0))
    truth = answers[key]
    count = len(truth["class_ids"])
    answers[key] = result_of(np.concatenate([crowd[:, :, None], truth["masks"]], axis=2),
                             np.append(2, truth["class_ids"]), [0.99] + [0.9] * count,
                             [0.99] + [0.9] * count)
    model = LookupModel(answers)
    crowd_summary = evaluate_quietly(model, crowd_dataset)
    plain_summary = evaluate_quietly(model, CocoDataset(*dataset_files))
    for iou_type in ("bbox", "segm"):
        assert crowd_summary[iou_type]["AP"] == pytest.approx(1.0)
        assert plain_summary[iou_type]["AP"] < 0.99


def test_evaluation_leaves_the_dataset_as_it_was(dataset_files, dataset):
    before = json.dumps(dataset.coco.dataset, sort_keys=True)
    masks_before, class_ids_before = dataset.load_mask(1)
    evaluate_quietly(LookupModel(ground_truth_results(*dataset_files)), dataset)
    assert json.dumps(dataset.coco.dataset, sort_keys=True) == before
    masks_after, class_ids_after = dataset.load_mask(1)
    assert np.array_equal(masks_after, masks_before)
    assert np.array_equal(class_ids_after, class_ids_before)


def test_no_detections_score_zero_and_write_empty_results(dataset_files, dataset, tmp_path):
    empty = {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
             "scores": np.zeros(0, np.float32), "mask_scores": np.zeros(0, np.float32),
             "masks": np.zeros((SIZE, SIZE, 0), bool)}
    answers = {key: empty for key in ground_truth_results(*dataset_files)}
    summary = evaluate_quietly(LookupModel(answers), dataset, out_dir=tmp_path)
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["AP"] == 0.0 and summary[iou_type]["AR100"] == 0.0
        assert json.loads((tmp_path / coco_eval.RESULT_FILES[iou_type]).read_text()) == []
    assert summary["detections"] == 0


def test_missing_images_are_named_before_any_detection(dataset_files, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for name in sorted(os.listdir(dataset_files[1]))[1:]:
        os.link(os.path.join(dataset_files[1], name), image_dir / name)
    model = LookupModel({})
    dataset = CocoDataset(dataset_files[0], image_dir)
    with pytest.raises(FileNotFoundError, match=r"1 of the 6 images .*/images/000001\.png$"):
        evaluate_quietly(model, dataset)
    assert model.calls == []
    # 000001.png holds image id 1005, the last in dataset order: the first five need not it.
    coco_eval.check_images(dataset, coco_eval.select_images(dataset, limit=5))
    with pytest.raises(FileNotFoundError):
        coco_eval.check_images(dataset, coco_eval.select_images(dataset, limit=6))


def test_images_that_cannot_be_processed_are_skipped(dataset_files, tmp_path, capsys):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for name in sorted(os.listdir(dataset_files[1])):
        os.link(os.path.join(dataset_files[1], name), image_dir / name)
    model = LookupModel(ground_truth_results(*dataset_files))
    os.unlink(image_dir / "000004.png")
    (image_dir / "000004.png").write_bytes(b"not a png")
    os.unlink(image_dir / "000002.png")
    Image.fromarray(np.zeros((SIZE, SIZE + 1, 3), np.uint8)).save(image_dir / "000002.png")
    out_dir = tmp_path / "out"
    summary = evaluate_quietly(model, CocoDataset(dataset_files[0], image_dir), out_dir=out_dir)
    err = capsys.readouterr().err
    assert f"warning: skipped {image_dir / '000004.png'}: not a readable image" in err
    assert f"warning: skipped {image_dir / '000002.png'} is 96x97 pixels but" in err
    # The other images are scored, against their own ground truth only.
    assert summary["image_count"] == IMAGES - 2
    assert summary["bbox"]["AP"] == pytest.approx(1.0) and summary["segm"]["AR100"] == 1.0
    assert [(entry["image_id"], os.path.basename(entry["file"]))
            for entry in summary["skipped_images"]] == [(IMAGE_IDS[2], "000002.png"),
                                                         (IMAGE_IDS[4], "000004.png")]
    assert "not a readable image" in summary["skipped_images"][1]["reason"]
    assert json.loads((out_dir / "summary.json").read_text()) == summary
    assert summary["dataset_repairs"] == {
        "clipped": 0, "skipped": {"unreadable": 0, "degenerate": 0, "empty": 0}}


def test_no_image_that_can_be_processed_is_an_error(dataset_files, tmp_path):
    dataset = CocoDataset(*dataset_files, max_pixels=SIZE * SIZE - 1)
    with pytest.raises(DatasetError, match="none of the 6 images to evaluate in .* could be "
                                           "processed"):
        evaluate_quietly(LookupModel({}), dataset, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_arguments(dataset):
    model = LookupModel({})
    with pytest.raises(ValueError, match="mask_score must be one of"):
        evaluate_quietly(model, dataset, mask_score="iou")
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        evaluate_quietly(model, dataset, limit=0)
    with pytest.raises(ValueError, match="iou_type must be one of"):
        coco_eval.run_cocoeval(dataset, [], "keypoints")
    assert model.calls == []


def _evaluate_in_process(rank, world_size, store, dataset_files, answers, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size)
    try:
        model = LookupModel(answers, batch_size=1)
        summary = evaluate_quietly(model, CocoDataset(*dataset_files), out_dir=out_dir)
        with open(os.path.join(os.path.dirname(store), f"rank{rank}.json"), "w") as f:
            json.dump({"summary": summary, "calls": model.calls}, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_merge_to_the_single_process_results(dataset_files, dataset, tmp_path):
    def every_other(annotations):
        return annotations[::2]

    answers = ground_truth_results(*dataset_files, keep=every_other)
    single = evaluate_quietly(LookupModel(answers), dataset, out_dir=tmp_path / "single")
    # fork: the children need not import torch again (spawn takes seconds per process).
    mp.start_processes(_evaluate_in_process, nprocs=2, start_method="fork",
                       args=(2, str(tmp_path / "store"), dataset_files, answers,
                             str(tmp_path / "two")))

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # The six images split 3 + 3, one per detect() call; both processes return rank 0's summary.
    assert [report["calls"] for report in reports] == [[1, 1, 1], [1, 1, 1]]
    assert reports[0]["summary"] == reports[1]["summary"]
    merged = reports[0]["summary"]
    assert merged["processes"] == 2
    for key in ("bbox", "segm", "image_count", "detections"):
        assert merged[key] == single[key]
    for name in coco_eval.RESULT_FILES.values():
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
