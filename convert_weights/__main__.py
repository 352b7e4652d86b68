"""python -m convert_weights IN.h5 OUT.pth: Matterport Keras weights -> mrcnn checkpoint."""
import argparse
import sys

from convert_weights.reader import convert_file
from mrcnn.cli import error_message
from mrcnn.config import BACKBONES
from mrcnn.weights import WeightsError

DESCRIPTION = """\
Converts a Matterport Mask R-CNN Keras weights file (.h5, e.g. mask_rcnn_coco.h5) into an mrcnn
checkpoint (.pth) that MaskScoringRCNN.load_weights reads, together with the model's config.

NaN or infinite weights are an error naming the weight (--allow-nonfinite converts them), and so
is a file that links to other files (external links or datasets). Every file error is one line
naming the file.

The model is built from --config, or from Matterport's default Config with --backbone and
--num-classes; what is not given is read from the file (the number of res4 blocks tells the
backbone, the mrcnn_class_logits kernel the number of classes). The conversion is strict: every
layer of the model must be in the file with the right shape and every weight of the file must be
used, else nothing is written and the error says what does not fit. The MaskIoU head of Mask
Scoring R-CNN is not in Matterport's files; it keeps its initialisation (train it before using
its scores). OUT.pth is written atomically: it appears complete or not at all."""

EPILOG = """\
examples:
  python -m convert_weights mask_rcnn_coco.h5 mask_rcnn_coco.pth
  python -m convert_weights mask_rcnn_coco.h5 coco.pth --backbone resnet101 --num-classes 81
  python -m convert_weights shapes.h5 shapes.pth --config shapes_config.json"""


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m convert_weights", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN.h5", help="Matterport Keras weights file")
    parser.add_argument("output", metavar="OUT.pth", help="mrcnn checkpoint to write")
    parser.add_argument("--config", metavar="CONFIG.json",
                        help="JSON object of Config fields (any subset; the rest keep "
                             "Matterport's defaults), e.g. a config.json written by Config.to_json")
    parser.add_argument("--backbone", choices=BACKBONES,
                        help="overrides BACKBONE (default: the config's, else read from the file)")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="overrides NUM_CLASSES, background included, e.g. 81 for COCO "
                             "(default: the config's, else read from the file)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="convert weights that hold NaN or infinite values (by default an "
                             "error naming the first such weight)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        print(convert_file(args.input, args.output, args.config, args.backbone, args.num_classes,
                           allow_nonfinite=args.allow_nonfinite))
    except (WeightsError, OSError, KeyError, ValueError) as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
