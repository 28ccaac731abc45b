#!/usr/bin/env python3
"""Throughput of Hearth's OpenAI-compatible server against llama.cpp's own server, same GGUF, same run.

    .venv/bin/python benchmarks/server.py [--concurrency 1 4 8] [--requests 3] [--max-tokens 64] [--rounds 2]
                                          [--batched-reference]

Both servers run in their own subprocess (so that the benchmark's clients never share a GIL with ours) and are
driven in turn by the same asyncio + httpx clients: C concurrent streaming clients, each sending --requests chat
requests one after the other (distinct prompts, greedy, repetition penalty 1, usage in the final chunk).
Per server and concurrency: total completion tokens/s over the batch's wall time, and the time to first token of
each request (mean and worst, queueing included). Rounds alternate which server goes first; the best round counts
(the machine is shared, noise only ever slows a run down).

- ours: ``create_app()`` over the shared LocalLLMEngine with the embedded model (whatever backend the engine
  picks for it: llama.cpp when xllamacpp is installed), uvicorn, FIFO queue, one generation at a time.
- reference: ``xllamacpp.Server``, which is llama.cpp's C++ HTTP server (llama-server) run in-process, on the same
  GGUF with the same threads and context, one slot (n_parallel=1, like our engine). With --batched-reference a
  second reference with n_parallel=C (continuous batching, which our one-at-a-time engine does not do) is added
  for information.
Target: ours >= 0.9x the reference's tokens/s at every concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m"
TOPICS = ["a lighthouse", "the moon", "a river", "bread", "a violin", "winter", "a library", "bees", "a train",
          "the desert", "coffee", "a garden"]  # fmt: skip


# --- the servers (child processes) ---------------------------------------------------------------------------------


def _gguf() -> Path:
    from src.utils.embedded_model import embedded_gguf_path

    return embedded_gguf_path()


def _threads_and_context(gguf: Path) -> tuple[int, int]:
    """What our llama.cpp backend uses (threads = usable cores, context = the GGUF's, at most 8192)."""
    try:
        from src.utils.cpu import compute_threads
        from src.utils.llamacpp_backend import context_window_from, read_gguf_metadata

        return compute_threads(), context_window_from(read_gguf_metadata(gguf, (), context_length=True))
    except ImportError:
        return len(os.sched_getaffinity(0)), 8192


def serve_ours() -> None:
    import socket

    import uvicorn

    from src.server import create_app
    from src.utils.generation import GenerationParams
    from src.utils.LocalLLMEngine import LocalLLMEngine

    engine = LocalLLMEngine.shared()
    loaded = engine.load_model(MODEL)
    engine.stream([{"role": "user", "content": "Hi"}], GenerationParams(max_new_tokens=4)).collect()  # warm up
    backend = getattr(loaded, "backend", None) or getattr(engine, "backend_name", None) or "?"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}", "backend": str(backend), "dtype": str(loaded.dtype)}),
          flush=True)  # fmt: skip
    import threading

    # Exit with the parent: it closes our stdin when done (or when it dies).
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    config = uvicorn.Config(create_app(max_queue=256), log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def serve_reference(parallel: int) -> None:
    import xllamacpp

    gguf = _gguf()
    threads, context = _threads_and_context(gguf)
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_ctx = context * parallel  # llama-server splits n_ctx between its slots
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.ui = False
    params.verbosity = -1
    server = xllamacpp.Server(params)
    print(json.dumps({"url": server.listening_address, "threads": threads, "n_ctx": context}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    del server


@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    url: str
    info: dict[str, object]


def start_child(name: str, args: list[str], env: dict[str, str]) -> Child:
    process = subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise SystemExit(f"{name} server did not start (run the child with --serve to see why)")
    info = json.loads(line)
    return Child(name, process, str(info.pop("url")).rstrip("/"), info)


def stop_child(child: Child) -> None:
    try:
        if child.process.stdin:
            child.process.stdin.close()
        child.process.terminate()
        child.process.wait(10)
    except Exception:  # noqa: BLE001
        child.process.kill()


# --- the clients -----------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float
    tokens: int


async def one_request(client, url: str, prompt: str, max_tokens: int) -> Sample:  # type: ignore[no-untyped-def]
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "repetition_penalty": 1.0,  # ours (also vLLM's name)
        "repeat_penalty": 1.0,  # llama.cpp's
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = None
    tokens = None
    chunks = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - started
    return Sample(ttft if ttft is not None else time.perf_counter() - started, tokens if tokens is not None else chunks)


async def run_batch(url: str, concurrency: int, requests: int, max_tokens: int) -> tuple[float, list[Sample]]:
    import httpx

    samples: list[Sample] = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        await one_request(client, url, "Say hi.", 4)  # warm connection and cache

        async def worker(index: int) -> None:
            for r in range(requests):
                topic = TOPICS[(index * requests + r) % len(TOPICS)]
                samples.append(await one_request(client, url, f"Write a short story about {topic}.", max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    return sum(s.tokens for s in samples) / wall, samples


@dataclass
class Result:
    tokens_per_s: float
    ttft_mean: float
    ttft_max: float
    tokens: int


def measure(url: str, concurrency: int, requests: int, max_tokens: int) -> Result:
    speed, samples = asyncio.run(run_batch(url, concurrency, requests, max_tokens))
    ttfts = [s.ttft for s in samples]
    return Result(speed, statistics.mean(ttfts), max(ttfts), sum(s.tokens for s in samples))


# --- main ------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=3, help="requests per client, one after the other")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batched-reference", action="store_true", help="also llama-server with n_parallel=C")
    parser.add_argument("--serve", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--parallel", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "ours":
        serve_ours()
        return 0
    if args.serve == "reference":
        serve_reference(args.parallel)
        return 0

    data_dir = tempfile.mkdtemp(prefix="hearth-bench-server-")
    env = {**os.environ, "HEARTH_DATA_DIR": data_dir}
    print(f"Starting servers (embedded model {MODEL}, GGUF {_gguf().name})...", file=sys.stderr)
    servers = [start_child("ours", ["--serve", "ours"], env), start_child("reference", ["--serve", "reference"], env)]
    batched: dict[int, Child] = {}
    try:
        print(f"ours: {servers[0].info}; reference: xllamacpp.Server (llama-server) {servers[1].info}", file=sys.stderr)
        best: dict[tuple[str, int], Result] = {}
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for concurrency in args.concurrency:
                for child in order:
                    result = measure(child.url, concurrency, args.requests, args.max_tokens)
                    print(f"  round {round_index + 1} {child.name:9} x{concurrency}: {result.tokens_per_s:6.1f} tok/s, "
                          f"TTFT mean {result.ttft_mean * 1000:6.0f} ms", file=sys.stderr)  # fmt: skip
                    key = (child.name, concurrency)
                    if key not in best or result.tokens_per_s > best[key].tokens_per_s:
                        best[key] = result
        if args.batched_reference:
            for concurrency in args.concurrency:
                child = start_child(f"batched{concurrency}", ["--serve", "reference", "--parallel", str(concurrency)], env)
                batched[concurrency] = child
                for _ in range(args.rounds):
                    result = measure(child.url, concurrency, args.requests, args.max_tokens)
                    key = ("batched", concurrency)
                    if key not in best or result.tokens_per_s > best[key].tokens_per_s:
                        best[key] = result
                stop_child(child)
    finally:
        for child in [*servers, *batched.values()]:
            stop_child(child)

    print()
    print(f"Server throughput, embedded model ({MODEL}), {args.requests} requests per client, max_tokens "
          f"{args.max_tokens}, greedy; best of {args.rounds} rounds")  # fmt: skip
    header = ("| clients | ours tok/s | reference tok/s | ratio | ours TTFT mean / max (ms) "
              "| reference TTFT mean / max (ms) |")  # fmt: skip
    if args.batched_reference:
        header += " batched ref tok/s | ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for concurrency in args.concurrency:
        o, r = best[("ours", concurrency)], best[("reference", concurrency)]
        row = (f"| {concurrency} | {o.tokens_per_s:.1f} | {r.tokens_per_s:.1f} | {o.tokens_per_s / r.tokens_per_s:.2f}x "
               f"| {o.ttft_mean * 1000:.0f} / {o.ttft_max * 1000:.0f} | {r.ttft_mean * 1000:.0f} / {r.ttft_max * 1000:.0f} |")  # fmt: skip
        if args.batched_reference:
            b = best[("batched", concurrency)]
            row += f" {b.tokens_per_s:.1f} | {o.tokens_per_s / b.tokens_per_s:.2f}x |"
        print(row)
    if best[("ours", args.concurrency[0])].tokens != best[("reference", args.concurrency[0])].tokens:
        print("(note: the two servers generated different token counts; greedy outputs differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
