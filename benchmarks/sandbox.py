#!/usr/bin/env python3
"""What each sandbox mode adds to running a generated program (src/workflows/company/sandbox.py, src/sandbox/).

    .venv/bin/python benchmarks/sandbox.py [--rounds 15]

Two workloads: a hello-world ``main.py``, and the Tester's pytest run of a small test file (pytest's own start-up
dominates it). For each, the median wall time of: a plain ``python main.py`` subprocess (the reference, measured in
the same run: no limits, no sandbox), and ``run_program`` in each mode that can run here: limits only, Landlock,
bubblewrap. Each ``run_program`` includes what every mode pays (the launcher, the disk watch, the kill of every
descendant). Printed: milliseconds, the ratio to the reference, and the milliseconds added.
Target (issue 12): under 100 ms added per program run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELLO = 'print("hello")\n'
TESTS = "from util import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
UTIL = "def add(a, b):\n    return a + b\n"


def median_ms(action: Callable[[], object], rounds: int) -> float:
    action()  # warm the page cache and the probe
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    from src.sandbox import landlock
    from src.sandbox.bubblewrap import find_bubblewrap
    from src.settings import SANDBOX_BUBBLEWRAP, SANDBOX_LANDLOCK, SANDBOX_RLIMITS
    from src.workflows.company.phases import _TEST_RUNNER_SOURCE as TEST_RUNNER  # the Tester's own runner file
    from src.workflows.company.phases import TEST_RUNNER_FILE
    from src.workflows.company.sandbox import run_program

    modes = [SANDBOX_RLIMITS]
    if landlock.unavailable_reason() is None:
        modes.append(SANDBOX_LANDLOCK)
    else:
        print(f"Landlock cannot run here ({landlock.unavailable_reason()}); not measured")
    probe = find_bubblewrap()
    if probe.found is not None:
        modes.append(SANDBOX_BUBBLEWRAP)
    else:
        print(f"bubblewrap cannot start here ({probe.reason}); not measured")

    with tempfile.TemporaryDirectory() as place:
        project = Path(place)
        (project / "main.py").write_text(HELLO)
        (project / "util.py").write_text(UTIL)
        (project / "test_util.py").write_text(TESTS)
        (project / TEST_RUNNER_FILE).write_text(TEST_RUNNER)
        rows = []
        for workload, entry in (("hello world", "main.py"), ("pytest, 1 test", TEST_RUNNER_FILE)):
            def plain(entry: str = entry) -> None:
                subprocess.run([sys.executable, entry], cwd=project, capture_output=True, check=True)

            reference = median_ms(plain, args.rounds)
            rows.append((workload, "plain subprocess (reference)", reference, reference))
            for mode in modes:
                def sandboxed(entry: str = entry, mode: str = mode) -> None:
                    result = run_program(project, entry, timeout_s=60, sandbox=mode)
                    if not result.ok:
                        raise SystemExit(f"{mode} run of {entry} failed: {result.stderr[-2000:]}")

                rows.append((workload, mode, median_ms(sandboxed, args.rounds), reference))
    print(f"\nMedian of {args.rounds} runs each\n")
    print("| workload | how it ran | ms | x reference | ms added |\n|---|---|---|---|---|")
    for workload, how, ms, reference in rows:
        print(f"| {workload} | {how} | {ms:.0f} | {ms / reference:.2f}x | {ms - reference:+.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
