"""realtime_demo.py: the frame buffer, the FPS meter, source/display/output errors, and a headless
run on a short video with the Keras reference weights."""
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

import realtime_demo
from mrcnn.config import CocoConfig
from mrcnn.precision import fast_precision
from realtime_demo import FpsMeter, FrameBuffer


def write_video(path, frames, fps):
    """Writes BGR frames with OpenCV (mp4v) and returns the path."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_video(path):
    """(frames, fps) of a video, counted by decoding every frame."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"cannot open {path}"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def moving_square_frames(count, height, width):
    """Frames a codec cannot confuse: a bright square moving over a dark background."""
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), 40, dtype=np.uint8)
        y, x = 4 + 6 * i, 8 + 5 * i
        frame[y:y + 24, x:x + 24] = (60, 180, 230)
        frames.append(frame)
    return frames


def test_file_buffer_delivers_every_frame_in_order_through_a_small_queue():
    buffer = FrameBuffer(capacity=2, drop_stale=False)
    received = []

    def consume():
        while (frame := buffer.get()) is not None:
            received.append(frame)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert all(buffer.put(i) for i in range(50))   # blocks whenever 2 frames wait
    buffer.close()
    consumer.join(timeout=10)
    assert received == list(range(50)) and buffer.dropped == 0


def test_camera_buffer_keeps_only_the_newest_frame():
    buffer = FrameBuffer(capacity=1, drop_stale=True)
    for i in range(5):
        assert buffer.put(i)      # never waits, even though nobody reads
    assert buffer.get() == 4 and buffer.dropped == 4
    buffer.put(5)
    buffer.close()
    assert buffer.get() == 5      # what was buffered is still handed out after close
    assert buffer.get() is None


def test_closing_releases_a_waiting_reader_and_refuses_frames():
    buffer = FrameBuffer(capacity=1, drop_stale=False)
    buffer.put("a")
    results = []
    reader = threading.Thread(target=lambda: results.append(buffer.put("b")))
    reader.start()                # waits: the buffer is full
    reader.join(timeout=0.2)
    assert reader.is_alive()
    buffer.close()                # the consumer quits
    reader.join(timeout=10)
    assert results == [False] and not reader.is_alive()
    with pytest.raises(ValueError):
        FrameBuffer(capacity=0, drop_stale=True)


def test_fps_meter_over_a_sliding_window():
    times = iter([0.0, 0.5, 1.0, 1.5, 3.5])
    meter = FpsMeter(window=2, clock=lambda: next(times))
    assert meter.tick() is None                  # one frame: no rate yet
    assert meter.tick() == pytest.approx(2.0)    # 1 frame in 0.5 s
    assert meter.tick() == pytest.approx(2.0)    # 2 frames in 1 s
    assert meter.tick() == pytest.approx(2.0)    # window of 2: times 0.5 .. 1.5
    assert meter.tick() == pytest.approx(2 / 2.5)


def test_missing_camera_is_a_clear_error():
    with pytest.raises(realtime_demo.CliError, match="cannot open camera 97: there is no camera"):
        realtime_demo.Source.open("97")


def test_missing_and_unreadable_videos_are_clear_errors(tmp_path):
    with pytest.raises(realtime_demo.CliError, match="video file not found"):
        realtime_demo.Source.open(str(tmp_path / "absent.mp4"))
    with pytest.raises(realtime_demo.CliError, match="is a folder"):
        realtime_demo.Source.open(str(tmp_path))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 64)
    with pytest.raises(realtime_demo.CliError, match=f"cannot read video {garbage}"):
        realtime_demo.Source.open(str(garbage))


def test_video_source_size_fps_and_reader(tmp_path):
    frames = moving_square_frames(4, 48, 80)
    source = realtime_demo.Source.open(str(write_video(tmp_path / "in.mp4", frames, fps=12)))
    assert (source.size, source.fps, source.fps_known, source.is_camera) == ((80, 48), 12, True,
                                                                            False)
    buffer, errors = FrameBuffer(capacity=10, drop_stale=False), []
    source.read_into(buffer, errors)
    source.release()
    read = []
    while (frame := buffer.get()) is not None:
        read.append(frame)
    assert errors == [] and len(read) == 4
    for got, written in zip(read, frames):   # lossy codec: close, not equal
        assert np.abs(got.astype(int) - written).mean() < 4


class FakeCapture:
    """A capture of `count` 8x8 frames whose pixels hold the frame index, one every `period` s."""

    def __init__(self, count, period=0.0, fps=25.0):
        self.count, self.period, self.fps = count, period, fps
        self.next = 0
        self.released = False

    def read(self):
        if self.next >= self.count:
            return False, None
        time.sleep(self.period)
        self.next += 1
        return True, np.full((8, 8, 3), self.next - 1, dtype=np.uint8)

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: self.count}[prop]

    def release(self):
        self.released = True


class FakeModel:
    """Records the index of every frame it is given; finds nothing; may stop with Ctrl-C."""

    maskiou_head = types.SimpleNamespace(trained=True)

    def __init__(self, seconds=0.0, interrupt_at=None):
        self.seconds, self.interrupt_at = seconds, interrupt_at
        self.seen = []

    def detect(self, images):
        if len(self.seen) == self.interrupt_at:
            raise KeyboardInterrupt
        self.seen.append(int(images[0][0, 0, 0]))
        time.sleep(self.seconds)
        height, width = images[0].shape[:2]
        return [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                 "scores": np.zeros(0, np.float32), "mask_scores": np.zeros(0, np.float32),
                 "masks": np.zeros((height, width, 0), bool)}]


def reader_threads():
    return [t for t in threading.enumerate() if t.name == "frame-reader"]


def test_run_on_a_file_processes_every_frame_in_order():
    source = realtime_demo.Source(FakeCapture(40), "fake video", is_camera=False)
    model = FakeModel(seconds=0.002)     # slower than reading: the queue fills up
    stats = realtime_demo.run(model, source, ["BG"])
    assert model.seen == list(range(40))
    assert (stats.frames, stats.dropped, stats.interrupted) == (40, 0, False)
    assert reader_threads() == []


def test_run_on_a_camera_drops_stale_frames():
    source = realtime_demo.Source(FakeCapture(100, period=0.001), "fake camera", is_camera=True)
    model = FakeModel(seconds=0.02)      # 20x slower than the camera
    stats = realtime_demo.run(model, source, ["BG"])
    assert stats.frames == len(model.seen) and stats.dropped > 0
    assert stats.frames + stats.dropped == 100          # every frame processed or dropped
    assert model.seen == sorted(set(model.seen))        # in order, none twice
    assert model.seen[-1] == 99                         # the newest frame is not lost


def test_drawing_runs_while_the_next_frame_is_detected(monkeypatch):
    """Frame 0 is drawn only once frame 1's inference has begun: a loop that detects and draws
    in turn would wait here forever (the wait gives up after 10 s and the test fails)."""
    second_started, waits, threads = threading.Event(), [], set()

    class SecondSignalingModel(FakeModel):
        def detect(self, images):
            threads.add(threading.current_thread().name)
            if len(self.seen) == 1:
                second_started.set()
            return super().detect(images)

    def draw(image, result, class_names, **options):
        if image[0, 0, 0] == 0:
            waits.append(second_started.wait(timeout=10))
        return image

    monkeypatch.setattr(realtime_demo, "draw_instances", draw)
    source = realtime_demo.Source(FakeCapture(6), "fake video", is_camera=False)
    model = SecondSignalingModel()
    stats = realtime_demo.run(model, source, ["BG"])
    assert waits == [True] and threads == {"inference"}
    assert model.seen == list(range(6)) and stats.frames == 6
    assert [t for t in threading.enumerate() if t.name in ("inference", "frame-reader")] == []


def test_an_inference_error_stops_the_run_and_is_raised():
    class FailingModel(FakeModel):
        def detect(self, images):
            if len(self.seen) == 2:
                raise RuntimeError("CUDA out of memory")
            return super().detect(images)

    source = realtime_demo.Source(FakeCapture(30), "fake video", is_camera=False)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        realtime_demo.run(FailingModel(), source, ["BG"])
    assert reader_threads() == []


def test_ctrl_c_keeps_the_frames_written_so_far(tmp_path):
    source = realtime_demo.Source(FakeCapture(30), "fake video", is_camera=False)
    out = tmp_path / "out.mp4"
    with realtime_demo.video_writer(out, source.fps, source.size) as writer:
        stats = realtime_demo.run(FakeModel(interrupt_at=3), source, ["BG"], writer)
    assert (stats.frames, stats.interrupted) == (3, True)
    assert reader_threads() == []                       # the reader was stopped and joined
    frames, fps = read_video(out)
    assert len(frames) == 3 and fps == 25.0 and frames[0].shape == (8, 8, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


@pytest.mark.parametrize("frame_size, given, expected", [
    ((320, 240), None, 320),      # a small clip is not upscaled to IMAGE_MAX_DIM
    ((1280, 720), None, 1024),    # a large one is molded to IMAGE_MAX_DIM at most
    ((100, 30), None, 128),       # rounded up to a multiple of 64
    ((1280, 720), 512, 512),
])
def test_molded_size_and_precision_are_chosen_and_said(frame_size, given, expected, capsys):
    config = CocoConfig()
    source = types.SimpleNamespace(size=frame_size)
    realtime_demo.describe_run(config, source, "cpu", given, None)
    assert config.IMAGE_MIN_DIM == config.IMAGE_MAX_DIM == expected
    precision, reason = fast_precision("cpu")
    assert config.PRECISION == precision
    said = capsys.readouterr().err
    assert f"molded size {expected} " in said and f"precision {precision} ({reason}" in said
    realtime_demo.describe_run(config, source, "cpu", given, "exact")
    assert config.PRECISION == "exact" and "precision exact (--precision)" in capsys.readouterr().err


def test_size_needs_square_mode_and_a_multiple_of_64(capsys):
    config = CocoConfig(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=768)
    with pytest.raises(realtime_demo.CliError, match="--size needs IMAGE_RESIZE_MODE 'square'"):
        realtime_demo.describe_run(config, types.SimpleNamespace(size=(64, 64)), "cpu", 128,
                                   None)
    with pytest.raises(SystemExit) as info:
        realtime_demo.main(["--size", "100", "--source", "clip.mp4"])
    assert info.value.code == 2 and "--size must be a positive multiple of 64, got 100" in (
        capsys.readouterr().err)


def test_output_must_not_replace_the_source(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    with pytest.raises(SystemExit) as info:
        realtime_demo.main(["--source", str(video), "--output", str(video)])
    assert info.value.code == 2 and "--output must differ from --source" in capsys.readouterr().err


def test_no_window_and_no_output_is_an_error(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(realtime_demo.CliError, match=r"--display: cannot open a window: .*DISPLAY"):
        realtime_demo.open_window(True, has_output=True)
    with pytest.raises(realtime_demo.CliError, match="no display .* and no --output"):
        realtime_demo.open_window(None, has_output=False)
    with pytest.raises(realtime_demo.CliError, match="--no-display without --output"):
        realtime_demo.open_window(False, has_output=False)
    assert realtime_demo.open_window(None, has_output=True) is False
    assert "running headless" in capsys.readouterr().err
    assert realtime_demo.open_window(False, has_output=True) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 display names")
def test_a_display_that_cannot_open_is_a_clear_error(monkeypatch):
    # OpenCV's Qt back end aborts the process here; the probe runs it in a child process.
    monkeypatch.setenv("DISPLAY", ":4242")
    with pytest.raises(realtime_demo.CliError,
                       match=r"--display: cannot open a window: OpenCV could not open a window"):
        realtime_demo.open_window(True, has_output=False)


def test_video_writer_is_atomic(tmp_path):
    frames = moving_square_frames(3, 32, 48)
    out = tmp_path / "out.mp4"
    with realtime_demo.video_writer(out, 7.0, (48, 32)) as writer:
        for frame in frames:
            writer.write(frame)
        assert not out.exists()                  # only the temporary file exists so far
    written, fps = read_video(out)
    assert len(written) == 3 and fps == 7.0 and written[0].shape == (32, 48, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]

    with pytest.raises(RuntimeError):
        with realtime_demo.video_writer(tmp_path / "failed.mp4", 7.0, (48, 32)) as writer:
            writer.write(frames[0])
            raise RuntimeError("inference failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_video_writer_refuses_an_unknown_container(tmp_path):
    with pytest.raises(realtime_demo.CliError, match="cannot write video"):
        with realtime_demo.video_writer(tmp_path / "out.notavideo", 7.0, (48, 32)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_draw_fps_draws_in_the_corner():
    frame = np.full((120, 160, 3), 100, dtype=np.uint8)
    realtime_demo.draw_fps(frame, 12.34)
    rows, cols = np.nonzero((frame != 100).any(axis=2))
    assert rows.min() == 0 and cols.min() == 0            # a box from the corner ...
    assert rows.max() < 30 and cols.max() < 100           # ... that stays small
    assert frame[0, 0].tolist() == [0, 0, 0] and frame.max() == 255   # white on black


def test_headless_run_on_a_video_keeps_every_frame(tmp_path, reference_weights,
                                                   fast_reference_config, capsys):
    frames = moving_square_frames(5, 96, 128)
    video = write_video(tmp_path / "in.mp4", frames, fps=10)
    out = tmp_path / "annotated.mp4"
    status = realtime_demo.main([
        "--source", str(video), "--output", str(out), "--no-display", "--device", "cpu",
        "--weights", str(reference_weights), "--config", str(fast_reference_config)])
    assert status == 0
    said = capsys.readouterr()
    assert f"video {video}: 5 frames in" in said.out
    assert "molded size 128 (the input is 128x96" in said.err
    written, fps = read_video(out)
    assert len(written) == len(frames) and fps == 10.0
    assert written[0].shape == frames[0].shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "in.mp4"]
    # The FPS counter sits in the top-left corner: a black box that the input does not have.
    assert all(frame[1:4, 1:4].mean() < 20 for frame in written)
