"""AutoCoder's context service (ast chunks ranked with BM25 in a token budget) and plan DAG validation."""

from __future__ import annotations

import json

import pytest

from src.workflows.company.context import chunk_python, estimate_tokens, select_context, tokenize
from src.workflows.company.plan import PlanError, PlanTask, order_tasks, parse_plan

GAME = '''import random

BOARD_SIZE = 15


class Board:
    def __init__(self):
        self.cells = [[0] * BOARD_SIZE for _ in range(BOARD_SIZE)]

    def place(self, row, col, player):
        self.cells[row][col] = player


def check_winner(board, row, col):
    """Five in a row wins."""
    return False


def restart_game():
    return Board()
'''

UTILS = '''def format_score(score):
    return f"{score:04d}"


def load_settings(path):
    with open(path) as handle:
        return handle.read()
'''


def test_chunks_follow_functions_and_classes() -> None:
    chunks = chunk_python("game.py", GAME)
    assert [(c.name, c.kind) for c in chunks] == [
        ("module", "module"), ("Board", "class"), ("check_winner", "function"), ("restart_game", "function")
    ]
    assert "BOARD_SIZE = 15" in chunks[0].text and "def place" in chunks[1].text
    assert chunk_python("broken.py", "def oops(:\n  pass")[0].kind == "module"  # junk still becomes context


def test_tokenize_splits_identifiers() -> None:
    assert {"check_winner", "check", "winner", "restartgame", "restart", "game"} <= set(
        tokenize("check_winner restartGame")
    )


def test_the_most_relevant_chunks_fit_the_budget() -> None:
    files = {"game.py": GAME, "utils.py": UTILS}
    context = select_context(files, "fix the restart button: restart_game should reset the board", budget_tokens=60)
    assert "def restart_game" in context
    assert "load_settings" not in context
    assert estimate_tokens(context) <= 60 + 5
    everything = select_context(files, "anything", budget_tokens=10_000)
    assert all(name in everything for name in ("restart_game", "load_settings", "format_score", "class Board"))
    assert everything.index("game.py") < everything.index("utils.py"), "kept in file order"
    assert select_context(files, "restart", budget_tokens=0) == ""


def test_plan_is_ordered_by_dependencies() -> None:
    reply = """Here is the plan:
```json
[{"name": "ui", "description": "draw the board", "depends_on": ["board"], "file": "ui.py"},
 {"name": "board", "description": "board model"},
 {"name": "main", "description": "wire it", "depends_on": ["ui", "board"], "file": "main.py"}]
```
<INFO> Planned"""
    assert [t.name for t in parse_plan(reply)] == ["board", "ui", "main"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([PlanTask("a", "", ("b",)), PlanTask("b", "", ("a",))], "cycle"),
        ([PlanTask("a", "", ("ghost",))], "unknown task"),
        ([PlanTask("a", "", ("a",))], "itself"),
        ([PlanTask("a", ""), PlanTask("a", "")], "unique"),
    ],
)
def test_bad_plans_are_rejected(tasks: list[PlanTask], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        order_tasks(tasks)


@pytest.mark.parametrize("reply", ["no json here", "[not json]", "[]", '[{"description": "no name"}]'])
def test_unusable_replies_are_clear_errors(reply: str) -> None:
    with pytest.raises(PlanError):
        parse_plan(reply)


# --- junk from small models --------------------------------------------------------------------------------------

# "1+1+1..." deep enough that ast.parse raises RecursionError, and "------1" that makes it raise MemoryError.
DEEP_SUM = "x = 1" + "+1" * 200_000 + "\n"
DEEP_MINUS = "x = " + "-" * 200_000 + "1\n"


def test_source_the_parser_cannot_handle_is_one_chunk_not_an_error() -> None:
    for source in (DEEP_SUM, DEEP_MINUS, "x = 1\0\n"):
        chunks = chunk_python("junk.py", source)
        assert [c.kind for c in chunks] == ["module"]
        assert select_context({"junk.py": source, "main.py": "print(1)\n"}, "print", 50) is not None


def test_a_plan_with_junk_dependencies_is_a_plan_error() -> None:
    for depends in (3, True, {"a": 1}):
        plan = json.dumps([{"name": "a", "description": "x", "depends_on": depends}])
        with pytest.raises(PlanError, match="depends_on"):
            parse_plan(plan)
