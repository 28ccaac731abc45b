#!/usr/bin/env python3
"""Speed of Hearth's local chat path against plain ``model.generate`` on the same model, in the same run.

    .venv/bin/python benchmarks/chat_speed.py [--model smollm2-135m] [--tokens 64] [--runs 3] [--skip-gguf]

Rows: load time (our converted safetensors vs loading the GGUF directly), time to first token, decode tokens/s
and end-to-end time for the same greedy reply. Each figure is the median of --runs; runs alternate between ours
and the reference so that drift on a shared machine hits both. Target: our streaming path costs at most 10% over
plain generate (ratio >= 0.90 on speed rows, <= 1.10 on time rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.settings import EMBEDDED_MODEL_GGUF  # noqa: E402
from src.utils.LocalLLMEngine import LocalLLMEngine  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def median(values: list[float]) -> float:
    return statistics.median(values)


def plain_generate(engine: LocalLLMEngine, max_new_tokens: int) -> tuple[float, int]:
    """Seconds and tokens for ``model.generate`` alone: the same prompt, weights, dtype and sampling."""
    import torch

    model, tokenizer = engine._model, engine._tokenizer
    input_ids = engine.prepare_prompt(
        [__import__("src.utils.generation", fromlist=["ChatMessage"]).ChatMessage(**m) for m in PROMPT], max_new_tokens
    ).input_ids
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=1.0,
            pad_token_id=tokenizer.eos_token_id,
        )
    return time.perf_counter() - started, int(output.shape[1] - input_ids.shape[1])


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-gguf", action="store_true", help="skip the (slow) direct GGUF load reference")
    args = parser.parse_args()

    load_ours = []
    for _ in range(args.runs):
        engine = LocalLLMEngine(args.model)
        load_ours.append(engine.load_model().load_time_s)
        engine.unload_model()
    engine = LocalLLMEngine(args.model)
    loaded = engine.load_model()
    print(f"model {loaded.model_id} on {loaded.device} ({loaded.dtype}), {args.tokens} tokens, median of {args.runs}")

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
    plain_generate(engine, 4)
    our_ttft, our_speed, our_total, plain_ttft, plain_speed, plain_total = [], [], [], [], [], []
    tokens_ours = tokens_plain = 0
    for _ in range(args.runs):
        ttft, speed, total, tokens_ours = ours(engine, args.tokens)
        our_ttft.append(ttft), our_speed.append(speed), our_total.append(total)
        first, _ = plain_generate(engine, 1)
        total, tokens_plain = plain_generate(engine, args.tokens)
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
    overhead = median(our_total) / median(plain_total) - 1
    print(f"streaming overhead over plain generate: {overhead * 100:+.1f}% (target <= +10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
