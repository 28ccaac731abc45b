#!/usr/bin/env python3
"""Decode speed of the local engine when another program is busy on the same CPU: why the GUI computes with one
core fewer than the machine has (src/utils/cpu.py).

    .venv/bin/python benchmarks/cpu_contention.py [--model smollm2-135m] [--tokens 48] [--cap 6]

For each backend (llama.cpp, torch's lean decoder), each OpenMP wait policy (default: spin, then sleep; PASSIVE:
sleep at once) and each thread count (every core; one fewer), decode tokens/s of a greedy reply while the CPU is
idle, while one busy process runs at normal priority, and while one runs at nice -8 (what a browser's GPU process
does to itself when it may, e.g. as root; "n/a" when this user may not raise a priority). Each figure is beside the
reference measured in the same run: every core, default policy, idle CPU. A reply stops after --cap seconds, so the
collapsed cases cost seconds, not minutes. Each policy runs in its own process (OpenMP reads it once at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOADS = (("idle", None), ("busy process", 0), ("busy process, nice -8", -8))
PROMPT = "Write a long story about a dragon who learns to bake bread."


def can_raise_priority() -> bool:
    probe = subprocess.run(["nice", "-n", "-8", "true"], capture_output=True, check=False)
    return probe.returncode == 0 and not probe.stderr


def measure(nice: int | None, tokens: int, cap: float) -> float:
    """tokens/s after the first token (best of two replies) of the shared engine's loaded model, with a busy process
    at ``nice`` (None: idle)."""
    from src.utils.LocalLLMEngine import LocalLLMEngine

    busy = None
    if nice is not None:
        busy = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
    try:
        engine = LocalLLMEngine.shared()
        best = 0.0
        for _ in range(2):
            deadline = time.perf_counter() + cap
            stream = engine.stream([{"role": "user", "content": PROMPT}], max_new_tokens=tokens, temperature=0.0)
            for _piece in stream:
                if time.perf_counter() > deadline:
                    stream.cancel()
                    break
            stream.close()
            stats = stream.result.stats if stream.result is not None else None
            if stats is not None and stats.tokens_per_s:
                best = max(best, stats.tokens_per_s)
        return best
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def child(args: argparse.Namespace) -> None:
    """One wait policy (set by the parent in the environment): every backend x thread count x load."""
    from src.settings import ENV_BACKEND, ENV_THREADS, reload_settings
    from src.utils.cpu import available_cpus
    from src.utils.LocalLLMEngine import LocalLLMEngine

    cores = available_cpus()
    results = []
    for backend in ("llama.cpp", "transformers"):
        for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
            os.environ[ENV_BACKEND], os.environ[ENV_THREADS] = backend, str(threads)
            reload_settings()
            engine = LocalLLMEngine.shared()
            engine.unload_model()
            engine.load_model(args.model)
            assert engine.loaded is not None and engine.loaded.backend == backend, engine.loaded
            for label, nice in LOADS:
                if nice is not None and nice < 0 and not args.may_raise:
                    speed = None
                else:
                    speed = measure(nice, args.tokens, args.cap)
                results.append({"backend": backend, "threads": threads, "load": label, "tok_s": speed})
                print(f"  {args.policy} {backend} {threads} thread(s), {label}: {speed}", file=sys.stderr, flush=True)
            engine.unload_model()
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--cap", type=float, default=6.0, help="seconds after which a reply is stopped")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--may-raise", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    os.environ.setdefault("HEARTH_DATA_DIR", tempfile.mkdtemp(prefix="hearth-bench-"))
    may_raise = can_raise_priority()
    rows = []
    for policy in ("default", "PASSIVE"):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy == "PASSIVE":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        command = [sys.executable, __file__, "--child", "--policy", policy, "--model", args.model,
                   "--tokens", str(args.tokens), "--cap", str(args.cap)] + (["--may-raise"] if may_raise else [])  # fmt: skip
        out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        rows += [dict(r, policy=policy) for r in json.loads(out.stdout.strip().splitlines()[-1])]

    from src.utils.cpu import available_cpus

    cores = available_cpus()
    print(f"\nDecode tokens/s, {args.model}, {cores} cores, greedy, {args.tokens} tokens (capped at {args.cap:g} s); "
          f"ratio against every core, default wait policy, idle CPU (same backend, same run)\n")  # fmt: skip
    print("| backend | threads | OpenMP wait | " + " | ".join(label for label, _ in LOADS) + " |")
    print("|---|---|---|" + "---|" * len(LOADS))
    for backend in ("llama.cpp", "transformers"):
        reference = next(
            r["tok_s"] for r in rows
            if r["backend"] == backend and r["threads"] == cores and r["policy"] == "default" and r["load"] == "idle"
        )  # fmt: skip
        for policy in ("default", "PASSIVE"):
            for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
                cells = []
                for label, _ in LOADS:
                    speed = next(
                        r["tok_s"] for r in rows
                        if (r["backend"], r["threads"], r["policy"], r["load"]) == (backend, threads, policy, label)
                    )  # fmt: skip
                    cells.append("n/a" if speed is None else f"{speed:.1f} ({speed / reference:.2f}x)")
                name = "torch (lean decoder)" if backend == "transformers" else backend
                print(f"| {name} | {threads} | {policy} | " + " | ".join(cells) + " |")
    print(
        f"\nThe GUI uses {max(1, cores - 1)} thread(s) with the default wait policy; the command line, the API "
        "server and the benchmarks use every core."
    )


if __name__ == "__main__":
    main()
