"""Experiential co-learning, simplified: what went wrong in past runs and what fixed it, recalled for new tasks.

After a run, each problem the company met (a failed test run, review comments asking for changes) is paired with
the fix that followed (the files the next modification changed) and whether it helped (the next test run passed,
or the next review found nothing). The pool is a JSON file; with the chain option ``with_memory`` the runner adds the
experiences most similar to the task (BM25) to its prompts. ``python main.py company memorize <WareHouse dir>``
builds the pool from past runs' ``events.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from src.settings import get_settings
from src.utils.files import write_atomically
from src.workflows.company.context import BM25, tokenize

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
MAX_TEXT = 600  # an experience is a hint, not a transcript: keep prompts small for small models


@dataclass(frozen=True)
class Experience:
    task: str
    problem: str
    fix: str
    helped: bool
    source: str  # the run folder it came from

    def as_prompt(self) -> str:
        outcome = "it helped" if self.helped else "it did not help"
        return f"- Problem: {self.problem}\n  Fix tried: {self.fix} ({outcome})"


def default_pool_path() -> Path:
    return get_settings().data_dir / "company_experience.json"


class ExperiencePool:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_pool_path()
        self.experiences: list[Experience] = self._load()

    def _load(self) -> list[Experience]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [Experience(**item) for item in raw]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("Ignoring the unreadable experience pool %s (%s)", self.path, exc)
            return []

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps([asdict(e) for e in self.experiences], ensure_ascii=False, indent=1).encode("utf-8")
        write_atomically(self.path, data)

    def add(self, experiences: list[Experience]) -> int:
        """Add the ones not already there (same problem and fix); returns how many were new."""
        known = {(e.problem, e.fix) for e in self.experiences}
        new = [e for e in experiences if (e.problem, e.fix) not in known]
        self.experiences.extend(new)
        return len(new)

    def similar(self, text: str, k: int = 3) -> list[Experience]:
        """The ``k`` experiences most similar to ``text`` (helpful ones first among equals)."""
        if not self.experiences:
            return []
        scores = BM25([tokenize(f"{e.task} {e.problem} {e.fix}") for e in self.experiences]).scores(tokenize(text))
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], not self.experiences[i].helped, i))
        return [self.experiences[i] for i in ranked[:k] if scores[i] > 0]

    def prompt_for(self, text: str, k: int = 3) -> str:
        found = self.similar(text, k)
        if not found:
            return ""
        return "Lessons from earlier projects:\n" + "\n".join(e.as_prompt() for e in found)


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def experiences_from_run(folder: Path) -> list[Experience]:
    """Problem -> fix -> outcome triples from a run's ``events.jsonl`` (written by the runner)."""
    path = folder / EVENTS_FILE
    try:
        events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    task = next((e.get("text", "") for e in events if e.get("kind") == "task"), "") or folder.name
    out: list[Experience] = []
    problem: str | None = None
    changed: list[str] = []

    def outcome(solved: bool, next_problem: str | None) -> None:
        nonlocal problem, changed
        if problem is not None and changed:
            out.append(Experience(task, _cut(problem), _cut("changed " + ", ".join(changed)), solved, folder.name))
        problem, changed = next_problem, []

    for event in events:
        kind, text = event.get("kind"), event.get("text", "") or ""
        data = event.get("data") or {}
        if kind == "test" and "ok" in data:
            outcome(bool(data["ok"]), None if data["ok"] else text)
        elif kind == "utterance" and event.get("phase") == "CodeReviewComment" and "review" in str(event.get("role", "")).lower():
            finished = "<INFO> Finished".lower() in text.lower()
            outcome(finished, None if finished else text)
        elif kind == "code" and problem is not None:
            changed_file = data.get("file") or data.get("path")
            if changed_file and changed_file not in changed:
                changed.append(changed_file)
    return out


def memorize(warehouse: Path, pool: ExperiencePool | None = None) -> tuple[int, int]:
    """Add the experiences of every run under ``warehouse`` (or of one run folder). Returns (runs, new)."""
    pool = pool or ExperiencePool()
    folders = [warehouse] if (warehouse / EVENTS_FILE).is_file() else sorted(p for p in warehouse.iterdir() if (p / EVENTS_FILE).is_file())
    new = sum(pool.add(experiences_from_run(folder)) for folder in folders)
    pool.save()
    return len(folders), new
