"""COCO box and mask mAP of Mask Scoring R-CNN on a COCO-format dataset. Run with --help."""
import argparse
import os
import sys

import mrcnn  # noqa: F401  first: it sets OpenMP's thread settings before torch loads
import torch.distributed as dist

from mrcnn.cli import (CliError, add_dataset_check_arguments, add_precision_argument,
                       build_config, check_no_overwrite, dataset_options, error_message,
                       join_processes, load_model, make_out_dir)
from mrcnn.weights import WeightsError, is_hdf5
from postprocess import coco_eval
from preprocess.coco import DatasetError, coco_layout, open_dataset
from preprocess.splits import check_class_count

DESCRIPTION = """\
Runs Mask Scoring R-CNN over the images of a COCO-format dataset, writes the detections as COCO
results files and prints COCOeval's two standard 12-number tables, for boxes ("bbox") and masks
("segm").

The dataset, in one of two ways:
  --dataset DIR --split NAME   a directory in the COCO 2017 layout:
                                 DIR/annotations/instances_NAME.json, images in DIR/NAME/
                               e.g. --split val2017 for COCO 2017; --split minival2014 or
                               valminusminival2014 for COCO 2014's subsets (images in
                               DIR/val2014/); --split val for python -m preprocess.synthetic
  --annotations A.json --images DIR
                               any COCO "instances" file and its image directory
Class i of the model is the dataset's i-th category in ascending category id (0 = background),
as in Matterport's COCO code; results carry the dataset's own image and category ids.

The model: --weights is a Matterport Keras .h5 or a .pth of this project. Its settings come from
--config (a JSON object with any subset of Config fields, e.g. a Config.to_json file; the rest keep
Config's defaults, NUM_CLASSES and CLASS_NAMES the dataset's, BACKBONE and NUM_CLASSES an .h5's),
else from the .pth itself, else (an .h5 without --config) the backbone and class count the .h5
was made for with Matterport's COCO evaluation settings: one image per batch. NUM_CLASSES must
equal the dataset's category count + 1.

Detections: every evaluation keeps every detection whatever its class score
(DETECTION_MIN_CONFIDENCE 0, Matterport's COCO evaluation setting, as train.py --eval-every and
the benchmarks do), so that the AP compares with published numbers; --min-confidence sets
another threshold. The threshold used is printed and recorded in summary.json.

Scores: box results are ranked by the class score. Mask results are ranked by Mask Scoring
R-CNN's mask score, class score x the predicted IoU of the mask (--mask-score maskiou), or by the
class score alone (--mask-score cls, plain Mask R-CNN, for comparison). Matterport's .h5 files
have no trained MaskIoU head: evaluate them with --mask-score cls.

Everything is checked before the model runs: the files exist, the annotation file is COCO (every
field, for type, range and finiteness), every image to evaluate is on disk, NUM_CLASSES fits and
the weights load. Bad inputs:
  - an annotation file that cannot be read as COCO (not JSON, missing keys, ids that are not
    integers, unknown images or categories, names that are not strings, image paths leading
    out of the image folder without --allow-external-images): an error naming the entry;
  - boxes and polygons past their image are clipped to it; annotations that are unreadable,
    degenerate (polygons of fewer than 3 points) or empty are skipped; one warning counts them
    (train.py reports the same counts for the same file); --strict refuses them instead;
  - an image that cannot be processed (unreadable, more than --max-pixels, another size than the
    annotation file gives, too thin for the resize mode) is reported and skipped, the others are
    scored without it, summary.json lists it, and the exit status is 1.

Written to --out (each file atomically):
  bbox_results.json, segm_results.json  COCO results (lists of dicts as COCO.loadRes reads them;
                                        segmentations as compressed RLE)
  summary.json                          the 12 numbers per type (AP, AP50, AP75, APs, APm, APl,
                                        AR1, AR10, AR100, ARs, ARm, ARl), image count, skipped
                                        images, clipped and skipped annotations, seconds per
                                        image, mask-score mode, weights and settings

Several processes (e.g. one per GPU): torchrun --nproc_per_node N eval.py ... Each process takes
every N-th image; the results are gathered to the first process, which alone runs COCOeval and
writes the files (NCCL on CUDA, gloo on the CPU)."""

EPILOG = """\
examples:
  python eval.py --dataset data/coco --split minival2014 --weights mask_rcnn_coco.h5 \\
      --mask-score cls --limit 500
  python eval.py --dataset data/shapes --split val --weights shapes.pth --out runs/shapes_eval
  torchrun --nproc_per_node 8 eval.py --dataset data/coco --split val2017 --weights ms.pth"""

DEFAULT_OUT = "eval_results"


def build_parser():
    parser = argparse.ArgumentParser(prog="eval.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("dataset (either --dataset and --split, or --annotations "
                                     "and --images)")
    data.add_argument("--dataset", metavar="DIR", help="dataset directory in the COCO 2017 layout")
    data.add_argument("--split", metavar="NAME",
                      help="split of --dataset: val2017, minival2014, val, ...")
    data.add_argument("--annotations", metavar="A.json", help="COCO instances annotation file")
    data.add_argument("--images", metavar="DIR", help="directory of the images of --annotations")
    add_dataset_check_arguments(data)

    model = parser.add_argument_group("model")
    model.add_argument("--weights", required=True, metavar="FILE",
                       help="Matterport Keras .h5 or mrcnn .pth weights")
    model.add_argument("--config", metavar="C.json",
                       help="JSON object of Config fields (any subset); default: the .pth's own "
                            "config, or Matterport's COCO evaluation settings for an .h5")
    model.add_argument("--min-confidence", type=float, metavar="X",
                       help="drop detections with a lower class score (default: 0, every "
                            "detection counts, as Matterport evaluates COCO; the config's "
                            "DETECTION_MIN_CONFIDENCE is for demo.py)")
    add_precision_argument(model)

    run = parser.add_argument_group("run")
    run.add_argument("--limit", type=int, metavar="N",
                     help="evaluate only the first N images (in image id order)")
    run.add_argument("--batch-size", type=int, metavar="B",
                     help="images per forward pass (default: the config's BATCH_SIZE = "
                          "IMAGES_PER_GPU x GPU_COUNT)")
    run.add_argument("--device", choices=("cpu", "cuda"),
                     help="where the model runs (default: cuda when available, else cpu)")
    run.add_argument("--mask-score", choices=tuple(coco_eval.MASK_SCORE_KEYS), default="maskiou",
                     help="ranking of the mask results: maskiou = class score x predicted mask "
                          "IoU (Mask Scoring R-CNN), cls = class score (default: maskiou)")
    run.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                     help=f"directory for the results and summary files (default: {DEFAULT_OUT})")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        device = join_processes(args.device)
    except (ValueError, CliError) as error:
        parser.error(str(error))
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        try:
            dataset, model, settings = prepare(args, device, verbose=rank == 0)
        except (OSError, ValueError, KeyError, CliError) as error:
            # OSError: missing or unreadable files; ValueError: DatasetError, WeightsError and
            # bad settings; KeyError: unknown Config fields; CliError: the ops are not built.
            parser.exit(2, f"{parser.prog}: error: {error_message(error)}\n")
        try:
            summary = coco_eval.evaluate(
                model, dataset, limit=args.limit, batch_size=args.batch_size,
                mask_score=args.mask_score, out_dir=args.out, progress=not args.quiet,
                summary_fields=settings, min_confidence=min_confidence(args))
        except (DatasetError, OSError) as error:  # no image could be read; --out not writable
            parser.exit(1, f"{parser.prog}: error: {error_message(error)}\n")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"{summary['image_count']} images, {summary['seconds_per_image']:.3f} s/image; "
              f"results and summary in {os.path.abspath(args.out)}")
    skipped = len(summary["skipped_images"])
    if skipped:
        parser.exit(1, f"{parser.prog}: error: skipped {skipped} of the "
                       f"{skipped + summary['image_count']} images (see above and summary.json); "
                       "the scores are those of the others\n")
    return summary


def check_arguments(args):
    """Raises ValueError for option combinations and values that cannot work."""
    layout, files = (args.dataset, args.split), (args.annotations, args.images)
    if any(layout) and any(files):
        raise ValueError("give either --dataset and --split or --annotations and --images, "
                         "not both")
    if not all(layout) and not all(files):
        raise ValueError("the dataset needs --dataset DIR and --split NAME, or --annotations "
                         "A.json and --images DIR")
    for name in ("limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")


def prepare(args, device, verbose=True):
    """Checks the inputs and builds the model, before any long work.

    Returns the dataset, the model on `device` with its weights, and the settings recorded in
    the summary. `verbose` prints warnings about the settings.
    """
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    if not os.access(args.weights, os.R_OK):
        raise PermissionError(f"weights file not readable: {args.weights}")

    if args.dataset:
        annotation_json, image_dir = coco_layout(args.dataset, args.split)
    else:
        annotation_json, image_dir = args.annotations, args.images
    say = print_warning if verbose else (lambda _: None)
    dataset = open_dataset(annotation_json, image_dir, say, **dataset_options(args))
    coco_eval.check_images(dataset, coco_eval.select_images(dataset, args.limit))

    config, config_source = _config(args, dataset)
    check_class_count(config, dataset, config_source)
    if verbose:
        _warn_about_class_names(config, dataset)
    out_dir = make_out_dir(args.out)
    check_no_overwrite(out_dir, [*coco_eval.RESULT_FILES.values(), coco_eval.SUMMARY_FILE],
                       [args.weights, args.config, dataset.annotation_json])
    if verbose:
        threshold = min_confidence(args)
        how = ("--min-confidence" if args.min_confidence is not None
               else "Matterport's COCO evaluation setting")
        print(f"detections with a class score >= {threshold} count ({how})", file=sys.stderr)

    # load_model seeds the layers a weights file lacks (the MaskIoU head of Matterport's files),
    # so results do not depend on the process count; the head's state is said below instead.
    model = load_model(config, args.weights, device, progress=False)
    if not model.maskiou_head.trained and args.mask_score == "maskiou" and verbose:
        print(f"warning: {args.weights} has no trained MaskIoU head (Matterport's files have "
              "none), so the mask scores (class score x predicted IoU) use an untrained head; "
              "pass --mask-score cls to rank masks by the class score", file=sys.stderr)
    settings = {"weights": os.path.abspath(args.weights), "config": config_source,
                "device": str(device), "batch_size": args.batch_size or config.BATCH_SIZE,
                "precision": config.PRECISION}
    return dataset, model, settings


def print_warning(line):
    print(f"warning: {line}", file=sys.stderr)


def min_confidence(args):
    """The detection threshold of the evaluation: --min-confidence, else Matterport's."""
    if args.min_confidence is not None:
        return args.min_confidence
    return coco_eval.EVAL_MIN_CONFIDENCE


def _config(args, dataset):
    """The Config (mrcnn.cli.build_config; NUM_CLASSES and CLASS_NAMES default to the
    dataset's) and a phrase saying where it came from."""
    try:
        config = build_config(args.config, args.weights,
                              defaults={"NUM_CLASSES": dataset.num_classes,
                                        "CLASS_NAMES": dataset.class_names})
    except WeightsError as error:
        raise WeightsError(f"{error}; or pass --config to describe the model") from None
    if args.config:
        source = f"from {args.config}"
    elif is_hdf5(args.weights):
        # Matterport's COCO evaluation settings (its InferenceConfig in samples/coco/coco.py);
        # its DETECTION_MIN_CONFIDENCE 0 is every evaluation's (see min_confidence).
        config.update(IMAGES_PER_GPU=1)
        source = ("the .h5's backbone and class count with Matterport's COCO evaluation "
                  "settings, used for an .h5 without --config")
    else:
        source = f"the config saved in {args.weights}"
    if args.precision:
        config.update(PRECISION=args.precision)
    return config, source


def _warn_about_class_names(config, dataset):
    """The class order follows the category ids; names that differ hint at another label set."""
    if config.CLASS_NAMES is None:
        return
    differing = [(index, ours, theirs) for index, (ours, theirs)
                 in enumerate(zip(config.CLASS_NAMES, dataset.class_names)) if index > 0
                 and ours.strip().lower() != theirs.strip().lower()]
    if differing:
        shown = ", ".join(f"class {index}: {ours!r} vs {theirs!r}"
                          for index, ours, theirs in differing[:3])
        print(f"warning: {len(differing)} class names of the config differ from the dataset's "
              f"categories ({shown}); is the model trained on these labels?", file=sys.stderr)


if __name__ == "__main__":
    main()
