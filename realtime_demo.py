"""Mask Scoring R-CNN on a webcam or a video file: shown in a window and/or written to a video."""
import argparse
import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

import cv2
from tqdm import tqdm

from mrcnn.atomic import atomic_path
from mrcnn.cli import (CliError, add_model_arguments, add_precision_argument, build_config,
                       drawable, load_model, reports_errors, resolve_device)
from mrcnn.precision import fast_precision
from postprocess.visualize import draw_instances

WINDOW = "Mask Scoring R-CNN (q or Esc quits)"
QUIT_KEYS = (ord("q"), ord("Q"), 27)
FILE_QUEUE_FRAMES = 8          # read-ahead of a video file: enough to hide decoding, bounded
RESULT_QUEUE_FRAMES = 2        # detected frames waiting to be drawn: inference never waits long
FALLBACK_FPS = 30.0
FOURCC = "mp4v"
# How long quitting waits for the reader (a camera may not return) and for the forward pass
# under way (seconds on a CPU).
STOP_SECONDS = {"frame-reader": 5.0, "inference": 60.0}

DESCRIPTION = """\
Runs Mask Scoring R-CNN on a webcam or a video file and shows the frames annotated (masks,
boxes, labels, an FPS counter) in a window, and/or writes them to --output (mp4v) at the input's
size and frame rate.

Capture, inference and drawing/writing run on three threads at once, so frames come out at the
rate of inference alone. From a video file every frame is processed, in order, so the output
has the input's frame count. From a camera, when inference is slower than the camera, stale
frames are dropped rather than queued: the window and the output show the newest frame at each
step (the output then plays faster than real time).

Images are molded to --size (default: the input's longer side rounded up to a multiple of 64,
at most the config's IMAGE_MAX_DIM, so small videos are not upscaled), and the forward pass
runs in bf16 where the hardware has bfloat16, else exact (see --precision); both are printed at
the start.

Without a display (or with --no-display) it runs headless and needs --output. In the window,
q or Esc quits; Ctrl-C quits anywhere. On quitting, the output holds every frame processed."""

EPILOG = """\
examples:
  python realtime_demo.py                                  # webcam 0, window, COCO weights
  python realtime_demo.py --source 1 --output cam.mp4      # second camera, also recorded
  python realtime_demo.py --source clip.mp4 --output annotated.mp4 --no-display
  python realtime_demo.py --size 512 --precision exact     # smaller, Matterport's arithmetic"""


class FrameBuffer:
    """Hands frames from the reader thread to the inference loop.

    drop_stale=False: a FIFO of at most `capacity` frames; put() waits while it is full, so every
        frame arrives, in order (video files).
    drop_stale=True: put() never waits; a full buffer drops its oldest frame (counted in
        `dropped`), so get() returns the newest frames (cameras, with capacity 1).

    Either side may close() it: the reader at the end of the stream (get() still returns what is
    buffered, then None), the consumer when it quits (put() then returns False).
    """

    def __init__(self, capacity, drop_stale):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.drop_stale = drop_stale
        self.dropped = 0
        self._frames = deque()
        self._closed = False
        self._changed = threading.Condition()

    def put(self, frame):
        """Adds a frame; returns False (and drops it) once the buffer is closed."""
        with self._changed:
            while len(self._frames) >= self.capacity and not self._closed:
                if self.drop_stale:
                    self._frames.popleft()
                    self.dropped += 1
                else:
                    self._changed.wait()
            if self._closed:
                return False
            self._frames.append(frame)
            self._changed.notify_all()
            return True

    def get(self):
        """The next frame, waiting for one; None once the buffer is closed and empty."""
        with self._changed:
            while not self._frames and not self._closed:
                self._changed.wait()
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._changed.notify_all()
            return frame

    def close(self):
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class FpsMeter:
    """Frames per second over the last `window` frames."""

    def __init__(self, window=30, clock=time.perf_counter):
        self._times = deque(maxlen=window + 1)
        self._clock = clock

    def tick(self):
        """Records a frame; returns the current rate, or None before the second frame."""
        self._times.append(self._clock())
        elapsed = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / elapsed if elapsed > 0 else None


class RunStats(NamedTuple):
    frames: int          # frames processed (and written)
    dropped: int         # stale camera frames skipped
    seconds: float
    interrupted: bool    # stopped by Ctrl-C


class Source:
    """A camera or video file, with its first frame already read (to know its size).

    Built from an opened capture (cv2.VideoCapture or anything with read, get and release); use
    Source.open(spec) for a camera index or a video path.
    """

    def __init__(self, capture, name, is_camera):
        self.capture, self.name, self.is_camera = capture, name, is_camera
        ok, self.first_frame = capture.read()
        if not ok or self.first_frame is None:
            capture.release()
            raise CliError(f"cannot read {name}: it opens but delivers no frames")
        height, width = self.first_frame.shape[:2]
        self.size = (width, height)
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps_known = math.isfinite(fps) and 0 < fps <= 1000
        self.fps = fps if self.fps_known else FALLBACK_FPS
        count = 0 if is_camera else int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None

    @classmethod
    def open(cls, spec):
        """A camera for an index ('0', '1', ...), else a video file; CliError when it fails."""
        if spec.isdigit():
            name = f"camera {spec}"
            capture = cv2.VideoCapture(int(spec))
            if not capture.isOpened():
                raise CliError(f"cannot open {name}: there is no camera with that index, or it "
                               "is in use (cameras are numbered from 0)")
            return cls(capture, name, is_camera=True)
        path = Path(spec)
        if path.is_dir():
            raise CliError(f"--source {path} is a folder, not a video file")
        if not path.is_file():
            raise CliError(f"video file not found: {path} (for a camera, pass its index, e.g. "
                           "--source 0)")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise CliError(f"cannot read video {path}: OpenCV cannot open it (not a video, "
                           "corrupt, or encoded with a codec this OpenCV build lacks)")
        return cls(capture, f"video {path}", is_camera=False)

    def read_into(self, buffer, errors):
        """Reader thread body: every frame into `buffer` until the stream ends or it is closed."""
        try:
            frame = self.first_frame
            while frame is not None and buffer.put(frame):
                ok, frame = self.capture.read()
                frame = frame if ok else None
        except BaseException as error:  # handed to the main thread, which raises it
            errors.append(error)
        finally:
            buffer.close()

    def release(self):
        self.capture.release()


def build_parser():
    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="0", metavar="0|VIDEO",
                        help="camera index (0, 1, ...) or video file (default: 0)")
    add_model_arguments(parser)
    parser.add_argument("--output", metavar="OUT.mp4",
                        help="write the annotated frames to this video (mp4v; written under a "
                             "temporary name and renamed when complete)")
    display = parser.add_mutually_exclusive_group()
    display.add_argument("--display", dest="display", action="store_true", default=None,
                         help="show the window; an error when no window can be opened "
                              "(default: show it when a display is available)")
    display.add_argument("--no-display", dest="display", action="store_false",
                         help="run headless (needs --output)")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="draw only detections with a class score >= S")
    parser.add_argument("--size", type=int, metavar="S",
                        help="side of the molded (square) images, a multiple of 64: smaller is "
                             "faster (default: the input's longer side rounded up to a multiple "
                             "of 64, at most the config's IMAGE_MAX_DIM)")
    add_precision_argument(parser, default_help="bf16 where the hardware has bfloat16 (GPUs of "
                           "compute capability 8.0 and later, CPUs with AVX512-BF16 or AMX), "
                           "else exact")
    return parser


def molded_size(frame_size, config):
    """The default --size for frames of (width, height): their longer side rounded up to a
    multiple of 64, at most config.IMAGE_MAX_DIM."""
    longest = max(frame_size)
    return min(config.IMAGE_MAX_DIM, -(-longest // 64) * 64)


def apply_size(config, size):
    """Molds to size x size: IMAGE_MIN_DIM = IMAGE_MAX_DIM = size ('square' mode)."""
    if config.IMAGE_RESIZE_MODE != "square":
        raise CliError(f"--size needs IMAGE_RESIZE_MODE 'square'; the config has "
                       f"{config.IMAGE_RESIZE_MODE!r}")
    config.update(IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size)


def open_window(requested, has_output):
    """Opens the window and returns True, or returns False to run headless.

    requested: True (--display), False (--no-display) or None (when a display is available).
    """
    if requested is False:
        if not has_output:
            raise CliError("--no-display without --output: nothing would be shown or saved; "
                           "pass --output OUT.mp4")
        return False
    reason = window_unavailable()
    if reason is None:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        return True
    if requested:
        raise CliError(f"--display: cannot open a window: {reason}")
    if not has_output:
        raise CliError(f"no display to show the frames ({reason}) and no --output: nothing "
                       "would be shown or saved; pass --output OUT.mp4")
    print(f"no display ({reason}): running headless", file=sys.stderr)
    return False


def window_unavailable():
    """Why OpenCV cannot open a window here, or None when it can.

    OpenCV's Qt back end aborts the whole process when it cannot reach a display, so the window
    is tried in a child process first.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return "neither $DISPLAY nor $WAYLAND_DISPLAY is set"
    probe = "import cv2; cv2.namedWindow('probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               timeout=60)
    except subprocess.TimeoutExpired:
        return "opening a test window did not finish within 60 s"
    if child.returncode != 0:
        # Qt says why in its first line, an OpenCV exception in the last.
        lines = [line.strip() for line in child.stderr.splitlines() if line.strip()]
        said = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:])) or "no message"
        return f"OpenCV could not open a window ({said})"
    return None


@contextlib.contextmanager
def video_writer(path, fps, size):
    """A cv2.VideoWriter to a temporary name beside `path`, renamed to `path` on success.

    Leaving the block normally (the end of the video, q, or a Ctrl-C the loop caught) finalises
    the file; an exception removes it.
    """
    path = Path(path)
    with atomic_path(path, suffix=f".tmp{path.suffix}") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
        if not writer.isOpened():
            raise CliError(f"cannot write video {path}: OpenCV cannot encode {FOURCC} into a "
                           f"'{path.suffix}' file (use .mp4)")
        try:
            yield writer
        finally:
            writer.release()


def draw_fps(frame, fps):
    """Writes 'N.N FPS' in the top-left corner of a BGR frame, in place."""
    text = "-- FPS" if fps is None else f"{fps:.1f} FPS"
    scale = max(0.4, max(frame.shape[:2]) / 1200)
    thickness = max(1, int(round(scale * 1.5)))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, int(round(4 * scale)))
    cv2.rectangle(frame, (0, 0), (width + 2 * pad, height + baseline + 2 * pad), (0, 0, 0),
                  cv2.FILLED)
    cv2.putText(frame, text, (pad, pad + height), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), thickness, cv2.LINE_AA)


def run(model, source, class_names, writer=None, show=False, min_score=None):
    """Annotates the frames of an opened Source until it ends, q/Esc, or Ctrl-C.

    A reader thread decodes frames, an inference thread detects, and this thread draws, writes
    and shows, all at the same time. Returns RunStats.
    """
    frames = FrameBuffer(1 if source.is_camera else FILE_QUEUE_FRAMES,
                         drop_stale=source.is_camera)
    # Backpressure instead of dropping: every detected frame is drawn, and a full queue holds
    # inference back only when drawing is the slower stage.
    detected = FrameBuffer(RESULT_QUEUE_FRAMES, drop_stale=False)
    errors = []
    threads = [threading.Thread(target=source.read_into, args=(frames, errors), daemon=True,
                                name="frame-reader"),
               threading.Thread(target=detect_frames, args=(model, frames, detected, errors),
                                daemon=True, name="inference")]
    meter = FpsMeter()
    processed, interrupted, started = 0, False, time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        with tqdm(total=source.frame_count, unit="frame", file=sys.stderr, leave=False,
                  disable=None) as bar:
            while (item := detected.get()) is not None:
                image, result = item
                # Colour by class: the instance order changes from frame to frame.
                annotated = draw_instances(image, result, class_names, min_score=min_score,
                                           color_by="class")
                annotated = cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR)
                draw_fps(annotated, meter.tick())
                if writer is not None:
                    writer.write(annotated)
                processed += 1
                bar.update()
                if show and quit_requested(annotated):
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        frames.close()
        detected.close()
        stop_threads(threads, source.name)
    interrupted |= any(isinstance(error, KeyboardInterrupt) for error in errors)
    failures = [error for error in errors if not isinstance(error, KeyboardInterrupt)]
    if failures:
        raise failures[0]
    return RunStats(processed, frames.dropped, time.perf_counter() - started, interrupted)


def detect_frames(model, frames, detected, errors):
    """Inference thread body: (RGB image, result) of every frame into `detected`, in order."""
    try:
        while (frame := frames.get()) is not None:
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if not detected.put((image, drawable(model.detect([image])[0], model))):
                break
    except BaseException as error:  # handed to the main thread, which raises it
        errors.append(error)
    finally:
        detected.close()
        frames.close()


def stop_threads(threads, source_name):
    """Joins the reader and inference threads (their buffers are closed); says so when one
    does not stop in time (a camera that does not return, a forward pass still running)."""
    for thread in threads:
        thread.join(STOP_SECONDS[thread.name])
        if thread.is_alive():
            what = (f"{source_name} did not return a frame" if thread.name == "frame-reader"
                    else "the forward pass did not finish")
            print(f"note: {what} within {STOP_SECONDS[thread.name]:g} s of quitting; its "
                  "thread is left behind", file=sys.stderr)


def quit_requested(frame):
    """Shows the frame; True when q/Esc was pressed or the window was closed."""
    cv2.imshow(WINDOW, frame)
    key = cv2.waitKey(1) & 0xFF
    return key in QUIT_KEYS or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1


def describe_run(config, source, device, size, precision):
    """Sets the molded size and the precision in `config` and says which are used, and why."""
    if size is not None:
        apply_size(config, size)
        size_reason = "--size"
    elif config.IMAGE_RESIZE_MODE == "square":
        apply_size(config, molded_size(source.size, config))
        size_reason = f"the input is {source.size[0]}x{source.size[1]}; --size to change"
    else:
        size_reason = f"IMAGE_RESIZE_MODE {config.IMAGE_RESIZE_MODE!r}"
    precision_reason = "--precision"
    if precision is None:
        precision, why = fast_precision(device)
        precision_reason = f"{why}; --precision exact gives Matterport's numbers"
    config.update(PRECISION=precision)
    side = config.IMAGE_MAX_DIM if config.IMAGE_RESIZE_MODE == "square" else "input-dependent"
    print(f"molded size {side} ({size_reason}); precision {precision} ({precision_reason})",
          file=sys.stderr)


@reports_errors
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        parser.error(f"--min-score must be in [0, 1], got {args.min_score}")
    if args.output and os.path.realpath(args.output) == os.path.realpath(args.source):
        parser.error("--output must differ from --source (the input video would be replaced)")
    if args.size is not None and (args.size < 64 or args.size % 64):
        parser.error(f"--size must be a positive multiple of 64, got {args.size}")
    device = resolve_device(args.device)
    config = build_config(args.config, args.weights)
    source = Source.open(args.source)
    try:
        describe_run(config, source, device, args.size, args.precision)
        if not source.fps_known:
            print(f"note: {source.name} does not report its frame rate; the output is written "
                  f"at {FALLBACK_FPS:g} fps", file=sys.stderr)
        show = open_window(args.display, args.output is not None)
        try:
            model = load_model(config, args.weights, device)
            writing = (video_writer(args.output, source.fps, source.size) if args.output
                       else contextlib.nullcontext())
            with writing as writer:
                stats = run(model, source, config.class_names(), writer, show, args.min_score)
        finally:
            if show:
                cv2.destroyAllWindows()
    finally:
        source.release()
    rate = stats.frames / stats.seconds if stats.seconds > 0 else 0.0
    print(f"{source.name}: {stats.frames} frames in {stats.seconds:.1f} s ({rate:.2f} FPS)"
          + (f", {stats.dropped} stale frames dropped" if source.is_camera else "")
          + (f"; wrote {args.output}" if args.output else ""))
    if stats.interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
