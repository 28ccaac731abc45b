#!/usr/bin/env python3
"""Download benchmark against the mock Hub on loopback (tests/mock_hub.py), each figure beside its reference.

    .venv/bin/python benchmarks/download.py [--size-mb 256] [--runs 3]

1. Throughput: our downloader (ranged GET, hashing, .part + state, rename) vs `curl -o file` of the same URL,
   unthrottled, median of --runs, alternating. Target: at least 0.9x curl.
2. Resume after SIGKILL: `main.py models download` killed mid-file, run again; bytes served twice. Target <= 1 MiB.
3. Fallback: time to the first byte from the mirror when the primary is dead (connection refused) or hangs
   (accepts, never answers), vs. the mirror alone. Target: under 1 s for a dead primary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from src.settings import ENV_DATA_DIR, ENV_MODELS_DIR, reload_settings  # noqa: E402
from tests.mock_hub import Faults, MockHub, make_random_file  # noqa: E402

REPO = "bench/big-model"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hearth-bench-"))
    os.environ[ENV_DATA_DIR] = str(work / "data")
    os.environ[ENV_MODELS_DIR] = str(work / "models")
    reload_settings()
    from src.utils.ModelManager import ModelManager

    size = args.size_mb << 20
    weights = make_random_file(work / "weights.bin", size, seed=7)
    files = {"config.json": b"{}", "tokenizer.json": b"{}", "model.safetensors": weights}
    rows: list[tuple[str, float, float | None, str, str]] = []
    try:
        with MockHub() as hub:
            hub.add_repo(REPO, files)
            url = hub.file_url(REPO, "model.safetensors")
            manager = ModelManager()
            manager.add_model(REPO, "bench")
            ours, curl = [], []
            for _ in range(args.runs):
                manager.delete("bench")
                started = time.perf_counter()
                manager.download("bench", endpoints=[hub.endpoint])
                ours.append(size / (time.perf_counter() - started) / 1e6)
                target = work / "curl.out"
                started = time.perf_counter()
                subprocess.run(["curl", "-sS", "-o", str(target), url], check=True)
                curl.append(size / (time.perf_counter() - started) / 1e6)
                target.unlink()
            ratio = statistics.median(ours) / statistics.median(curl)
            rows.append(("throughput (MB/s)", statistics.median(ours), statistics.median(curl), f"{ratio:.2f}x",
                         ">= 0.9x curl"))

            # Resume after SIGKILL.
            manager.delete("bench")
            hub.clear_log()
            hub.faults = Faults(throttle_bytes_per_s=64 << 20, path_glob="*model.safetensors")
            command = [sys.executable, str(ROOT / "main.py"), "models", "download", "bench", "--endpoint", hub.endpoint]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            part = work / "models" / "bench" / "model.safetensors.part"
            while not part.exists() or part.stat().st_size < size // 3:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
            hub.clear_faults()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            hub.wait_idle()
            served = sum(r.body_bytes_sent for r in hub.requests_for("*model.safetensors", method="GET"))
            rows.append(("bytes fetched again after SIGKILL", served - size, None, "-", "<= 1 MiB (1048576)"))

            # Fallback from a dead or hanging primary.
            def first_byte_s(endpoints: list[str]) -> float:
                manager.delete("bench")
                started = time.perf_counter()
                seen: list[float] = []

                def on_progress(progress: object) -> None:
                    if not seen and getattr(progress, "file_done", 0):
                        seen.append(time.perf_counter() - started)

                manager.download("bench", endpoints=endpoints, progress=on_progress)
                return seen[0]

            with MockHub() as dead, MockHub() as hanging:
                dead.stop_listener()
                hanging.faults = Faults(stall_s=30, applies_to="all", times=None)
                alone = statistics.median(first_byte_s([hub.endpoint]) for _ in range(args.runs))
                refused = statistics.median(first_byte_s([dead.endpoint, hub.endpoint]) for _ in range(args.runs))
                stalled = statistics.median(first_byte_s([hanging.endpoint, hub.endpoint]) for _ in range(args.runs))
                hanging.clear_faults()
            rows.append(("fallback, primary refused (s)", refused, alone, f"+{refused - alone:.3f} s", "< 1 s"))
            rows.append(("fallback, primary hangs (s)", stalled, alone, f"+{stalled - alone:.3f} s",
                         "probe timeout 1.5 s"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"file: {args.size_mb} MiB on 127.0.0.1, median of {args.runs}")
    print(f"{'metric':36} {'Hearth':>12} {'reference':>12} {'ratio':>10}  target")
    for name, value, reference, ratio, target in rows:
        ref = f"{reference:12.3f}" if reference is not None else f"{'-':>12}"
        print(f"{name:36} {value:12.3f} {ref} {ratio:>10}  {target}")
    print(json.dumps({name: value for name, value, *_ in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
