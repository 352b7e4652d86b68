"""python -m mrcnn.export: writes the whole detector as an ONNX model or an AOTInductor .pt2."""
import argparse
import sys
import time

from mrcnn.cli import (CONFIG_HELP, WEIGHTS_HELP, CliError, build_config, load_model,
                       reports_errors, resolve_device)
from mrcnn.export.exporter import (FORMATS, export_model, format_of, molded_image_hw,
                                   require_onnx_exporter)

DESCRIPTION = """\
Exports Mask Scoring R-CNN as one graph, a drop-in for Matterport's Keras inference graph.
Inputs: input_image [B, H, W, 3] (molded images, NHWC, as mold_inputs makes them),
input_image_meta [B, 12 + NUM_CLASSES], input_anchors [B, A, 4] (normalised). Outputs:
detections [B, DETECTION_MAX_INSTANCES, 6] (y1, x1, y2, x2 normalised, class id, score;
zero-padded), mrcnn_mask [B, DETECTION_MAX_INSTANCES, 28, 28, NUM_CLASSES] and mask_iou
[B, DETECTION_MAX_INSTANCES, NUM_CLASSES] (the MaskIoU head's output). Backbone, RPN, proposals,
RoI pooling, heads, the detection layer and the MaskIoU head are all inside; molding the images
and pasting the masks stay outside: mrcnn.export.ExportedModel(OUT).detect(images) does both, as
detect() does. The file carries the model's config.

onnx: standard ONNX operators only (NonMaxSuppression, TopK, Gather...); runs in onnxruntime.
pt2: torch.export compiled by AOTInductor; loads with torch._inductor.aoti_load_package once
the mrcnn._C operator library is loaded (import mrcnn.ops, or torch.ops.load_library).

The input shapes are fixed: --batch images of the molded size. Tracing takes a minute or two;
AOTInductor compiles C++ for a few minutes on a CPU."""

EPILOG = """\
examples:
  python -m mrcnn.export --weights shapes.pth model.onnx
  python -m mrcnn.export --weights mask_rcnn_coco.h5 --format pt2 --batch 2 coco.pt2
  python -m mrcnn.export --weights model.h5 --config config.json --image-size 512 768 model.onnx"""


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m mrcnn.export", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT", help="the file to write, ending in .onnx or .pt2")
    parser.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    parser.add_argument("--config", metavar="C", help=CONFIG_HELP)
    parser.add_argument("--format", choices=FORMATS,
                        help="onnx or pt2 (default: from OUT's extension)")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="images per run, fixed in the exported graph (default: 1)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="molded image size, multiples of 64 (default: the config's "
                             "IMAGE_SHAPE, in IMAGE_RESIZE_MODE 'square'; needed for the "
                             "other modes)")
    parser.add_argument("--device", metavar="DEVICE",
                        help="cpu or cuda[:N], the device a .pt2 is compiled for (default: cpu; "
                             "an ONNX graph runs anywhere)")
    return parser


@reports_errors
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        export_format = format_of(args.out, args.format)
        if args.batch < 1:
            raise ValueError(f"--batch must be at least 1, got {args.batch}")
    except ValueError as error:
        parser.error(str(error))
    device = resolve_device(args.device or "cpu")
    if export_format == "onnx" and device.type != "cpu":
        raise CliError("an ONNX graph is exported on the CPU and runs on any device; "
                       "leave out --device")
    start = time.perf_counter()

    def log(line):
        print(f"[{time.perf_counter() - start:4.0f} s] {line}", file=sys.stderr)

    config = build_config(args.config, args.weights)
    try:
        image_hw = molded_image_hw(config, args.image_size)
        if export_format == "onnx":
            require_onnx_exporter()
    except (ValueError, ImportError) as error:
        raise CliError(str(error)) from None
    model = load_model(config, args.weights, device)
    path = export_model(model, args.out, export_format, batch_size=args.batch,
                        image_shape=image_hw, log=log)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.0f} MiB) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
