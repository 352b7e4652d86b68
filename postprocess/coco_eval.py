"""COCO box and mask mAP of a detector on a CocoDataset, with Mask Scoring R-CNN's mask scores.

`evaluate(model, dataset)` runs `model.detect` over the images, turns the detections into COCO
results (the dataset's own image and category ids; boxes ranked by the class score, masks by the
mask score = class score x predicted mask IoU, or by the class score for comparison), runs
pycocotools' COCOeval for "bbox" and "segm" and returns (and optionally writes) a summary with
the 12 standard numbers of each.

When torch.distributed is initialised (e.g. under torchrun), every process detects a strided
share of the images; the results are gathered to rank 0, which alone runs COCOeval and writes the
files, and every process returns the same summary. With NCCL each process must first call
torch.cuda.set_device for its GPU: the object collectives use the current device.

Any object with `detect(images, batch_size)` (as MaskScoringRCNN.detect) and a `config` (its
resize mode; BATCH_SIZE when no batch size is given) can be evaluated; to evaluate at another
detection threshold than its own (by default Matterport's 0, see EVAL_MIN_CONFIDENCE) it needs
`detection_layer.min_confidence` as MaskScoringRCNN has.

An image that cannot be processed (unreadable, over the dataset's pixel budget, another size
than the annotation file says, too thin for the resize mode) is reported on stderr and skipped;
COCOeval then scores the other images only, and the summary lists the skipped ones.
"""
import contextlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from mrcnn.atomic import atomic_write
from mrcnn.cli import error_message
from postprocess.visualize import result_to_coco_json
from preprocess.coco import DatasetError
from preprocess.images import IMAGE_ERRORS, check_resizable

IOU_TYPES = ("bbox", "segm")
# --mask-score mode -> the result array that ranks the segm results, and how to say it.
MASK_SCORE_KEYS = {"maskiou": "mask_scores", "cls": "scores"}
RANKINGS = {"maskiou": "class score x predicted mask IoU", "cls": "class score"}
# COCOeval.stats in the order summarize() prints them.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RESULT_FILES = {"bbox": "bbox_results.json", "segm": "segm_results.json"}
SUMMARY_FILE = "summary.json"
# Matterport's COCO evaluation setting (samples/coco/coco.py, InferenceConfig): every detection
# counts, whatever its class score, as COCO AP expects. Every evaluation of this project uses it
# unless told otherwise, so that AP numbers compare.
EVAL_MIN_CONFIDENCE = 0.0


def evaluate(model, dataset, limit=None, batch_size=None, mask_score="maskiou", out_dir=None,
             progress=True, print_tables=True, summary_fields=None,
             min_confidence=EVAL_MIN_CONFIDENCE):
    """Detects on the first `limit` images of `dataset` (all by default) and scores them.

    Args:
        model: MaskScoringRCNN or any object with detect(images, batch_size) returning per image
            rois [N, 4] (y1, x1, y2, x2), class_ids [N], scores [N], mask_scores [N] and
            masks [H, W, N]. A torch module in training mode is evaluated in eval mode and put
            back.
        dataset: preprocess.coco.CocoDataset; class index i of the model is its category
            dataset.category_ids[i - 1].
        limit: evaluate the first `limit` images (in dataset order) only.
        batch_size: images per detect() call (default model.config.BATCH_SIZE).
        mask_score: "maskiou" ranks masks by class score x predicted mask IoU, "cls" by the class
            score alone.
        out_dir: when given, rank 0 writes bbox_results.json, segm_results.json and summary.json
            there (atomically).
        progress: show a progress bar (rank 0 only).
        print_tables: print COCOeval's two summarize() tables (rank 0 only).
        summary_fields: extra JSON-compatible entries for the summary (e.g. the weights path).
        min_confidence: the detection threshold (DETECTION_MIN_CONFIDENCE) of this evaluation:
            detections with a lower class score are dropped. Default Matterport's COCO
            evaluation setting, EVAL_MIN_CONFIDENCE = 0; None keeps the model's own.
    Returns:
        the summary dict, the same in every process: "bbox" and "segm" ({STAT_NAMES[i]: stat}),
        image_count (the images scored), skipped_images ([{"image_id", "file", "reason"}] of
        the images that could not be processed), dataset_repairs (the annotations clipped and
        skipped by reason when the dataset was read), detections, processes,
        seconds_per_image (detection wall time over the image count), mask_score,
        min_confidence (the threshold used; None when a model without detection_layer kept its
        own), annotations, image_dir, plus summary_fields.
    Raises:
        DatasetError when no image at all could be processed.
    """
    if mask_score not in MASK_SCORE_KEYS:
        raise ValueError(f"mask_score must be one of {list(MASK_SCORE_KEYS)}, got {mask_score!r}")
    positions = select_images(dataset, limit)
    check_images(dataset, positions)
    batch_size = batch_size or model.config.BATCH_SIZE
    rank, world_size = _rank_and_world_size()

    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        with detection_threshold(model, min_confidence) as threshold:
            start = time.perf_counter()
            per_image, skipped = detect_images(
                model, dataset, positions[rank::world_size], batch_size, mask_score,
                progress=progress and rank == 0,
                description=f"eval rank {rank}/{world_size}" if world_size > 1 else "eval")
            seconds = time.perf_counter() - start
    finally:
        if training:
            model.train()
    per_image, skipped, seconds = _gather(per_image, skipped, seconds)
    if not per_image:
        raise DatasetError(f"none of the {len(positions)} images to evaluate in "
                           f"{dataset.annotation_json} could be processed (see above)")

    summary = None
    if rank == 0:
        entries = {iou_type: [entry for _, image in per_image for entry in image[iou_type]]
                   for iou_type in IOU_TYPES}
        image_ids = [dataset.coco_image_ids[position] for position, _ in per_image]
        summary = {
            "image_count": len(image_ids),
            "skipped_images": [{"image_id": dataset.coco_image_ids[position],
                                "file": dataset.image_info(position).path, "reason": reason}
                               for position, reason in skipped],
            "dataset_repairs": dataset.repairs.counts(),
            "detections": len(entries["bbox"]),
            "processes": world_size,
            "seconds_per_image": seconds / len(image_ids),
            "mask_score": mask_score,
            "min_confidence": threshold,
            "annotations": os.path.abspath(dataset.annotation_json),
            "image_dir": os.path.abspath(dataset.image_dir),
            **(summary_fields or {}),
        }
        for iou_type in IOU_TYPES:
            if print_tables:
                ranking = RANKINGS["cls" if iou_type == "bbox" else mask_score]
                print(f"COCO {iou_type} on {len(image_ids)} images, ranked by {ranking}, "
                      f"detections with a class score >= {threshold}:")
            stats = run_cocoeval(dataset, entries[iou_type], iou_type, image_ids, print_tables)
            summary[iou_type] = dict(zip(STAT_NAMES, stats))
        if out_dir is not None:
            write_results(out_dir, entries["bbox"], entries["segm"], summary)
    return _broadcast(summary)


@contextlib.contextmanager
def detection_threshold(model, min_confidence):
    """Sets the model's detection threshold to `min_confidence` (None: keeps it) for the block,
    then restores it; yields the threshold in force (None when the model has no
    detection_layer and keeps its own)."""
    layer = getattr(model, "detection_layer", None)
    if min_confidence is None:
        yield None if layer is None else layer.min_confidence
        return
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if layer is None:
        raise TypeError(f"{type(model).__name__} has no detection_layer.min_confidence to "
                        "evaluate at another threshold; pass min_confidence=None to keep its own")
    kept = layer.min_confidence
    layer.min_confidence = min_confidence
    try:
        yield min_confidence
    finally:
        layer.min_confidence = kept


def select_images(dataset, limit=None):
    """Dataset positions 0..n-1 of the first `limit` images (all when None)."""
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if len(dataset) == 0:
        raise ValueError(f"{dataset.annotation_json} lists no images to evaluate")
    return list(range(len(dataset)))[:limit]


def check_images(dataset, positions):
    """Raises FileNotFoundError naming the image files of `positions` that are not on disk."""
    paths = [dataset.image_info(position).path for position in positions]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images to evaluate, listed in "
            f"{dataset.annotation_json}, are not in {dataset.image_dir}: {shown}")


def detect_images(model, dataset, positions, batch_size, mask_score="maskiou", progress=True,
                  description="eval"):
    """Runs model.detect over the images at `positions`, `batch_size` at a time.

    The next batch is read from disk while the model works on the current one. An image that
    cannot be processed is said on stderr ('warning: skipped ...') and left out of its batch.
    Returns (per_image, skipped): one (position, coco_entries(...)) pair per processed image
    and one (position, why) pair per skipped one, each in `positions` order.
    """
    category_ids = dict(enumerate(dataset.category_ids, start=1))
    batches = [positions[start:start + batch_size]
               for start in range(0, len(positions), batch_size)]
    per_image, skipped = [], []
    with ThreadPoolExecutor(max_workers=1) as reader, \
            tqdm(total=len(positions), unit="image", desc=description,
                 disable=not progress) as bar:
        upcoming = (reader.submit(_load_images, dataset, batches[0], model.config)
                    if batches else None)
        for number, batch in enumerate(batches):
            loaded, failed = upcoming.result()
            if number + 1 < len(batches):
                upcoming = reader.submit(_load_images, dataset, batches[number + 1],
                                         model.config)
            for position, why in failed:
                bar.write(f"warning: skipped {why}", file=sys.stderr)
            skipped += failed
            results = (model.detect([image for _, image in loaded], batch_size=batch_size)
                       if loaded else [])
            for (position, _), result in zip(loaded, results):
                image_id = dataset.coco_image_ids[position]
                per_image.append((position, coco_entries(result, image_id, category_ids,
                                                         mask_score)))
            bar.update(len(batch))
    return per_image, skipped


def coco_entries(result, image_id, category_ids, mask_score="maskiou"):
    """COCO results of one image's detections: {"bbox": entries, "segm": entries}.

    Box entries are ranked by the class score. Mask entries carry the RLE and are ranked by the
    mask score ("maskiou") or the class score ("cls"); they have no 'bbox', because COCOeval
    would take the box area instead of the mask area for a result that has one, which moves
    masks between the small, medium and large ranges.
    category_ids maps the model's class index to the dataset's category id.
    """
    boxes_only = {key: value for key, value in result.items() if key != "masks"}
    bbox = result_to_coco_json(boxes_only, image_id, category_ids=category_ids)
    segm = result_to_coco_json(result, image_id, category_ids=category_ids,
                               score_key=MASK_SCORE_KEYS[mask_score])
    for entry in segm:
        del entry["bbox"]
    return {"bbox": bbox, "segm": segm}


def run_cocoeval(dataset, entries, iou_type, image_ids=None, print_table=True):
    """COCOeval of results `entries` against `dataset` on `image_ids` (default all).

    Only the dataset's categories (dataset.category_ids) count. print_table prints
    summarize()'s standard 12 lines. Returns the 12 stats as floats, in STAT_NAMES order
    (-1 where the images hold no ground truth for a number).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    image_ids = dataset.coco_image_ids if image_ids is None else list(image_ids)
    ground_truth = _ground_truth(dataset.coco, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports every step
        evaluator = COCOeval(ground_truth, _load_results(ground_truth, entries), iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.params.catIds = dataset.category_ids
        evaluator.evaluate()
        evaluator.accumulate()
    if print_table:
        evaluator.summarize()
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize()
    return [float(value) for value in evaluator.stats]


def write_results(out_dir, bbox_entries, segm_entries, summary):
    """Writes bbox_results.json, segm_results.json and summary.json into `out_dir`.

    Each file is written to a temporary file beside it and renamed, so an interrupted run leaves
    the previous file (or none), never a partial one. Returns {name: path}.
    """
    os.makedirs(out_dir, exist_ok=True)
    contents = {RESULT_FILES["bbox"]: bbox_entries, RESULT_FILES["segm"]: segm_entries,
                SUMMARY_FILE: summary}
    paths = {}
    for name, value in contents.items():
        paths[name] = os.path.join(out_dir, name)
        with atomic_write(paths[name], "w") as f:
            json.dump(value, f, indent=1 if name == SUMMARY_FILE else None)
    return paths


def _load_images(dataset, positions, config):
    """([(position, image)], [(position, why)]): the images of `positions` that load and fit
    config's resize mode, and the others with the error that names them."""
    loaded, failed = [], []
    for position in positions:
        try:
            image = dataset.load_image(position)
            check_resizable(image.shape, config, dataset.image_info(position).path)
            loaded.append((position, image))
        except (*IMAGE_ERRORS, DatasetError) as error:
            failed.append((position, error_message(error)))
    return loaded, failed


def _ground_truth(coco, image_ids):
    """A COCO of `image_ids` whose annotation dicts are copies: COCOeval writes into them (it
    turns polygons into RLE and adds 'ignore'), which would change the dataset's own."""
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [coco.imgs[image_id] for image_id in image_ids],
        "categories": coco.dataset["categories"],
        "annotations": [dict(annotation) for image_id in image_ids
                        for annotation in coco.imgToAnns[image_id]],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    return ground_truth


def _load_results(ground_truth, entries):
    """COCO.loadRes of copies of `entries` (it adds fields to them); it fails on an empty list,
    so no detections give an empty results set."""
    if entries:
        return ground_truth.loadRes([dict(entry) for entry in entries])
    results = COCO()
    results.dataset = {"images": ground_truth.dataset["images"],
                       "categories": ground_truth.dataset["categories"], "annotations": []}
    results.createIndex()
    return results


def _rank_and_world_size():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(summary):
    """Rank 0's summary in every process."""
    if _rank_and_world_size()[1] == 1:
        return summary
    holder = [summary]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _gather(per_image, skipped, seconds):
    """Every process's per-image results and skipped images, each in dataset order, and the
    longest detection time."""
    if _rank_and_world_size()[1] == 1:
        return per_image, skipped, seconds
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (per_image, skipped, seconds))
    merged = [sorted((item for share in shares for item in share[part]), key=lambda item: item[0])
              for part in (0, 1)]
    return merged[0], merged[1], max(share[2] for share in shares)
