"""Shared pieces of the benchmark scripts: timing, peers run in child processes, the machine's
description, RESULTS.md.

Importable without torch (torch is imported where a function needs it), so that the TensorFlow
peers, which run in an environment without torch, time and serve with the same code.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def is_cuda(device):
    """Whether `device` (a torch.device or a string such as "cuda:1") is a CUDA device."""
    return str(device).split(":")[0] == "cuda"


def synchronize(device):
    if is_cuda(device):
        import torch
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeat=5, warmup=1):
    """Median wall time of fn() over `repeat` runs after `warmup` runs (GPU work included)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def serve(run, ready=None):
    """The child's side of Worker: prints `ready` (a dict) as a JSON line, then times run(line)
    for each line read from stdin until it closes, answering each with {"ms": ...}. Returns
    the seconds of every run."""
    print(json.dumps({"ready": True, **(ready or {})}), flush=True)
    times = []
    for line in iter(sys.stdin.readline, ""):
        start = time.perf_counter()
        run(line.strip())
        times.append(time.perf_counter() - start)
        print(json.dumps({"ms": times[-1] * 1000}), flush=True)
    return times


class Worker:
    """A benchmark child driven over pipes (its side is serve()): the parent asks for one timed
    run at a time, so that its own runs and the child's can alternate and see the same load on
    a shared machine. `ready` is the child's first message."""

    def __init__(self, command, what, env=None):
        self.what = what
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block it
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True, env=env)
        self.ready = self.reply()

    def reply(self):
        """The child's next JSON object on stdout (other output is skipped)."""
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.fail()

    def fail(self):
        """Exits with the child's exit status and the end of its stderr, once it has ended."""
        self.process.wait()
        self.stderr.seek(0)
        sys.exit(f"error: {self.what} failed (exit {self.process.returncode}):\n"
                 f"{self.stderr.read()[-4000:]}")

    def check_running(self):
        """Fails (see fail) when the child has ended: for a child that should run until
        stopped."""
        if self.process.poll() is not None:
            self.fail()

    def kill(self):
        """Ends the child at once and reaps it (a child that runs until stopped)."""
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            with suppress(BrokenPipeError):
                stream.close()

    def run(self, request="run"):
        """Milliseconds of one timed run of `request` in the child."""
        with suppress(BrokenPipeError):  # a dead child is reported by reply()
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
        return self.reply()["ms"]

    def finish(self):
        """Closes the child's input and returns its last message (its summary)."""
        with suppress(BrokenPipeError):
            self.process.stdin.close()
        summary = self.reply()
        self.process.wait()
        self.stderr.close()
        return summary


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device):
    """One line naming the hardware and software a measurement was taken on."""
    import torch

    parts = [f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads)"]
    if is_cuda(device):
        parts.append(f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
    parts.append(f"Python {platform.python_version()}")
    return "; ".join(parts)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def add_record_options(parser):
    """--note and --no-record, which publish() reads."""
    parser.add_argument("--note", action="append", default=[],
                        help="a line to add to the notes in RESULTS.md (repeatable), e.g. what "
                        "else loads the machine")
    parser.add_argument("--no-record", action="store_true",
                        help="print only; do not append to benchmarks/RESULTS.md")


def publish(title, device, header, rows, notes, load_before, args):
    """Prints a table and its notes, then the load average since `load_before` and the script's
    --note lines, and unless --no-record appends them to RESULTS.md. args: the script's options
    (note, no_record)."""
    notes = list(notes) + [f"Load average (1 min) at the start / end: {load_before:.1f} / "
                           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."] + args.note
    table = markdown_table(header, rows)
    if args.no_record:
        print(table)
        print("\n".join(notes))
    else:
        record(title, device, table, notes)


def record(title, device, table, notes=()):
    """Prints the table and appends it, with the machine and date, to benchmarks/RESULTS.md."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = [f"## {title} ({stamp})", "", f"Machine: {machine_description(device)}", "",
               f"Command: `{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`", "", table, ""]
    section += [f"{note}" for note in notes]
    text = "\n".join(section).rstrip() + "\n\n"
    print("\n" + text)
    with open(RESULTS, "a") as f:
        f.write(text)
