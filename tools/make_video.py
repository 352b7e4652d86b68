"""Writes a synthetic test video (mp4v): coloured shapes moving over a textured background.

    python tools/make_video.py clip.mp4 --size 1280x720 --frames 300 --fps 30
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn.atomic import atomic_path  # noqa: E402


def frames(width, height, count, seed=0):
    """`count` BGR frames of width x height, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                                  (0, 0), sigmaX=max(width, height) / 100)
    shapes = [(rng.uniform(0, 1, 2), rng.uniform(-0.01, 0.01, 2), rng.uniform(0.05, 0.2),
               tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(6)]
    for index in range(count):
        frame = background.copy()
        for i, (start, velocity, radius, colour) in enumerate(shapes):
            centre = np.abs((start + index * velocity + 1) % 2 - 1)  # bounce off the borders
            x, y = int(centre[0] * width), int(centre[1] * height)
            r = int(radius * min(width, height))
            if i % 2:
                cv2.circle(frame, (x, y), r, colour, cv2.FILLED)
            else:
                cv2.rectangle(frame, (x - r, y - r // 2), (x + r, y + r // 2), colour, cv2.FILLED)
        yield frame


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the .mp4 to write (atomically)")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--frames", type=int, default=300, help="frame count (default 300)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, e.g. 1280x720, got {args.size!r}")
    if min(width, height, args.frames) < 1 or args.fps <= 0:
        parser.error("--size, --frames and --fps must be positive")
    output = Path(args.output)
    with atomic_path(output, suffix=f".tmp{output.suffix}") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), args.fps,
                                 (width, height))
        if not writer.isOpened():
            sys.exit(f"error: OpenCV cannot write {output} (use .mp4)")
        for frame in frames(width, height, args.frames):
            writer.write(frame)
        writer.release()
    print(f"wrote {output}: {args.frames} frames of {width}x{height} at {args.fps:g} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
