"""A few hundred broken inputs through the commands: mutated COCO files and images through eval.py,
mutated images through demo.py, mutated Keras weight files through python -m convert_weights.

    python benchmarks/fuzz_inputs.py [--cases 300] [--seed 0] [--record]

Every case is drawn from a seeded generator (the same cases on every run), run in a worker
process (tests/fuzz_inputs.py) and classified: ok, clean error (naming the file), unnamed error,
traceback, signal (the process died) or timeout. Prints a table of outcomes per command and each
bad case; --record appends the table to benchmarks/RESULTS.md. Exit status 1 when any case is
bad. On a 2-core machine 300 cases take several minutes (the model runs on the valid images).
"""
import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mrcnn  # noqa: E402,F401  first: it sets OpenMP's thread settings before torch loads
from benchmarks.common import markdown_table, record  # noqa: E402
from tests.fuzz_inputs import CASES, GOOD, OUTCOMES, Base, Runner  # noqa: E402

# Shares of the cases per command.
SHARES = {"eval": 0.5, "demo": 0.3, "convert": 0.2}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=300, help="number of cases (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cases (default 0)")
    parser.add_argument("--timeout", type=int, default=120,
                        help="seconds a case may take before it counts as a hang (default 120)")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    commands = [command for command, share in SHARES.items()
                for _ in range(round(share * args.cases))]
    rng.shuffle(commands)
    counts = {command: Counter() for command in SHARES}
    bad = []
    load_before = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        base = Base(Path(folder) / "base")
        with Runner(base.model, timeout=args.timeout) as runner:
            for number, command in enumerate(commands):
                case_folder = Path(folder) / f"case{number:04d}"
                case_folder.mkdir()
                case = CASES[command](rng, base, case_folder)
                outcome, detail = runner.run(case)
                counts[command][outcome] += 1
                if outcome not in GOOD:
                    bad.append((number, command, case.mutation, outcome, detail))
                print(f"{number:4d} {command:8s} {outcome:14s} {case.mutation[:70]}",
                      flush=True)
    minutes = (time.perf_counter() - start) / 60

    rows = [[command, sum(counts[command].values())]
            + [counts[command][outcome] for outcome in OUTCOMES] for command in SHARES]
    rows.append(["all", len(commands)] + [sum(counts[c][o] for c in SHARES) for o in OUTCOMES])
    table = markdown_table(["command", "cases"] + list(OUTCOMES), rows)
    notes = [f"{len(commands)} cases (seed {args.seed}) in {minutes:.1f} min; bad outcomes "
             f"(neither ok nor a clean error naming the file): {len(bad)}. Load average "
             f"(1/5/15 min) before: {'/'.join(f'{v:.1f}' for v in load_before)}, after: "
             f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())}. The cases run one by one in a "
             "worker process with one torch thread (tests/fuzz_inputs.py)."]
    notes += [f"- case {number} ({command}, {mutation}): {outcome}: {detail[-300:]!r}"
              for number, command, mutation, outcome, detail in bad]
    if args.record:
        record("Bad inputs through the commands (fuzz)", "cpu", table, notes)
    else:
        print("\n" + table + "\n\n" + "\n".join(notes))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
