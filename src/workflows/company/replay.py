"""Replay a past company run: its dialogue, phase by phase, from the run folder's ``events.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from src.errors import HearthError
from src.workflows.company.memory import EVENTS_FILE


def load_events(path: Path) -> list[dict]:
    """The events of the run at ``path`` (the run folder, its .log file, or its events.jsonl)."""
    folder = path if path.is_dir() else path.parent
    events_file = folder / EVENTS_FILE
    if not events_file.is_file():
        raise HearthError(f"No company run found at {path} (expected {EVENTS_FILE} in the run's folder).")
    events = []
    for number, line in enumerate(events_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            # A run killed mid-write leaves at most one torn last line; everything before it is still good.
            continue
    return events


def replay_lines(path: Path) -> Iterator[str]:
    for event in load_events(path):
        kind, text = event.get("kind"), (event.get("text") or "").rstrip()
        if kind == "task":
            yield f"Task: {text}"
        elif kind == "phase":
            yield f"\n== {event.get('phase')} =="
        elif kind == "utterance":
            yield f"[{event.get('role')}] (turn {event.get('turn', 0)})\n{text}\n"
        elif kind in ("notice", "test"):
            yield f"({text})"
        elif kind == "code":
            yield f"[code change: {(event.get('data') or {}).get('file', '')}]"
        elif kind == "summary":
            yield f"\n{text}"
