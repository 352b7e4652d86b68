"""Every bad argument of the compiled ops (nms, crop_and_resize, roi_align, forward and backward)
is a clear exception, with the same message on the CPU and on CUDA.

The cases run in child processes, one device at a time: a case that crashes the interpreter
(a segmentation fault in a kernel) fails its own test, with the signal and the child's Python
stack, instead of killing the pytest worker; the child is then restarted for the cases after it.
"""
import functools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CUDA

ROOT = Path(__file__).resolve().parents[1]

# name -> (expression, exception type, regex the message's first line must match). Names are
# evaluated in the namespace of case_namespace(); `dev` is the device under test, `other` the
# other device (CUDA cases only).
CASES = {
    # nms / batched_nms; boxes b [4, 4], scores s [4], idxs i [4].
    "nms boxes [N, 3]": ("nms(b[:, :3], s, 0.5)", RuntimeError, r"boxes must have shape \[N, 4\]"),
    "nms boxes 1-D": ("nms(b[0], s, 0.5)", RuntimeError, r"boxes must have shape \[N, 4\]"),
    "nms scores short": ("nms(b, s[:3], 0.5)", RuntimeError,
                         r"scores must have shape \[N\] = \[4\]"),
    "nms scores 2-D": ("nms(b, s[:, None], 0.5)", RuntimeError, r"scores must have shape \[N\]"),
    "nms int boxes": ("nms(b.int(), s, 0.5)", RuntimeError,
                      "boxes must be a floating-point tensor"),
    "nms scores dtype": ("nms(b, s.double(), 0.5)", RuntimeError,
                         "scores must have the dtype of boxes"),
    "nms iou -0.1": ("nms(b, s, -0.1)", RuntimeError, r"iou_threshold must be in \[0, 1\]"),
    "nms iou 1.5": ("nms(b, s, 1.5)", RuntimeError, r"iou_threshold must be in \[0, 1\]"),
    "nms iou nan": ("nms(b, s, math.nan)", RuntimeError, r"iou_threshold must be in \[0, 1\]"),
    "nms score_threshold nan": ("nms(b, s, 0.5, score_threshold=math.nan)", RuntimeError,
                                "score_threshold must not be NaN"),
    "nms max_output_size -1": ("nms(b, s, 0.5, max_output_size=-1)", ValueError,
                               "max_output_size must be >= 0 or None"),
    "nms max_output_size 2.5": ("nms(b, s, 0.5, max_output_size=2.5)", TypeError,
                                "cannot be interpreted as an integer"),
    "batched_nms idxs short": ("batched_nms(b, s, i[:2], 0.5)", RuntimeError,
                               r"idxs must have shape \[N\]"),
    "batched_nms float idxs": ("batched_nms(b, s, i.float(), 0.5)", RuntimeError,
                               "idxs must be an integer tensor"),
    "batched_nms bool idxs": ("batched_nms(b, s, i.bool(), 0.5)", RuntimeError,
                              "idxs must be an integer tensor"),
    "batched_nms no idxs": ("batched_nms(b, s, None, 0.5)", TypeError,
                            "idxs must be an integer tensor"),
    "nms scores elsewhere": ("nms(b, s.to(other), 0.5)", RuntimeError,
                             "scores must be on the device of boxes"),
    "batched_nms idxs elsewhere": ("batched_nms(b, s, i.to(other), 0.5)", RuntimeError,
                                   "idxs must be on the device of boxes"),
    "nms half boxes": ("nms(b.half(), s.half(), 0.5)", RuntimeError,
                       "boxes on the CPU must be float32 or float64"),

    # crop_and_resize; image img [2, 3, 4, 5], boxes bx [6, 4], box_ind bi [6] (zeros).
    "crop image 3-D": ("crop_and_resize(img[0], bx, bi, 3)", RuntimeError,
                       r"image must be a 4-D \[N, C, H, W\]"),
    "crop int image": ("crop_and_resize(img.int(), bx, bi, 3)", RuntimeError,
                       "image must be float32, float64, float16 or bfloat16, got Int"),
    "crop empty image": ("crop_and_resize(img[:, :, :0], bx, bi, 3)", RuntimeError,
                         "image height and width must be positive, got 0 x 5"),
    "crop image taller than 2^24": (
        "crop_and_resize(torch.zeros(1, 1, 1, 1, device=dev).expand(2, 3, 2**24 + 1, 5), bx, bi,"
        " 3)", RuntimeError, r"height and width must be at most 2\^24 for Float"),
    "crop boxes [K, 3]": ("crop_and_resize(img, bx[:, :3], bi, 3)", RuntimeError,
                          r"boxes must be a \[K, 4\] tensor, got \[6, 3\]"),
    "crop boxes 1-D": ("crop_and_resize(img, bx.reshape(-1), bi, 3)", RuntimeError,
                       r"boxes must be a \[K, 4\] tensor"),
    "crop float64 boxes": ("crop_and_resize(img, bx.double(), bi, 3)", RuntimeError,
                           "boxes must be float32 .* got Double boxes with a Float image"),
    "crop float16 boxes": ("crop_and_resize(img, bx.half(), bi, 3)", RuntimeError,
                           "boxes must be float32"),
    "crop box_ind short": ("crop_and_resize(img, bx, bi[:5], 3)", RuntimeError,
                           r"box_ind must be a \[K\] tensor with K = 6 .* got \[5\]"),
    "crop box_ind 2-D": ("crop_and_resize(img, bx, bi[:, None], 3)", RuntimeError,
                         r"box_ind must be a \[K\] tensor"),
    "crop float box_ind": ("crop_and_resize(img, bx, bi.float(), 3)", RuntimeError,
                           "box_ind must be int32 or int64, got Float"),
    "crop box_ind too large": (
        "crop_and_resize(img, bx, torch.tensor([0, 1, 2, 0, 0, 0], device=dev), 3)",
        RuntimeError, r"box_ind must be in \[0, 2\) .* from 0 to 2"),
    "crop box_ind negative": (
        "crop_and_resize(img, bx, torch.tensor([0, -1, 0, 0, 0, 1], device=dev).int(), 3)",
        RuntimeError, r"box_ind must be in \[0, 2\) .* from -1 to 1"),
    "crop size 0 x 3": ("crop_and_resize(img, bx, bi, (0, 3))", RuntimeError,
                        "crop size must be positive, got 0 x 3"),
    "crop size -2": ("crop_and_resize(img, bx, bi, -2)", RuntimeError,
                     "crop size must be positive"),
    "crop size of three": ("crop_and_resize(img, bx, bi, (3, 3, 3))", ValueError,
                           "crop_size must be an int or a pair of ints"),
    "crop size 2.5": ("crop_and_resize(img, bx, bi, 2.5)", ValueError,
                      "crop_size must be an int or a pair of ints"),
    "crop half image": ("crop_and_resize(img.half(), bx, bi, 3)", RuntimeError,
                        "on the CPU supports float32 and float64, got a Half"),
    "crop image elsewhere": ("crop_and_resize(img.to(other), bx, bi, 3)", RuntimeError,
                             "must be on the same device"),
    "crop boxes elsewhere": ("crop_and_resize(img, bx.to(other), bi, 3)", RuntimeError,
                             "must be on the same device"),
    "crop box_ind elsewhere": ("crop_and_resize(img, bx, bi.to(other), 3)", RuntimeError,
                               "must be on the same device"),
    "crop out shape": ("crop_and_resize(img, bx, bi, 3, out=torch.zeros(6, 3, 3, 2, device=dev))",
                       RuntimeError,
                       r"out must be a \[K, C, crop_height, crop_width\] = \[6, 3, 3, 3\]"),
    "crop out dtype": (
        "crop_and_resize(img, bx, bi, 3, out=torch.zeros(6, 3, 3, 3, dtype=torch.float64, "
        "device=dev))", RuntimeError, "out must have the image's dtype"),
    "crop out expanded": (
        "crop_and_resize(img, bx, bi, 3, out=torch.zeros(1, 1, 1, 1, device=dev).expand(6, 3, 3, 3))",
        RuntimeError, "unsupported operation"),
    # crop_and_resize_backward(grad, boxes, box_ind, batch, channels, height, width);
    # grad g [6, 3, 3, 3], box_ind bj = [0, 1, 0, 1, 0, 1].
    "crop backward grad channels": (
        "ops.crop_and_resize_backward(g[:, :2], bx, bj, 2, 3, 4, 5)", RuntimeError,
        r"grad must be a \[K, C, crop_height, crop_width\].* C = 3"),
    "crop backward grad rows": ("ops.crop_and_resize_backward(g[:5], bx, bj, 2, 3, 4, 5)",
                                RuntimeError, r"grad must be .* K = 6"),
    "crop backward empty crop": (
        "ops.crop_and_resize_backward(g[:, :, :0], bx, bj, 2, 3, 4, 5)", RuntimeError,
        "crop size must be positive"),
    "crop backward batch -1": ("ops.crop_and_resize_backward(g, bx, bj, -1, 3, 4, 5)",
                               RuntimeError, "batch and channels must be non-negative"),
    "crop backward box_ind too large": (
        "ops.crop_and_resize_backward(g, bx, bj, 1, 3, 4, 5)", RuntimeError,
        r"box_ind must be in \[0, 1\) .* from 0 to 1"),
    "crop backward box_ind negative": (
        "ops.crop_and_resize_backward(g, bx, -bj, 2, 3, 4, 5)", RuntimeError,
        r"box_ind must be in \[0, 2\) .* from -1 to 0"),
    "crop backward height 0": ("ops.crop_and_resize_backward(g, bx, bj, 2, 3, 0, 5)",
                               RuntimeError, "height and width must be positive"),
    "crop backward int grad": ("ops.crop_and_resize_backward(g.int(), bx, bj, 2, 3, 4, 5)",
                               RuntimeError, "grad must be float32, float64, float16 or bfloat16"),

    # roi_align; input x [2, 3, 5, 5], rois r = [[1, 0, 0, 3, 3]].
    "roi_align input 3-D": ("roi_align(x[0], r, 2)", RuntimeError,
                            r"input must be a 4-D tensor \[N, C, H, W\]"),
    "roi_align input 5-D": ("ops.roi_align(x[None], r, 1.0, 2, 2, -1, True)", RuntimeError,
                            r"input must be a 4-D tensor"),
    "roi_align int input": ("roi_align(x.int(), r, 2)", RuntimeError,
                            "input must be float32, float64, float16 or bfloat16, got Int"),
    "roi_align rois [K, 4]": ("roi_align(x, r[:, 1:], 2)", RuntimeError,
                              r"rois must be a Tensor\[K, 5\]"),
    "roi_align rois 1-D": ("roi_align(x, r[0], 2)", RuntimeError, r"rois must be a Tensor\[K, 5\]"),
    "roi_align rois 3-D": ("roi_align(x, r[None], 2)", RuntimeError,
                           r"rois must be a Tensor\[K, 5\]"),
    "roi_align int rois": ("roi_align(x, r.int(), 2)", RuntimeError,
                           "rois must be a floating-point tensor, got Int"),
    "roi_align bad box list": ("roi_align(x, [r[:, 1:], r], 2)", ValueError,
                               r"rois\[1\] must be a Tensor\[L, 4\]"),
    "roi_align rois a string": ("roi_align(x, 'boxes', 2)", ValueError,
                                r"rois must be a Tensor\[K, 5\] or a list"),
    "roi_align batch index 2": ("roi_align(x, r.index_fill(1, r.new_tensor([0]).long(), 2), 2)",
                                RuntimeError, r"rois\[:, 0\] must hold batch indices in \[0, 2\)"),
    "roi_align batch index -1": (
        "roi_align(x, r.index_fill(1, r.new_tensor([0]).long(), -1), 2)", RuntimeError,
        r"batch indices in \[0, 2\), got -1"),
    "roi_align batch index nan": (
        "roi_align(x, r.index_fill(1, r.new_tensor([0]).long(), math.nan), 2)", RuntimeError,
        r"batch indices in \[0, 2\), got nan"),
    "roi_align output size 0": ("roi_align(x, r, 0)", RuntimeError,
                                r"output size must be positive, got \(0, 0\)"),
    "roi_align output size (-1, 3)": ("roi_align(x, r, (-1, 3))", RuntimeError,
                                      r"output size must be positive, got \(-1, 3\)"),
    "roi_align output size of three": ("roi_align(x, r, (2, 3, 4))", ValueError,
                                       "output_size must be an int or a pair"),
    "roi_align output size 2.5": ("roi_align(x, r, 2.5)", ValueError,
                                  "output_size must be an int or a pair"),
    "roi_align half input": ("roi_align(x.half(), r, 2)", RuntimeError,
                             "on the CPU supports float32 and float64 input"),
    "roi_align rois elsewhere": ("roi_align(x, r.to(other), 2)", RuntimeError,
                                 "input and rois must be on the same device"),
    "roi_align out shape": ("roi_align(x, r, 2, out=torch.zeros(1, 3, 2, 3, device=dev))",
                            RuntimeError,
                            r"out must be a \[K, C, pooled_height, pooled_width\]"),
    "roi_align out dtype": (
        "roi_align(x, r, 2, out=torch.zeros(1, 3, 2, 2, dtype=torch.float64, device=dev))",
        RuntimeError, "out must have the input's dtype"),
    "roi_align out with autograd": (
        "roi_align(x.clone().requires_grad_(), r, 2, out=torch.zeros(1, 3, 2, 2, device=dev))",
        RuntimeError, "out= does not support autograd"),
    # roi_align_backward(grad, rois, scale, pooled_h, pooled_w, batch, channels, height, width,
    # sampling_ratio, aligned); grad gr [1, 3, 2, 2].
    "roi_align backward grad shape": (
        "ops.roi_align_backward(gr, r, 1.0, 2, 3, 2, 3, 5, 5, -1, True)", RuntimeError,
        r"grad must have shape \[K, C, pooled_height, pooled_width\]"),
    "roi_align backward negative shape": (
        "ops.roi_align_backward(gr, r, 1.0, 2, 2, 2, 3, -5, 5, -1, True)", RuntimeError,
        "input shape must be non-negative"),
    "roi_align backward batch index": (
        "ops.roi_align_backward(gr, r, 1.0, 2, 2, 1, 3, 5, 5, -1, True)", RuntimeError,
        r"batch indices in \[0, 1\), got 1"),
    "roi_align backward int grad": (
        "ops.roi_align_backward(gr.int(), r, 1.0, 2, 2, 2, 3, 5, 5, -1, True)", RuntimeError,
        "grad must be float32, float64, float16 or bfloat16, got Int"),
    "roi_align backward rois elsewhere": (
        "ops.roi_align_backward(gr, r.to(other), 1.0, 2, 2, 2, 3, 5, 5, -1, True)",
        RuntimeError, "grad and rois must be on the same device"),
}

# Cases that need another device, and cases that are errors only on the CPU (CUDA kernels take
# float16).
NEEDS_OTHER_DEVICE = {name for name, (expression, _, _) in CASES.items() if "other" in expression}
CPU_ONLY = {"nms half boxes", "crop half image", "roi_align half input"}


def case_namespace(device):
    """The names the case expressions use, on `device`."""
    import math

    from mrcnn.ops import batched_nms, crop_and_resize, nms, roi_align

    dev = torch.device(device)
    boxes = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 5, 10, 15], [20, 20, 30, 30]]
    return {
        "torch": torch, "math": math, "dev": dev, "ops": torch.ops.mrcnn,
        "other": torch.device("cpu" if dev.type == "cuda" else "meta"),
        "nms": nms, "batched_nms": batched_nms, "crop_and_resize": crop_and_resize,
        "roi_align": roi_align,
        "b": torch.tensor(boxes, dtype=torch.float32, device=dev),
        "s": torch.tensor([0.9, 0.8, 0.7, 0.6], device=dev),
        "i": torch.zeros(4, dtype=torch.int64, device=dev),
        "img": torch.zeros(2, 3, 4, 5, device=dev),
        "bx": torch.zeros(6, 4, device=dev),
        "bi": torch.zeros(6, dtype=torch.int64, device=dev),
        "bj": torch.tensor([0, 1, 0, 1, 0, 1], device=dev),
        "g": torch.zeros(6, 3, 3, 3, device=dev),
        "x": torch.rand(2, 3, 5, 5, device=dev),
        "r": torch.tensor([[1, 0, 0, 3, 3.0]], device=dev),
        "gr": torch.ones(1, 3, 2, 2, device=dev),
    }


def run_cases(device, expressions):
    """Child process body: evaluates {name: expression} on `device`, with one JSON line before
    and one after each case (the parent tells a crash from the last line it read)."""
    namespace = case_namespace(device)
    for name, expression in expressions.items():
        print(json.dumps({"case": name, "started": True}), flush=True)
        try:
            eval(expression, dict(namespace))
            outcome = {"type": None, "message": "no exception"}
        except Exception as error:  # the parent checks the type
            lines = str(error).strip().splitlines() or [""]
            outcome = {"type": type(error).__name__, "message": lines[0]}
        print(json.dumps({"case": name, **outcome}), flush=True)


CHILD = ("import sys, json; from tests.test_op_arguments import run_cases; "
         "run_cases(sys.argv[1], json.loads(sys.stdin.read()))")


def run_in_children(device, expressions):
    """{name: outcome} of {name: expression} evaluated on `device` in child processes; a case that
    kills its child gets {"crash": ...}, and a new child carries on with the cases after it."""
    results = {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))
    while len(results) < len(expressions):
        remaining = {name: code for name, code in expressions.items() if name not in results}
        child = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, device],
                               input=json.dumps(remaining), capture_output=True, text=True,
                               cwd=ROOT, env=env, timeout=600)
        started = None
        for line in child.stdout.splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("started"):
                started = record["case"]
            elif "case" in record:
                results[record["case"]] = record
                started = None
        if len(results) < len(expressions):
            code = child.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            results[started or next(iter(remaining))] = {
                "crash": f"the child process died ({how}) in this case; its stderr ends with:\n"
                         f"{child.stderr[-3000:]}"}
    return results


@functools.lru_cache(maxsize=None)
def outcomes(device):
    """{case name: outcome} of CASES on `device` (cached: one pass of children per device)."""
    return run_in_children(device, {name: expression for name, (expression, _, _) in CASES.items()
                                    if device == "cuda" or name not in NEEDS_OTHER_DEVICE})


@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument_is_a_clear_error(device, name):
    if device.type == "cpu" and name in NEEDS_OTHER_DEVICE:
        pytest.skip("needs a CUDA device")
    expression, error, pattern = CASES[name]
    outcome = outcomes(device.type)[name]
    assert "crash" not in outcome, f"{expression} on {device}: {outcome['crash']}"
    if device.type == "cuda" and name in CPU_ONLY:
        assert outcome["type"] is None, f"{expression} failed on CUDA: {outcome['message']}"
        return
    assert outcome["type"] == error.__name__, f"{expression}: {outcome}"
    assert re.search(pattern, outcome["message"]), outcome["message"]


@CUDA
@pytest.mark.parametrize("name", [name for name in CASES
                                  if name not in CPU_ONLY | NEEDS_OTHER_DEVICE])
def test_messages_are_the_same_on_cpu_and_cuda(name):
    cpu, cuda = outcomes("cpu")[name], outcomes("cuda")[name]
    assert "crash" not in cuda, cuda["crash"]
    assert (cuda["type"], cuda["message"]) == (cpu["type"], cpu["message"])


def test_a_crash_fails_only_its_own_case():
    results = run_in_children("cpu", {
        "before": "1 / 0",
        "crash": "__import__('os').kill(__import__('os').getpid(), 11)",
        "after": "int('x')",
    })
    assert results["before"]["type"] == "ZeroDivisionError"
    assert "signal SIGSEGV" in results["crash"]["crash"]
    assert "Fatal Python error" in results["crash"]["crash"]  # faulthandler's stack
    assert results["after"]["type"] == "ValueError"
