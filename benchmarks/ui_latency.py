#!/usr/bin/env python3
"""How much latency the GUI adds on top of the engine, measured in a real browser (headless Chromium).

    .venv/bin/python benchmarks/ui_latency.py [--runs 3] [--tokens 48]

Per run: a message is sent with Enter in the app (``main.py --web``, embedded model). Measured:
- send -> first reply text visible in the page, next to the engine's own time to first token in the same run
  (the difference is what the UI adds: event transport, saving the message, building the prompt, drawing);
- token -> screen: for every piece the engine produced (timestamped in the app, HEARTH_UI_TRACE), the time until
  the page showed it (the browser records its text on every animation frame), median over the reply.
Target: the UI adds under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import AppServer, launch_browser, open_app, press_enter, type_into  # noqa: E402

RECORDER = """() => {
  window.__snaps = [];
  let last = null;
  const tick = () => {
    const text = document.body.textContent;
    if (text !== last) { window.__snaps.push([Date.now(), text]); last = text; }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def squash(text: str) -> str:
    """Letters and digits only: markdown rendering and the accessibility tree change spacing and punctuation."""
    return re.sub(r"\W+", "", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="hearth-ui-bench-"))
    trace = work / "trace.jsonl"
    env = {"HEARTH_DATA_DIR": str(work / "data"), "HEARTH_MAX_NEW_TOKENS": str(args.tokens), "HEARTH_UI_TRACE": str(trace)}
    os.environ.update({"HEARTH_DATA_DIR": env["HEARTH_DATA_DIR"]})
    from src.db.database import get_database
    from src.db.models import Message
    from src.settings import reload_settings

    reload_settings()
    send_to_text, engine_ttft, token_to_screen = [], [], []
    with AppServer([sys.executable, "main.py", "--web", "--port", "{port}"], env=env) as server, sync_playwright() as pw:
        browser = launch_browser(pw)
        page = open_app(browser, server.url)
        # Warm up: the first reply also loads the model.
        type_into(page, "Message", "Hello!")
        press_enter(page)
        page.get_by_role("button", name="Send", exact=True).wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        for run in range(args.runs):
            trace.unlink(missing_ok=True)
            page.get_by_role("button", name="New chat").click()
            type_into(page, "Message", f"Tell me a short story about lighthouse number {run + 1}.")
            page.evaluate(RECORDER)
            sent = time.time()
            press_enter(page)
            page.get_by_role("button", name="Stop", exact=True).wait_for(timeout=30_000)
            page.get_by_role("button", name="Send", exact=True).wait_for(timeout=120_000)
            page.wait_for_timeout(300)
            snaps = [(t / 1000.0, squash(text)) for t, text in page.evaluate("() => window.__snaps")]
            pieces = [json.loads(line) for line in trace.read_text().splitlines()]
            reply = Message.select().where(Message.role == "assistant").order_by(Message.id.desc()).execute(get_database())[0]
            engine_ttft.append(reply.time_to_first_token_s)
            delays = []
            for piece in pieces:
                target = squash(piece["text"])
                if not target:
                    continue
                seen = next((t for t, text in snaps if target in text), None)
                if seen is not None:
                    delays.append(seen - piece["t"])
            first_seen = next((t for t, text in snaps if squash(pieces[0]["text"]) and squash(pieces[0]["text"]) in text), None)
            if first_seen is not None:
                send_to_text.append(first_seen - sent)
            if delays:
                token_to_screen.append(statistics.median(delays))
        browser.close()
    med = statistics.median
    ui_first = med(send_to_text) - med(engine_ttft)
    print(f"{args.runs} runs, {args.tokens} tokens, embedded model, headless Chromium on this machine")
    print(f"{'metric':44} {'value (ms)':>11} {'reference (ms)':>15}  note")
    print(f"{'send -> first reply text on screen':44} {med(send_to_text) * 1000:11.0f} {med(engine_ttft) * 1000:15.0f}"
          "  reference: the engine's own time to first token")
    print(f"{'  of which the UI adds':44} {ui_first * 1000:11.0f} {'':>15}  target < 100")
    print(f"{'token leaves engine -> on screen (median)':44} {med(token_to_screen) * 1000:11.0f} {'':>15}  target < 100"
          " (updates are batched at <= 30/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
