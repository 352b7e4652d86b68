"""Writes a tiny balloon-like dataset in the layout of Matterport's balloon sample.

    python samples/balloon_like/make_dataset.py --out data/balloons --train 8 --val 2

DIR/train/ and DIR/val/ each hold PNG images of coloured balloons (ellipses on strings) against
a sky, and via_region_data.json: the VGG Image Annotator (VIA 1.x) export that Matterport's
balloon.py reads, one polygon per balloon. The images are small (default 128x128) so that the
sample trains in seconds on a CPU; the content is a function of --seed.
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from mrcnn.atomic import atomic_write


def balloon_scene(rng, size):
    """(image [size, size, 3] uint8 RGB, [polygon [K, 2] int (x, y)] one per balloon)."""
    rows = np.linspace(0, 1, size)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 225, 250])
    noise = rng.integers(-6, 7, (size, size, 3))
    image = np.clip(sky + noise, 0, 255).astype(np.uint8)
    polygons = []
    for _ in range(int(rng.integers(1, 4))):
        radius_x = int(rng.integers(size // 12, size // 6))
        radius_y = int(radius_x * rng.uniform(1.1, 1.4))
        center = (int(rng.integers(radius_x, size - radius_x)),
                  int(rng.integers(radius_y, size - radius_y - size // 8)))
        polygon = cv2.ellipse2Poly(center, (radius_x, radius_y), 0, 0, 360, 15)
        colour = [int(c) for c in rng.integers(0, 256, 3)]
        colour[int(rng.integers(3))] = 230               # saturated, unlike the sky
        string_end = (center[0] + int(rng.integers(-6, 7)),
                      min(size - 1, center[1] + radius_y + size // 8))
        cv2.line(image, (center[0], center[1] + radius_y), string_end, (60, 60, 60), 1)
        cv2.fillPoly(image, [polygon], colour)
        polygons.append(polygon)
    return image, polygons


def via_entry(filename, size_bytes, polygons):
    """One image of a VIA 1.x region-data export."""
    regions = {str(i): {"shape_attributes": {"name": "polygon",
                                             "all_points_x": polygon[:, 0].tolist(),
                                             "all_points_y": polygon[:, 1].tolist()},
                        "region_attributes": {}}
               for i, polygon in enumerate(polygons)}
    return {"fileref": "", "size": size_bytes, "filename": filename, "base64_img_data": "",
            "file_attributes": {}, "regions": regions}


def write_split(folder, count, rng, size):
    folder.mkdir(parents=True, exist_ok=True)
    annotations = {}
    for index in range(count):
        image, polygons = balloon_scene(rng, size)
        filename = f"balloon_{index:03d}.png"
        ok, encoded = cv2.imencode(".png", image[:, :, ::-1])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {filename}")
        with atomic_write(folder / filename) as f:
            f.write(encoded.tobytes())
        annotations[f"{filename}{len(encoded)}"] = via_entry(filename, len(encoded), polygons)
    with atomic_write(folder / "via_region_data.json", "w") as f:
        json.dump(annotations, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--train", type=int, default=8, help="training images (default 8)")
    parser.add_argument("--val", type=int, default=2, help="validation images (default 2)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default "
                                                              "128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if min(args.train, args.val) < 1 or args.size < 64:
        parser.error("--train and --val must be at least 1 and --size at least 64")
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.train), ("val", args.val)):
        write_split(Path(args.out) / split, count, rng, args.size)
    print(f"wrote {args.train} training and {args.val} validation images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
