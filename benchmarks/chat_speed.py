#!/usr/bin/env python3
"""Speed of Hearth's local chat paths against their references on the same model, in the same run.

    .venv/bin/python benchmarks/chat_speed.py [--model smollm2-135m] [--tokens 64] [--runs 3] [--skip-gguf]
                                              [--skip-transformers] [--skip-llamacpp]

Table 1, transformers backend vs plain ``model.generate`` on the same converted weights in bf16: load time (ours vs
loading the GGUF directly), time to first token, decode tokens/s and end-to-end time for the same greedy reply.
Target: our streaming path at least as fast as plain generate (ratio >= 0.90 on speed rows, <= 1.10 on time rows).
Table 1b: each speed-up of the transformers path alone (generate() in fp32 and bf16, the lean decoder in bf16 and
with int8 weights).

Table 2, both backends vs the llama.cpp reference: xllamacpp used directly in the plainest way (its server's
streaming chat completion on the same GGUF file, same threads), time to first token and decode tokens/s. Targets:
our llama.cpp backend >= 0.95x the reference, our transformers backend >= 0.5x. Also how long a cancel takes to
end the stream (time from ``cancel()`` to the end of the iteration) on each backend.

Each figure is the median of --runs; runs alternate between ours and the references so that drift on a shared
machine hits all of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.settings import BACKEND_LLAMACPP, BACKEND_TRANSFORMERS, EMBEDDED_MODEL_GGUF
from src.utils.catalog import locate_model
from src.utils.cpu import compute_threads
from src.utils.generation import ChatMessage
from src.utils.llamacpp_backend import context_window_from, read_gguf_metadata
from src.utils.LocalLLMEngine import LocalLLMEngine

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def median(values: list[float]) -> float:
    return statistics.median(values)


class PlainGenerate:
    """The reference for the transformers path: the same converted weights loaded by transformers in bf16 (fp32
    where the CPU lacks bf16) and run by ``model.generate`` alone, as most Python chat apps do."""

    def __init__(self, engine: LocalLLMEngine) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from src.utils.LocalLLMEngine import pick_dtype

        self.dtype = pick_dtype("cpu")
        self.model = AutoModelForCausalLM.from_pretrained(engine.loaded.folder, dtype=self.dtype).eval()
        self.eos = engine._backend.tokenizer.eos_token_id
        self.input_ids = engine.prepare_prompt([ChatMessage(**m) for m in PROMPT], 64).input_ids
        torch.set_grad_enabled(False)

    def run(self, max_new_tokens: int) -> tuple[float, int]:
        """Seconds and tokens for ``model.generate`` alone: the same prompt, weights and sampling."""
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=self.input_ids,
                attention_mask=torch.ones_like(self.input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                repetition_penalty=1.0,
                pad_token_id=self.eos,
            )
        return time.perf_counter() - started, int(output.shape[1] - self.input_ids.shape[1])


def transformers_engine(model: str, *, dtype: str | None = None, lean: bool = True) -> LocalLLMEngine:
    """Our transformers backend loaded under the given HEARTH_DTYPE / HEARTH_LEAN_DECODER."""
    import os

    from src.settings import ENV_DTYPE, ENV_LEAN_DECODER, reload_settings

    saved = {name: os.environ.get(name) for name in (ENV_DTYPE, ENV_LEAN_DECODER)}
    os.environ[ENV_LEAN_DECODER] = "1" if lean else "0"
    if dtype:
        os.environ[ENV_DTYPE] = dtype
    else:
        os.environ.pop(ENV_DTYPE, None)
    reload_settings()
    try:
        engine = LocalLLMEngine(model, backend=BACKEND_TRANSFORMERS)
        engine.load_model()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload_settings()
    return engine


def ours(engine: LocalLLMEngine, max_new_tokens: int) -> tuple[float, float, float, int]:
    """(ttft, decode tokens/s, total seconds, tokens) for the streaming path, consumed piece by piece."""
    started = time.perf_counter()
    stream = engine.stream(PROMPT, temperature=0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    stats = stream.result.stats
    return first or total, stats.tokens_per_s or 0.0, total, stats.completion_tokens


class LlamaCppReference:
    """xllamacpp the plainest way: a Server on the GGUF file with the given threads, streaming chat completions."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx = n_ctx
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        self.server = xllamacpp.Server(params)
        self.server.handle_metrics()  # its task loop must run before it may be destroyed (see LlamaCppBackend)

    def close(self) -> None:
        self.server = None

    def run(self, max_tokens: int) -> tuple[float, float, float, int]:
        started = time.perf_counter()
        times: list[float] = []

        def on_chunk(chunk: dict) -> bool:
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    times.append(time.perf_counter())
            return False

        body = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        self.server.handle_chat_completions(body, on_chunk)
        total = time.perf_counter() - started
        speed = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        return times[0] - started, speed, total, len(times)


def cancel_latency(engine: LocalLLMEngine) -> float:
    """Seconds from ``cancel()`` (after the 5th piece) to the end of the stream."""
    stream = engine.stream(PROMPT, temperature=0.7, seed=1, max_new_tokens=400)
    for _, _ in zip(range(5), stream, strict=False):
        pass
    started = time.perf_counter()
    stream.cancel()
    for _ in stream:
        pass
    return time.perf_counter() - started


def backends_table(args: argparse.Namespace) -> None:
    """Table 2: our two backends and the llama.cpp reference, same GGUF (the transformers copy is converted from
    it), same prompt, greedy, same number of threads."""
    files = locate_model(args.model)
    if files.gguf is None:
        print(f"\n{args.model} has no GGUF file: no llama.cpp comparison")
        return
    threads = compute_threads()
    # Each path runs with nothing else loaded, as in the app (the engine holds one model): llama.cpp and torch share
    # one OpenMP runtime (both link libgomp.so.1), and an idle llama.cpp server alone makes OpenMP stop spinning for
    # torch (measured: the transformers path at 37 instead of 60 tok/s). So every round loads, warms up, measures
    # and frees each path in turn; the rounds alternate so that drift on a shared machine hits all of them.
    window = context_window_from(read_gguf_metadata(files.gguf, (), context_length=True))  # as our backend sizes it

    def measure_reference() -> tuple[float, float, float, int]:
        reference = LlamaCppReference(files.gguf, threads, window)
        try:
            reference.run(4)
            return reference.run(args.tokens)
        finally:
            reference.close()

    def measure_engine(backend: str) -> tuple[float, float, float, int]:
        engine = LocalLLMEngine(args.model, backend=backend)
        try:
            engine.load_model()
            ours(engine, 4)
            return ours(engine, args.tokens)
        finally:
            engine.unload_model()

    rows: dict[str, tuple[list[float], list[float]]] = {"fast": ([], []), "slow": ([], []), "ref": ([], [])}
    counts = {}
    paths = [("ref", measure_reference), ("fast", lambda: measure_engine(BACKEND_LLAMACPP))]
    if not args.skip_transformers:
        paths.append(("slow", lambda: measure_engine(BACKEND_TRANSFORMERS)))
    for _ in range(args.runs):
        for name, run in paths:
            ttft, speed, _, tokens = run()
            rows[name][0].append(ttft)
            rows[name][1].append(speed)
            counts[name] = tokens
    ref_ttft, ref_speed = median(rows["ref"][0]), median(rows["ref"][1])
    print(f"\nllama.cpp reference: xllamacpp Server, {files.gguf.name}, {threads} threads, {args.tokens} tokens, "
          f"median of {args.runs}")
    print(f"{'path':34} {'TTFT (s)':>9} {'ratio':>6} {'decode tok/s':>13} {'ratio':>6}  target")
    print(f"{'llama.cpp reference (xllamacpp)':34} {ref_ttft:9.3f} {1:6.2f} {ref_speed:13.1f} {1:6.2f}")
    table = [("Hearth llama.cpp backend", "fast", ">= 0.95x")]
    if not args.skip_transformers:
        table.append(("Hearth transformers backend", "slow", ">= 0.50x"))
    for label, key, target in table:
        ttft, speed = median(rows[key][0]), median(rows[key][1])
        # TTFT ratio as reference/ours, so that > 1 is better on both columns.
        print(f"{label:34} {ttft:9.3f} {ref_ttft / ttft:6.2f} {speed:13.1f} {speed / ref_speed:6.2f}  {target}")
    if len(set(counts.values())) > 1:
        print(f"note: tokens generated: {counts}")
    latencies = {}
    for label, backend in (("llama.cpp", BACKEND_LLAMACPP), ("transformers", BACKEND_TRANSFORMERS)):
        if backend == BACKEND_TRANSFORMERS and args.skip_transformers:
            continue
        engine = LocalLLMEngine(args.model, backend=backend)
        engine.load_model()
        latencies[label] = median([cancel_latency(engine) for _ in range(args.runs)])
        engine.unload_model()
    print("cancel -> stream ended (ms): " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in latencies.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-gguf", action="store_true", help="skip the (slow) direct GGUF load reference")
    parser.add_argument("--skip-transformers", action="store_true", help="only the llama.cpp comparison")
    parser.add_argument("--skip-llamacpp", action="store_true", help="only the transformers comparison")
    args = parser.parse_args()
    if not args.skip_transformers:
        transformers_table(args)
        variants_table(args)
    if not args.skip_llamacpp:
        backends_table(args)
    return 0


def transformers_table(args: argparse.Namespace) -> None:
    """Table 1: our transformers path (lean decoder, int8 weights by default) against plain model.generate on the
    same weights."""
    load_ours = []
    for _ in range(args.runs):
        engine = LocalLLMEngine(args.model, backend=BACKEND_TRANSFORMERS)
        load_ours.append(engine.load_model().load_time_s)
        engine.unload_model()
    engine = LocalLLMEngine(args.model, backend=BACKEND_TRANSFORMERS)
    loaded = engine.load_model()
    # The reference runs on the engine's thread too: one torch thread pool in the process, as in the app.
    plain = engine.run_on_engine_thread(lambda: PlainGenerate(engine))
    print(f"model {loaded.model_id} on {loaded.device} (ours: {loaded.dtype} weights, lean decoder; reference: "
          f"{str(plain.dtype).removeprefix('torch.')} model.generate), {args.tokens} tokens, median of {args.runs}")

    load_gguf = None
    if not args.skip_gguf and args.model == "smollm2-135m":
        import torch
        from transformers import AutoModelForCausalLM

        from src.utils.embedded_model import embedded_gguf_path

        gguf = embedded_gguf_path()
        started = time.perf_counter()
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=Path(EMBEDDED_MODEL_GGUF).name, dtype=torch.float32)
        load_gguf = time.perf_counter() - started

    # Warm up both paths (first calls allocate caches).
    ours(engine, 4)
    engine.run_on_engine_thread(lambda: plain.run(4))
    our_ttft, our_speed, our_total, plain_ttft, plain_speed, plain_total = [], [], [], [], [], []
    tokens_ours = tokens_plain = 0
    for _ in range(args.runs):
        ttft, speed, total, tokens_ours = ours(engine, args.tokens)
        our_ttft.append(ttft), our_speed.append(speed), our_total.append(total)
        first, _ = engine.run_on_engine_thread(lambda: plain.run(1))
        total, tokens_plain = engine.run_on_engine_thread(lambda: plain.run(args.tokens))
        plain_ttft.append(first), plain_total.append(total)
        plain_speed.append((tokens_plain - 1) / (total - first))

    rows = [
        ("load time (s)", median(load_ours), load_gguf, "GGUF direct, 1 run"),
        ("time to first token (s)", median(our_ttft), median(plain_ttft), "generate(max_new_tokens=1)"),
        ("decode tokens/s", median(our_speed), median(plain_speed), "plain model.generate"),
        (f"end-to-end, {args.tokens} tokens (s)", median(our_total), median(plain_total), "plain model.generate"),
    ]
    print(f"{'metric':34} {'Hearth':>10} {'reference':>10} {'ratio':>7}  reference is")
    for name, value, reference, what in rows:
        ratio = f"{value / reference:7.2f}" if reference else "      -"
        reference_text = f"{reference:10.3f}" if reference is not None else "         -"
        print(f"{name:34} {value:10.3f} {reference_text} {ratio}  {what}")
    if tokens_ours != tokens_plain:
        print(f"note: our reply had {tokens_ours} tokens, the reference {tokens_plain}")
    engine.unload_model()


def variants_table(args: argparse.Namespace) -> None:
    """Table 1b: each speed-up of the transformers path alone, our streaming path each time."""
    variants = [
        ("generate(), fp32", {"dtype": "float32", "lean": False}),
        ("generate(), bf16", {"dtype": "bfloat16", "lean": False}),
        ("lean decoder, bf16", {"dtype": "bfloat16", "lean": True}),
        ("lean decoder, int8 (default)", {"dtype": None, "lean": True}),
    ]
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for label, options in variants:
            engine = transformers_engine(args.model, **options)
            ours(engine, 4)
            results.setdefault(label, []).append(ours(engine, args.tokens)[1])
            engine.unload_model()
    base = median(results["generate(), bf16"])
    print(f"\n{'transformers path variant':34} {'decode tok/s':>13} {'vs generate() bf16':>19}")
    for label, _ in variants:
        speed = median(results[label])
        print(f"{label:34} {speed:13.1f} {speed / base:19.2f}")
    print("(static KV cache and torch.compile were measured earlier: no gain, and a 125 s compile; see the README)")


if __name__ == "__main__":
    sys.exit(main())
