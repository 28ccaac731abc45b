#!/usr/bin/env python3
"""How long Hearth's commands take to start (issue 14), next to bare Python in the same run.

    .venv/bin/python benchmarks/startup.py [--rounds 5]

Median wall time of: ``python -c pass`` and ``python -c "import xllamacpp"`` (the references: the interpreter, and
the llama.cpp binding every chat needs), ``main.py --help``, ``main.py models list``, and ``main.py chat "hi"
--max-tokens 1`` on the embedded model (llama.cpp: load the GGUF, one token). Each in a fresh data folder.
Targets: ``--help`` under 0.3 s, the first chat token under 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "python -c pass (reference)": ["-c", "pass"],
    "python -c 'import xllamacpp' (reference)": ["-c", "import xllamacpp"],
    "main.py --help": ["main.py", "--help"],
    "main.py models list": ["main.py", "models", "list"],
    "main.py chat 'hi' --max-tokens 1": ["main.py", "chat", "hi", "--max-tokens", "1"],
}


def median_s(arguments: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds + 1):  # the first warms the page cache
        with tempfile.TemporaryDirectory() as data:
            started = time.perf_counter()
            subprocess.run([sys.executable, *arguments], cwd=ROOT, env={**os.environ, "HEARTH_DATA_DIR": data},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)  # fmt: skip
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {name: median_s(arguments, args.rounds) for name, arguments in COMMANDS.items()}
    reference = results["python -c pass (reference)"]
    print(f"\nMedian of {args.rounds} runs each\n")
    print("| command | s | x python -c pass |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {seconds / reference:.1f}x |")


if __name__ == "__main__":
    main()
