#!/usr/bin/env python3
"""The agent company on a held-out list of five small tasks, with the configured (or given) model.

    .venv/bin/python benchmarks/company.py [--model smollm2-135m] [--config Default] [--max-turns 1] [--max-tokens 384]

Per task: wall time, model calls, tokens, and executability: the generated main.py run in the sandbox with a
scripted input exits 0 (a program still waiting for input at the timeout does not count). Small local models
mostly fail this; the point is to compare models and configs on the same tasks (`--model qwen2.5-0.5b`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASKS = [
    ("calculator", "a command line calculator that reads expressions like 2+3 and prints the result; q quits", "2+3\n7*6\nq\n"),
    ("todo", "a todo list command line program: add, list and done commands; q quits", "add milk\nlist\nq\n"),
    ("wordcount", "a word counter that reads text from standard input and prints the number of words and lines", "one two\nthree\n"),
    ("guessing", "a number guessing game: the player guesses a number from 1 to 10, the program says higher or lower; q quits", "5\n3\n8\nq\n"),
    ("temperature", "a temperature converter between Celsius and Fahrenheit; reads a value and a unit like 100 C", "100 C\n32 F\n"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model id (default: the current chat model)")
    parser.add_argument("--config", default="Default")
    parser.add_argument("--max-turns", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="run only the first N tasks")
    args = parser.parse_args()
    from src.utils.ChatUtils import AIRequestHandlerWithHistory
    from src.workflows.company.runner import CompanyRun
    from src.workflows.company.sandbox import run_program

    handler = AIRequestHandlerWithHistory()
    if args.model:
        handler.refresh_config(model_override=args.model)
    warehouse = Path(tempfile.mkdtemp(prefix="hearth-company-bench-"))
    rows = []
    for name, task, scripted_input in TASKS[: args.tasks]:
        started = time.perf_counter()
        result = CompanyRun(
            task, name, config=args.config, model=handler.model, warehouse_root=warehouse,
            max_turns=args.max_turns, max_tokens=args.max_tokens,
        ).run()
        wall = time.perf_counter() - started
        executable = False
        if (Path(result.folder) / "main.py").is_file():
            run = run_program(Path(result.folder), "main.py", timeout_s=5, stdin=scripted_input)
            executable = run.exit_code == 0 and not run.timed_out and not run.traceback
        rows.append((name, wall, result.model_calls, result.prompt_tokens + result.completion_tokens, len(result.files),
                     result.lines, executable))
    print(f"model {handler.model.model_name}, config {args.config}, max_turns {args.max_turns}, max_tokens {args.max_tokens}")
    print(f"{'task':12} {'wall s':>8} {'calls':>6} {'tokens':>8} {'files':>6} {'lines':>6}  executable")
    for name, wall, calls, tokens, files, lines, executable in rows:
        print(f"{name:12} {wall:8.1f} {calls:6d} {tokens:8d} {files:6d} {lines:6d}  {'yes' if executable else 'no'}")
    print(f"executable: {sum(r[-1] for r in rows)}/{len(rows)}; median wall {statistics.median(r[1] for r in rows):.1f} s")
    print(f"projects in {warehouse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
