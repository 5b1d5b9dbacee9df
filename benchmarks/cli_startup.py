"""CLI start-up time against a bare interpreter, measured in one run.

    python benchmarks/cli_startup.py [--runs 20] [--baseline-src DIR]

Prints the median and p90 wall time of each command and its ratio to ``python -c pass``.
With ``--baseline-src`` (another checkout of biofleet, e.g. a ``git worktree`` of an older
commit) each command also runs against that source, interleaved run by run with this one,
and the table gains the ratio this/baseline. Goal: ``biofleet --help`` under 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "biofleet --help": [sys.executable, "-m", "biofleet.cli.main", "--help"],
    "biofleet profiles list": [sys.executable, "-m", "biofleet.cli.main", "profiles", "list"],
    "biofleet fit-check --profile t4x10": [sys.executable, "-m", "biofleet.cli.main", "fit-check",
                                           "--profile", "t4x10"],
}


def once(argv: list[str], src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=src)
    return time.perf_counter() - t0


def p90(times: list[float]) -> float:
    return sorted(times)[int(0.9 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--baseline-src", type=Path, help="another biofleet checkout to compare with, interleaved")
    args = ap.parse_args()
    trees = {"this": HERE, **({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})}
    results: dict[tuple[str, str], list[float]] = {(n, t): [] for n in COMMANDS for t in trees}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            for tree, src in trees.items():  # interleaved: load drifts affect both alike
                results[(name, tree)].append(once(argv, src))
    base = statistics.median(results[("python -c pass", "this")])
    head = f"{'command':40} {'median s':>9} {'p90 s':>7} {'x python':>9}"
    print(head + (f" {'baseline s':>10} {'this/baseline':>13}" if args.baseline_src else ""))
    for name in COMMANDS:
        med = statistics.median(results[(name, "this")])
        line = f"{name:40} {med:9.3f} {p90(results[(name, 'this')]):7.3f} {med / base:9.1f}"
        if args.baseline_src:
            old = statistics.median(results[(name, "baseline")])
            line += f" {old:10.3f} {med / old:13.2f}"
        print(line)


if __name__ == "__main__":
    main()
