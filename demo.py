"""Runs Mask Scoring R-CNN on images and writes them annotated (and the detections as JSON)."""
import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mrcnn.atomic import atomic_write
from mrcnn.cli import (CliError, add_max_pixels_argument, add_model_arguments,
                       add_precision_argument, build_config, check_no_overwrite, drawable,
                       error_message, load_model, make_out_dir, reports_errors, resolve_device)
from mrcnn.config import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from preprocess.images import IMAGE_ERRORS, check_resizable, load_image
from postprocess.visualize import draw_instances, result_to_coco_json, write_png

SAMPLES = Path(__file__).resolve().parent / "samples"
# What a folder or a glob is read for; a file named on the command line is tried whatever its
# extension.
IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff",
                              ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"))
GLOB_CHARACTERS = frozenset("*?[")

DESCRIPTION = """\
Detects objects in images with Mask Scoring R-CNN and writes each image annotated (masks,
boxes, labels 'class score (mask score)') as a PNG of the input's size into --out, and with
--json its detections as a JSON list of COCO-style results: bbox [x, y, w, h] in image pixels,
category_id (COCO's category id for a COCO model, else the class id), category_name, score
(class score), mask_score, segmentation (compressed RLE).

Inputs are image files, folders (their images, sorted, not recursive) and glob patterns
(quote them, e.g. 'photos/**/*.jpg'); with none, the sample images shipped in samples/.
Output files are named after the inputs (photo.jpg -> photo.png, photo.json); inputs sharing a
name get -2, -3, ... in input order. One line per image says what was found and how long it
took.

An image that cannot be processed is reported, skipped, and the others go on; the exit status is
then 1. That is an unreadable or truncated file, one of more than --max-pixels pixels (told from
its header before decoding, against decompression bombs), or one the resize mode would scale to
nothing (such as 2x100000 pixels)."""

EPILOG = """\
examples:
  python demo.py                                   # the samples, COCO weights (downloaded once)
  python demo.py photos/ 'more/*.png' --json --min-score 0.8 --out results
  python demo.py img.jpg --weights mask_rcnn_coco.h5 --device cpu
  python demo.py img.jpg --weights shapes.pth      # a checkpoint carries its own config"""


def build_parser():
    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", metavar="IMAGES",
                        help="image files, folders or glob patterns (default: samples/)")
    add_model_arguments(parser)
    add_precision_argument(parser)
    add_max_pixels_argument(parser)
    parser.add_argument("--out", default="out", metavar="DIR",
                        help="folder for the annotated images and JSON files, created if needed "
                             "(default: out)")
    parser.add_argument("--json", action="store_true",
                        help="also write each image's detections as <name>.json")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="keep only detections with a class score >= S, in the images and "
                             "the JSON (default: all that the model's DETECTION_MIN_CONFIDENCE "
                             "lets through)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B",
                        help="images per forward pass (default 1; more can be faster on a GPU; "
                             "the time printed is then the batch's share per image)")
    return parser


def collect_images(specs):
    """Image paths from files, folders and glob patterns, and the problems found on the way.

    Args:
        specs: command-line inputs.
    Returns:
        (paths, problems): paths in input order (folders and globs sorted, image extensions
        only), each file once; problems as 'spec: reason' strings.
    """
    paths, problems, seen = [], [], set()
    for spec in specs:
        if GLOB_CHARACTERS & set(spec) and not os.path.exists(spec):
            found = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
            found = [p for p in found if p.is_file() and is_image_name(p)]
            if not found:
                problems.append(f"{spec}: the pattern matches no image files")
        elif os.path.isdir(spec):
            found = sorted(p for p in Path(spec).iterdir() if p.is_file() and is_image_name(p))
            if not found:
                problems.append(f"{spec}: the folder holds no image files "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif os.path.exists(spec):
            found = [Path(spec)]
        else:
            problems.append(f"{spec}: no such file or folder")
            found = []
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, problems


def is_image_name(path):
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def output_stems(paths):
    """One distinct output name per input: its stem, then stem-2, stem-3, ... for repeats."""
    stems, taken = [], set()
    for path in paths:
        stem, n = path.stem, 1
        while stem.lower() in taken:  # case-insensitive file systems would merge 'A' and 'a'
            n += 1
            stem = f"{path.stem}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def select_instances(result, min_score=None):
    """The instances of a detection result whose class score is >= min_score (None: all)."""
    if min_score is None:
        return result
    keep = np.flatnonzero(result["scores"] >= min_score)
    selected = {key: value[keep] for key, value in result.items() if key != "masks"}
    selected["masks"] = result["masks"][:, :, keep]
    return selected


def summary(result, class_names):
    """'3 instances (2 person, 1 dog)', classes by count then name."""
    count = len(result["class_ids"])
    noun = "instance" if count == 1 else "instances"
    if not count:
        return f"0 {noun}"
    counts = Counter(class_names[c] for c in result["class_ids"].tolist())
    parts = ", ".join(f"{n} {name}" for name, n in
                      sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return f"{count} {noun} ({parts})"


def write_outputs(image, result, out_dir, stem, class_names, write_json, drawn=None):
    """Writes <stem>.png (annotated, BGR for OpenCV) and optionally <stem>.json, atomically.

    `drawn` is the result to draw when it differs from the one written to the JSON (see
    mrcnn.cli.drawable). Returns the paths written.
    """
    written = [out_dir / f"{stem}.png"]
    write_png(written[0], draw_instances(image, result if drawn is None else drawn, class_names))
    if write_json:
        written.append(out_dir / f"{stem}.json")
        with atomic_write(written[1], "w") as f:
            json.dump(result_to_coco_json(result, class_names=class_names,
                                          category_ids=category_ids(class_names)), f)
    return written


def category_ids(class_names):
    """{class id: COCO category id} for a model of COCO's classes; None for other models, whose
    JSON category_id is the class id."""
    if list(class_names) != COCO_CLASS_NAMES:
        return None
    return dict(enumerate(COCO_CATEGORY_IDS, start=1))


def check_arguments(args, parser):
    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        parser.error(f"--min-score must be in [0, 1], got {args.min_score}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")


@reports_errors
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(args, parser)
    paths, problems = collect_images(args.images or [str(SAMPLES)])
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        raise CliError("no images to process")
    out_dir = make_out_dir(args.out)
    stems = output_stems(paths)
    check_no_overwrite(out_dir, [stem + suffix for stem in stems for suffix in (".png", ".json")],
                       paths)
    device = resolve_device(args.device)
    config = build_config(args.config, args.weights)
    if args.precision:
        config.update(PRECISION=args.precision)
    model = load_model(config, args.weights, device)
    class_names = config.class_names()

    failed = len(problems)
    with tqdm(total=len(paths), unit="image", file=sys.stderr, leave=False, disable=None) as bar:
        for start in range(0, len(paths), args.batch_size):
            started = time.perf_counter()
            loaded = []
            for index in range(start, min(start + args.batch_size, len(paths))):
                try:
                    image = load_image(paths[index], max_pixels=args.max_pixels)
                    check_resizable(image.shape, config, paths[index])
                    loaded.append((index, image))
                except IMAGE_ERRORS as error:
                    failed += 1
                    bar.write(f"error: skipped {error_message(error)}", file=sys.stderr)
                    bar.update()
            if not loaded:
                continue
            results = model.detect([image for _, image in loaded], batch_size=len(loaded))
            shared = (time.perf_counter() - started) / len(loaded)
            for (index, image), result in zip(loaded, results):
                started = time.perf_counter()
                result = select_instances(result, args.min_score)
                try:
                    written = write_outputs(image, result, out_dir, stems[index], class_names,
                                            args.json, drawn=drawable(result, model))
                except OSError as error:
                    raise CliError(f"cannot write the results of {paths[index]} into {out_dir}: "
                                   f"{error_message(error)}") from None
                seconds = shared + time.perf_counter() - started
                bar.write(f"{paths[index]}: {summary(result, class_names)} in {seconds:.2f} s "
                          f"-> {', '.join(map(str, written))}", file=sys.stdout)
                bar.update()
    if failed:
        print(f"error: skipped {failed} input(s) (see above); the other images were written",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
