"""Fuzzing the commands with broken inputs.

Mutations of a small valid COCO file and its images (run through eval.py), of images (demo.py)
and of Keras weight files (python -m convert_weights) are each run in a worker process and their
outcome classified:

    ok             exit status 0
    clean error    another exit status, no traceback, and stderr names a mutated file
    unnamed error  another exit status, but no mutated file named
    traceback      an exception escaped the command
    signal         the process died (e.g. SIGSEGV in a C library)
    timeout        no answer within the time limit (a hang)

Only the first two are acceptable. The worker runs the commands' main() in-process, one case
after the other, so that each case costs its own work only; a case that kills or hangs it is
recorded and a fresh worker takes over. Used by tests/test_fuzz_inputs.py (a few cases drawn by
hypothesis) and benchmarks/fuzz_inputs.py (a few hundred).
"""
import contextlib
import copy
import io
import json
import math
import os
import select
import shutil
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOOD = ("ok", "clean error")
OUTCOMES = GOOD + ("unnamed error", "traceback", "signal", "timeout")
CASE_TIMEOUT_S = 120
EVIL_VALUES = (None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 70, -2 ** 70, 1e300, -1e300,
               math.nan, math.inf, -math.inf, 0.5, "", "x", "../../etc/passwd", "\u00e9\x00",
               [], [[]], {}, [1, 2], [[1, 2, 3, 4]], [[1, 2, None, 4, 5, 6]],
               {"size": [1, 1], "counts": "0"}, {"size": [64, 64], "counts": "05"})


@dataclass
class Case:
    """A command line and the files it was given that a clean error must name."""
    command: str  # "eval", "demo" or "convert"
    argv: list
    names: list = field(default_factory=list)
    mutation: str = ""


class Base:
    """The valid inputs that cases mutate, made once in `folder`: the tiny model (.pth), a
    2-image dataset of 64x64 images and a small Keras weights file."""

    def __init__(self, folder):
        from tests.bad_inputs import write_shapes, write_tiny_model
        from tests.test_convert_weights import tiny_h5

        self.folder = Path(folder)
        self.model = write_tiny_model(self.folder / "tiny.pth")
        annotation_json, image_dir, self.data = write_shapes(self.folder / "shapes", images=2)
        self.image_dir = Path(image_dir)
        self.h5 = self.folder / "tiny.h5"
        tiny_h5(self.h5)


# Cases. Each draws from `rng` (a random.Random) and writes its files into `folder`.

def coco_case(rng, base, folder):
    """eval.py on the base dataset with its annotation file or one of its images mutated."""
    folder = Path(folder)
    image_dir = folder / "images"
    shutil.copytree(base.image_dir, image_dir)
    data = json.loads(json.dumps(base.data))
    annotation_json = folder / "instances.json"
    text = None
    if rng.random() < 0.25:
        image = image_dir / rng.choice(sorted(os.listdir(image_dir)))
        mutation = "image: " + mutate_image_file(rng, image)
    elif rng.random() < 0.2:
        text, mutation = mutate_json_text(rng, json.dumps(data))
    else:
        mutation = mutate_json(rng, data)
    if text is None:
        text = json.dumps(data)
    annotation_json.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = folder / "out"
    argv = ["--annotations", str(annotation_json), "--images", str(image_dir), "--weights",
            str(base.model), "--device", "cpu", "--out", str(out), "--quiet",
            "--mask-score", "cls"]
    return Case("eval", argv, [str(annotation_json), str(image_dir)], mutation)


def image_case(rng, base, folder):
    """demo.py on a valid image and a mutated copy of it."""
    folder = Path(folder)
    source = base.image_dir / sorted(os.listdir(base.image_dir))[0]
    good = folder / "good.png"
    shutil.copy(source, good)
    bad = folder / f"bad{rng.choice(['.png', '.jpg', '.bmp', '.tif', '.webp'])}"
    cv2.imwrite(str(bad), cv2.imread(str(source)))
    mutation = mutate_image_file(rng, bad)
    argv = [str(good), str(bad), "--weights", str(base.model), "--out", str(folder / "out"),
            "--json", "--device", "cpu"]
    return Case("demo", argv, [str(bad)], mutation)


def weights_case(rng, base, folder):
    """python -m convert_weights on a mutated copy of a small Keras weights file."""
    import h5py

    path = Path(folder) / "weights.h5"
    shutil.copy(base.h5, path)
    kernel = "/conv1/conv1/kernel:0"
    choice = rng.randrange(6)
    if choice == 0:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(rng.randrange(size))
        mutation = "truncated"
    elif choice == 1:
        data = bytearray(path.read_bytes())
        for _ in range(rng.randrange(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        mutation = "bytes changed"
    elif choice == 2:
        with h5py.File(path, "r+") as f:
            values = f[kernel][()]
            values.flat[rng.randrange(values.size)] = rng.choice([math.nan, math.inf, -math.inf])
            f[kernel][...] = values
        mutation = "non-finite weight"
    elif choice == 3:
        with h5py.File(path, "r+") as f:
            del f[kernel]
            f[kernel] = rng.choice([h5py.ExternalLink(str(base.h5), kernel),
                                    h5py.SoftLink("/nowhere"),
                                    h5py.ExternalLink("/nonexistent.h5", "/x")])
        mutation = "link"
    elif choice == 4:
        with h5py.File(path, "r+") as f:
            group = f["conv1"] if rng.random() < 0.5 else f
            key = "weight_names" if group.name != "/" else "layer_names"
            group.attrs[key] = rng.choice([np.array([b"\xff\xfe"], dtype="S"), np.int64(3),
                                           np.zeros(0), np.array(["nowhere"], dtype="S")])
        mutation = "attribute"
    else:
        with h5py.File(path, "r+") as f:
            del f[kernel]
            f[kernel] = rng.choice([np.zeros((3, 3, 3, 4), np.int32), np.zeros(0, np.float32),
                                    np.float32(1.0)])
        mutation = "dataset type or shape"
    return Case("convert", [str(path), str(Path(folder) / "out.pth")], [str(path)], mutation)


CASES = {"eval": coco_case, "demo": image_case, "convert": weights_case}


def mutate_json(rng, data):
    """Changes `data` (a COCO instances object) in place; returns what was done."""
    kind = rng.choice(["annotations", "annotations", "annotations", "images", "categories",
                       "top"])
    if kind == "top":
        key = rng.choice(["images", "annotations", "categories"])
        data[key] = evil(rng)
        return f"{key} = {short(data[key])}"
    entry = rng.choice(data[kind]) if data[kind] else data
    keys = sorted(entry) if isinstance(entry, dict) else []
    key = rng.choice(keys) if keys else "id"
    action = rng.randrange(7)
    if action == 0:
        entry.pop(key, None)
        return f"{kind}: deleted {key}"
    if action == 1 and kind == "annotations":
        return mutate_segmentation(rng, entry)
    if action == 2:
        data[kind].append(json.loads(json.dumps(entry)))
        return f"{kind}: duplicated an entry"
    if action == 3:
        nested = rng.choice([[], {}, 0])
        for _ in range(rng.choice([10, 200, 800])):  # deeper: mutate_json_text
            nested = [nested]
        entry[key] = nested
        return f"{kind}: {key} nested deeply"
    if action == 4 and isinstance(entry.get(key), list) and entry[key]:
        values = entry[key]
        values[rng.randrange(len(values))] = evil(rng)
        return f"{kind}: an item of {key} = {short(values)}"
    entry[key] = evil(rng)
    return f"{kind}: {key} = {short(entry[key])}"


def mutate_segmentation(rng, annotation):
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if isinstance(counts, str) and counts:
            position = rng.randrange(len(counts))
            counts = rng.choice([counts[:position], counts + rng.choice("0e5!~"),
                                 counts[:position] + chr(rng.randrange(32, 127))
                                 + counts[position + 1:]])
        else:
            counts = rng.choice(["", "0e", "05", [0], [-5, 10], [10 ** 20]])
        segmentation["counts"] = counts
        return f"annotations: RLE counts = {short(counts)}"
    polygon = [v for part in segmentation for v in part] or [1, 1, 5, 1, 5, 5]
    change = rng.randrange(4)
    if change == 0:
        polygon[rng.randrange(len(polygon))] = evil(rng)
    elif change == 1:
        polygon = polygon[:rng.choice([0, 1, 2, 4, 5])]
    elif change == 2:
        polygon = [v * rng.choice([-1, 10, 1e6, 1e300]) for v in polygon]
    else:
        polygon = [v + rng.choice([-100, -3, 3, 100]) for v in polygon]
    annotation["segmentation"] = [polygon]
    return f"annotations: polygon = {short(polygon)}"


def mutate_json_text(rng, text):
    """(new text, what was done): damage below the JSON level."""
    choice = rng.randrange(5)
    if choice == 0:
        return text[:rng.randrange(len(text))], "text truncated"
    if choice == 1:
        position = rng.randrange(len(text))
        return text[:position] + rng.choice(["\x00", "\ufffd", "}", "NaN", "1e999", "-"]) \
            + text[position:], "a character inserted"
    if choice == 2:
        return "[" * 100000 + "]" * 100000, "nested 100000 deep"
    if choice == 3:
        return text.replace('"id": 1,', '"id": 1' + "0" * 5000 + ",", 1), "an id of 5001 digits"
    return "", "empty file"


def mutate_image_file(rng, path):
    """Damages the image file at `path` in place; returns what was done."""
    path = Path(path)
    data = path.read_bytes()
    choice = rng.randrange(11)
    if choice == 0:
        path.write_bytes(data[:rng.randrange(len(data))])
        return "truncated"
    if choice == 1:
        data = bytearray(data)
        for _ in range(rng.randrange(1, 30)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        return "bytes changed"
    if choice == 2:
        path.write_bytes(b"")
        return "empty"
    if choice == 3:
        side = rng.choice([(2, 3000), (3000, 2), (1, 1), (3, 900), (65, 63)])
        cv2.imwrite(str(path), np.full(side + (3,), 128, np.uint8))
        return f"replaced by a {side[0]}x{side[1]} image"
    if choice == 4:
        path.write_bytes(png_header_bomb(rng.choice([30000, 65535, 200000])))
        return "a decompression bomb's header"
    if choice == 5:
        cv2.imwrite(str(path), np.full((64, 64), 40000, np.uint16))
        return "16-bit grey"
    if choice == 6:
        cv2.imwrite(str(path), np.full((64, 64, 4), 200, np.uint8))
        return "with alpha"
    if choice == 7:
        path.unlink()
        path.mkdir()
        return "a directory"
    if choice == 8:
        path.unlink()
        os.symlink(path, path)
        return "a symlink to itself"
    if choice == 9 and hasattr(os, "mkfifo"):
        path.unlink()
        os.mkfifo(path)
        return "a named pipe"
    path.unlink()
    return "missing"


def png_header_bomb(side):
    """A PNG whose header declares side x side 1-bit pixels, with a little data after it."""
    def chunk(kind, body):
        return (len(body).to_bytes(4, "big") + kind + body
                + (zlib.crc32(kind + body) & 0xFFFFFFFF).to_bytes(4, "big"))
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def evil(rng):
    return copy.deepcopy(rng.choice(EVIL_VALUES))


def short(value):
    from preprocess.coco_checks import show
    return show(value)


# Running cases.

class Runner:
    """A worker process that runs cases one by one; run(case) -> (outcome, detail)."""

    def __init__(self, base_model, timeout=CASE_TIMEOUT_S):
        self.base_model = str(base_model)
        self.timeout = timeout
        self.process = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def run(self, case):
        if self.process is None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzz_inputs", self.base_model], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
        self.process.stdin.write(json.dumps({"command": case.command, "argv": case.argv}) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + self.timeout
        while True:
            ready, _, _ = select.select([self.process.stdout], [], [],
                                        max(0.0, deadline - time.monotonic()))
            if ready:
                break
            if time.monotonic() >= deadline:
                self.process.kill()
                self.process.wait()
                self.process = None
                return "timeout", f"no answer in {self.timeout} s"
        line = self.process.stdout.readline()
        if not line:
            status = self.process.wait()
            self.process = None
            return "signal", f"the worker ended with status {status}"
        return classify(json.loads(line), case)


def classify(answer, case):
    """The outcome of a worker's answer {"status", "stderr", "traceback"} to `case`."""
    if answer["traceback"] or "Traceback (most recent call last)" in answer["stderr"]:
        return "traceback", answer["traceback"] or answer["stderr"]
    if answer["status"] == 0:
        return "ok", ""
    errors = answer["stderr"]
    if any(name in errors for name in case.names):
        return "clean error", errors.strip().splitlines()[-1]
    return "unnamed error", errors


def run_case(command, argv):
    """Runs a command's main() here; returns {"status", "stderr", "traceback"}."""
    import convert_weights.__main__ as convert
    import demo
    import eval as eval_script

    main = {"eval": eval_script.main, "demo": demo.main, "convert": convert.main}[command]
    stderr = io.StringIO()
    answer = {"status": None, "traceback": None}
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
            answer["status"] = status if isinstance(status, int) else 0
        except SystemExit as exit_info:
            answer["status"] = exit_info.code if isinstance(exit_info.code, int) else (
                0 if exit_info.code is None else 1)
            if not isinstance(exit_info.code, (int, type(None))):
                stderr.write(f"{exit_info.code}\n")
        except BaseException:  # noqa: B902 - what escapes main() is the finding
            answer["traceback"] = traceback.format_exc()
    answer["stderr"] = stderr.getvalue()[-4000:]
    return answer


def serve(base_model):
    """The worker: one JSON case per line on stdin, one JSON answer per line on stdout. The
    base model is loaded once and reused for the cases that use it."""
    import torch

    import demo
    import eval as eval_script
    from mrcnn import cli

    # The cases are small: one thread avoids the cost of threads that wait for a busy machine.
    torch.set_num_threads(1)
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray output of C libraries must not reach the answers
    models = {}

    def load_model(config, weights=None, device="cpu", progress=True):
        if str(weights) != base_model:
            return cli.load_model(config, weights, device, progress)
        if base_model not in models:
            models[base_model] = cli.load_model(config, weights, device, progress)
        return models[base_model]

    demo.load_model = eval_script.load_model = load_model
    for line in sys.stdin:
        case = json.loads(line)
        channel.write(json.dumps(run_case(case["command"], case["argv"])) + "\n")
        channel.flush()


if __name__ == "__main__":
    serve(sys.argv[1])
