"""The experience pool: problems and fixes extracted from a run's events, recalled by similarity."""

from __future__ import annotations

import json
from pathlib import Path

from src.workflows.company.memory import EVENTS_FILE, ExperiencePool, experiences_from_run, memorize


def write_run(folder: Path, task: str, events: list[dict]) -> Path:
    folder.mkdir(parents=True)
    lines = [{"kind": "task", "text": task}, *events]
    (folder / EVENTS_FILE).write_text("\n".join(json.dumps(e) for e in lines), encoding="utf-8")
    return folder


def test_a_failed_test_then_a_fix_then_a_pass_is_a_helpful_experience(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "calc_Org_1",
        "a calculator",
        [
            {"kind": "test", "text": "ZeroDivisionError: division by zero in divide()", "data": {"ok": False}},
            {"kind": "code", "text": "diff", "data": {"file": "calc.py"}},
            {"kind": "test", "text": "ran fine", "data": {"ok": True}},
            {"kind": "utterance", "phase": "CodeReviewComment", "role": "Code Reviewer",
             "text": "add input validation for letters"},
            {"kind": "code", "text": "diff", "data": {"file": "main.py"}},
            {"kind": "utterance", "phase": "CodeReviewComment", "role": "Code Reviewer", "text": "<INFO> Finished"},
        ],
    )
    found = experiences_from_run(run)
    assert [(e.problem[:17], e.fix, e.helped) for e in found] == [
        ("ZeroDivisionError", "changed calc.py", True),
        ("add input validat", "changed main.py", True),
    ]


def test_memorize_builds_a_pool_and_recalls_similar_problems(tmp_path: Path) -> None:
    warehouse = tmp_path / "WareHouse"
    write_run(warehouse / "a_Org_1", "a calculator", [
        {"kind": "test", "text": "ZeroDivisionError when dividing by zero", "data": {"ok": False}},
        {"kind": "code", "data": {"file": "calc.py"}},
        {"kind": "test", "data": {"ok": True}},
    ])
    write_run(warehouse / "b_Org_2", "a todo list", [
        {"kind": "test", "text": "FileNotFoundError: todo.json missing on first start", "data": {"ok": False}},
        {"kind": "code", "data": {"file": "storage.py"}},
        {"kind": "test", "data": {"ok": True}},
    ])
    pool = ExperiencePool(tmp_path / "pool.json")
    assert memorize(warehouse, pool) == (2, 2)
    assert memorize(warehouse, ExperiencePool(tmp_path / "pool.json")) == (2, 0), "no duplicates on a second pass"
    again = ExperiencePool(tmp_path / "pool.json")
    best = again.similar("calculator divide by zero crash", k=1)
    assert best and "ZeroDivisionError" in best[0].problem
    assert "todo.json" in again.prompt_for("todo app file missing at start")
    assert again.similar("quantum chromodynamics", k=3) == []


def test_with_memory_adds_lessons_to_the_coding_prompt(tmp_path: Path, monkeypatch) -> None:
    """A run with ``with_memory`` sees the most similar past experience in its Coding prompt (scripted fake model)."""
    import shutil

    from src.workflows.company.runner import CompanyRun
    from tests.fakes import ScriptedFakeModel

    pool = ExperiencePool()  # the default pool, in the test's own data dir
    from src.workflows.company.memory import Experience

    pool.add([Experience("a calculator", "ZeroDivisionError when dividing by zero", "changed calc.py", True, "old")])
    pool.save()
    config = tmp_path / "MemoryConfig"
    shutil.copytree(Path(__file__).resolve().parents[2] / "assets" / "company" / "Default", config)
    chain = json.loads((config / "ChatChainConfig.json").read_text())
    chain["with_memory"] = "True"
    chain["chain"] = [step for step in chain["chain"] if step["phase"] == "Coding"]
    (config / "ChatChainConfig.json").write_text(json.dumps(chain))
    fake = ScriptedFakeModel(["main.py\n```python\nprint(1 / 1)\n```\n<INFO> Finished"] * 5)
    CompanyRun("a calculator that divides numbers", "calc", config=config, model=fake, warehouse_root=tmp_path / "wh").run()
    coding_prompt = fake.calls[0][-1].content
    assert "Lessons from earlier projects" in coding_prompt and "ZeroDivisionError" in coding_prompt
