"""Wall time of ``import facerep`` and ``facerep --help`` beside ``python -c pass``: best of N fresh
interpreters each, and their ratio to the bare interpreter (issue 23: under 0.5 s and 1 s on 2 cores).

    .venv/bin/python scripts/import_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CASES = {
    "python -c pass": ["-c", "pass"],
    "import facerep": ["-c", "import facerep"],
    "facerep --help": ["-m", "facerep.commands.cli", "--help"],
}


def best_time(args: list[str], runs: int) -> float:
    """The shortest of ``runs`` wall times of a fresh ``python args`` (its output discarded)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per case (best one counts)")
    runs = parser.parse_args().runs
    times = {name: best_time(args, runs) for name, args in CASES.items()}
    base = times["python -c pass"]
    for name, seconds in times.items():
        print(f"{name:16s} {seconds:7.3f} s  {seconds / base:6.1f} x python -c pass")


if __name__ == "__main__":
    main()
