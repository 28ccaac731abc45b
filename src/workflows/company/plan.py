"""AutoCoder's plan: tasks with dependencies, parsed from a Planner's reply and validated as a DAG."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from src.errors import HearthError


class PlanError(HearthError, ValueError):
    """The Planner's task list cannot be used (bad format, unknown dependency, cycle)."""


@dataclass(frozen=True)
class PlanTask:
    name: str
    description: str
    depends_on: tuple[str, ...] = field(default_factory=tuple)
    file: str | None = None


def parse_plan(text: str) -> list[PlanTask]:
    """Read a JSON list of ``{"name", "description", "depends_on", "file"}`` from a reply (the first JSON array in
    it, fenced or not), then validate it."""
    match = re.search(r"\[.*\]", text, re.DOTALL)
    if match is None:
        raise PlanError("The plan has no JSON list of tasks.")
    try:
        raw = json.loads(match.group(0))
    except ValueError as exc:
        raise PlanError(f"The plan's task list is not valid JSON: {exc}.") from exc
    if not isinstance(raw, list) or not raw:
        raise PlanError("The plan's task list is empty.")
    tasks = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not str(item.get("name", "")).strip():
            raise PlanError(f"Task {index + 1} has no name.")
        depends = item.get("depends_on") or []
        if isinstance(depends, str):
            depends = [depends]
        if not isinstance(depends, list):  # 3, true, {...}: junk that must fail as a plan error, not a TypeError
            raise PlanError(f"Task {index + 1}'s depends_on is not a list of task names.")
        tasks.append(
            PlanTask(
                name=str(item["name"]).strip(),
                description=str(item.get("description", "")).strip(),
                depends_on=tuple(str(d).strip() for d in depends if str(d).strip()),
                file=(str(item["file"]).strip() or None) if item.get("file") else None,
            )
        )
    return order_tasks(tasks)


def order_tasks(tasks: list[PlanTask]) -> list[PlanTask]:
    """Dependency order (Kahn's algorithm, stable: ties keep the Planner's order). Raises ``PlanError`` for a
    duplicate name, a dependency on an unknown task, a task depending on itself, or a cycle (named)."""
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PlanError(f"Task names must be unique: {', '.join(duplicates)}.")
    known = set(names)
    for task in tasks:
        unknown = [d for d in task.depends_on if d not in known]
        if unknown:
            raise PlanError(f"Task {task.name!r} depends on unknown task(s): {', '.join(unknown)}.")
        if task.name in task.depends_on:
            raise PlanError(f"Task {task.name!r} depends on itself.")
    remaining = {t.name: set(t.depends_on) for t in tasks}
    ordered: list[PlanTask] = []
    by_name = {t.name: t for t in tasks}
    while remaining:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            raise PlanError(f"The plan has a dependency cycle among: {', '.join(n for n in names if n in remaining)}.")
        for name in ready:
            ordered.append(by_name[name])
            del remaining[name]
            for deps in remaining.values():
                deps.discard(name)
    return ordered
