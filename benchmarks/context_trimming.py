#!/usr/bin/env python3
"""How long fitting a long chat into the context window takes (src/utils/context_trimming.py), on the real engine.

    .venv/bin/python benchmarks/context_trimming.py [--backend llamacpp|transformers] [--window 2048]

The embedded model, loaded with a ``--window``-token context. Chats of alternating questions and answers (plus a
system prompt and a last question) of growing length are fitted by ``LocalLLMEngine.prepare_prompt``, and next to
it, in the same run, by the reference: the loop it replaces (leave out the oldest turn, re-encode the whole rest,
until it fits), run only on the chats short enough for it to end in reasonable time. Printed: milliseconds,
encodes, and the reference's time over the new one. Target (issue 13): a 100,000-message chat in well under a
second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REFERENCE_UP_TO = 2_000  # messages: beyond, the old loop takes minutes


def conversation(messages: int) -> list:
    from src.utils.generation import ChatMessage

    chat = [ChatMessage("system", "You are Hearth, a terse assistant.")]
    for turn in range((messages - 2) // 2):
        chat.append(ChatMessage("user", f"Question {turn}: tell me a fact about the number {turn}."))
        chat.append(ChatMessage("assistant", f"The number {turn} is a whole number."))
    chat.append(ChatMessage("user", "And now?"))
    return chat


def reference_fit(chat: list, encode, budget: int) -> int:
    """The loop before issue 13: once per dropped message, the whole rest encoded again."""
    kept = list(chat)
    token_ids = encode(kept)
    while len(token_ids) > budget:
        droppable = [i for i, m in enumerate(kept[:-1]) if m.role != "system"]
        if not droppable:
            break
        del kept[droppable[0]]
        first = next((i for i, m in enumerate(kept[:-1]) if m.role != "system"), None)
        if first is not None and kept[first].role == "assistant":
            del kept[first]
        token_ids = encode(kept)
    return len(token_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--window", type=int, default=2048)
    args = parser.parse_args()

    from src.utils.LocalLLMEngine import LocalLLMEngine

    engine = LocalLLMEngine(context_window=args.window, backend=args.backend)
    engine.load_model()
    backend = engine._loaded_backend()[1]
    encode = backend.encode_chat
    calls = [0]

    def counting(chat):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return encode(chat)

    backend.encode_chat = counting
    max_new = 256
    print(f"\n{args.backend}, {args.window}-token window, {max_new} tokens kept for the reply\n")
    print("| messages | prepare_prompt ms | encodes | reference ms | reference encodes | reference / new |")
    print("|---|---|---|---|---|---|")
    try:
        for size in (200, 2_000, 20_000, 100_000):
            chat = conversation(size)
            calls[0] = 0
            started = time.perf_counter()
            prompt = engine.prepare_prompt(chat, max_new)
            new_ms = (time.perf_counter() - started) * 1000
            new_calls = calls[0]
            reference = "-", "-", "-"
            if size <= REFERENCE_UP_TO:
                calls[0] = 0
                started = time.perf_counter()
                tokens = reference_fit(chat, counting, args.window - max_new)
                reference_ms = (time.perf_counter() - started) * 1000
                assert tokens == prompt.prompt_tokens, (tokens, prompt.prompt_tokens)  # the same choice
                reference = f"{reference_ms:.0f}", str(calls[0]), f"{reference_ms / new_ms:.0f}x"
            print(f"| {size:,} | {new_ms:.0f} | {new_calls} | {reference[0]} | {reference[1]} | {reference[2]} |")
    finally:
        engine.unload_model()


if __name__ == "__main__":
    main()
