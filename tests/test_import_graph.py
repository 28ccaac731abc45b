"""No import cycles between Hearth's modules (read from the source, not by importing it).

Two graphs: the imports at module level (what runs when a module is imported), which must have no cycle at all, and
every import, function-level ones included, whose cycles may only be the ones listed in ``KNOWN_CYCLES``: a
function-level import hides a cycle from Python, not from a reader. Those are the layout's debt (issue 14: the core
leaves ``src/utils`` for ``src/engine`` and ``src/models``); the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNOWN_CYCLES = [{"src.utils.catalog", "src.utils.downloader", "src.utils.embedded_model", "src.utils.hub_api"}]


def modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "src").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(statements: list[ast.stmt], *, module_level: bool) -> Iterator[str]:
    for node in statements:
        if _is_type_checking(node):
            continue  # never runs
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # a submodule imported by name
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and module_level:
            continue  # runs when called, not when the module is imported
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _imports([c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)],
                                    module_level=module_level)  # fmt: skip


def graph(*, module_level: bool) -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[name] = {target for target in _imports(tree.body, module_level=module_level) if target in known} - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in list(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_cycle_at_module_level() -> None:
    assert cycles(graph(module_level=True)) == []


def test_function_level_imports_hide_no_new_cycle() -> None:
    for cycle in cycles(graph(module_level=False)):
        assert any(cycle <= known for known in KNOWN_CYCLES), f"a new import cycle: {sorted(cycle)}"


def test_the_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []
