"""tools/gpu_check.sh and its helpers, as far as they run without a GPU: the plan, the steps
that need none, the skip messages, the test video and the ops smoke test."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def run_check(args, tmp_path, **env):
    environment = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), **env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=600)


def test_dry_run_plans_every_step_within_eight_minutes(tmp_path):
    done = run_check(["--dry-run", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    steps = re.findall(r"^\| (\w+) \| (\d+) \| planned \((cpu|gpu)\)", summary, re.MULTILINE)
    assert [name for name, _, _ in steps] == [
        "env", "wheels", "build", "pytest", "memcheck", "racecheck", "ops", "inference", "batch",
        "video", "realtime"]
    assert "Budget 470 s" in summary  # the deadline every step is cut to
    plan = (tmp_path / "out" / "plan.sh").read_text()
    for command in ("pip install --no-deps --no-index", "MRCNN_FORCE_CUDA=1",
                    "TORCH_CUDA_ARCH_LIST=$arch", "pip install --no-deps --no-build-isolation -e .",
                    "pytest -q -k cuda", "-n auto", "--tool memcheck", "--tool racecheck",
                    "benchmarks/ops.py --device cuda", "--precision exact tf32 bf16",
                    "--batch 8", "--size 1280x720", "realtime_demo.py"):
        assert command in plan, command
    assert not (tmp_path / "out" / "env.log").exists()  # nothing ran


def test_cpu_steps_run_and_gpu_steps_say_why_they_are_skipped(tmp_path):
    steps = "wheels video" + ("" if torch.cuda.is_available() else " build pytest")
    done = run_check([str(tmp_path / "out")], tmp_path, GPU_CHECK_STEPS=steps,
                     GPU_CHECK_VIDEO_FRAMES="2")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| wheels | 60 | ok |" in summary and "| video | 40 | ok |" in summary
    assert "nothing to install" in (tmp_path / "out" / "wheels.log").read_text()
    if not torch.cuda.is_available():
        assert "| build | 180 | skipped: no CUDA device |" in summary
        assert "skipped pytest: needs a CUDA device" in done.stdout
    capture = cv2.VideoCapture(str(tmp_path / "mrcnn-gpu-check" / "clip_1280x720.mp4"))
    frames = []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    assert len(frames) == 2 and frames[0].shape == (720, 1280, 3)
    assert not (frames[0] == frames[1]).all()  # the shapes move


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path):
    done = run_check([str(tmp_path / "out")], tmp_path, GPU_CHECK_STEPS="env video",
                     GPU_CHECK_VIDEO_FRAMES="0")  # make_video refuses 0 frames
    assert done.returncode == 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| video | 40 | **failed (exit 2)** |" in summary and "| env | 60 | ok |" in summary


def test_ops_smoke_test_passes_on_the_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "ops_smoke.py"), "--device",
                           "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ops smoke test passed on cpu" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_ops_smoke_test_passes_on_cuda():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "ops_smoke.py"), "--device",
                           "cuda"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
