"""CLI start-up time against a bare interpreter, measured in one run.

    python benchmarks/cli_startup.py [--runs 20]

Prints the median and p90 wall time of each command and its ratio to
``python -c pass``. Goal: ``biofleet --help`` under 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "biofleet --help": [sys.executable, "-m", "biofleet.cli.main", "--help"],
    "biofleet profiles list": [sys.executable, "-m", "biofleet.cli.main", "profiles", "list"],
    "biofleet fit-check --profile t4x10": [sys.executable, "-m", "biofleet.cli.main", "fit-check",
                                           "--profile", "t4x10"],
}


def measure(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    results = {name: measure(argv, args.runs) for name, argv in COMMANDS.items()}
    base = statistics.median(results["python -c pass"])
    print(f"{'command':40} {'median s':>9} {'p90 s':>7} {'x python':>9}")
    for name, times in results.items():
        med = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{name:40} {med:9.3f} {p90:7.3f} {med / base:9.1f}")


if __name__ == "__main__":
    main()
