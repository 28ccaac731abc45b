"""Code context for a coding turn: the project's code cut into functions and classes (``ast``), the chunks most
relevant to the current task ranked with BM25, packed into a token budget.

Small local models have small context windows; sending the whole project soon overflows them. Review and test
phases use the same service, so every phase sees the code that matters to what it is doing.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[\u4e00-\u9fff]")


@dataclass(frozen=True)
class CodeChunk:
    path: str
    name: str  # "module", a function or class name, or "Class.method"
    kind: str  # "module" (top-level statements), "function", "class"
    start_line: int
    end_line: int
    text: str


def tokenize(text: str) -> list[str]:
    """Words for ranking: identifiers are also split at snake_case and camelCase boundaries."""
    words: list[str] = []
    for word in _WORD.findall(text):
        lower = word.lower()
        words.append(lower)
        parts = [p.lower() for p in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", word.replace("_", " "))]
        if len(parts) > 1:
            words.extend(parts)
    return words


def parse_python(source: str) -> ast.Module | None:
    """The syntax tree of ``source``, or None when it is not Python that can be parsed safely.

    Besides SyntaxError, a model's junk makes ``ast.parse`` raise ValueError (NUL bytes), RecursionError
    ("1+1+1..." thousands of times) or MemoryError ("------...1"); none of them may end a phase or the run.
    """
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def chunk_python(path: str, source: str) -> list[CodeChunk]:
    """Functions and classes as chunks (a class's methods each on their own when the class is long), and the rest
    of the module's top level as one chunk. A file that does not parse is one chunk (models write broken code)."""
    tree = parse_python(source)
    if tree is None:
        lines = source.splitlines()
        return [CodeChunk(path, "module", "module", 1, max(len(lines), 1), source)] if source.strip() else []
    lines = source.splitlines()

    def segment(node: ast.AST) -> tuple[int, int, str]:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = getattr(node, "end_lineno", None) or node.lineno
        return start, end, "\n".join(lines[start - 1 : end])

    chunks: list[CodeChunk] = []
    covered: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start, end, text = segment(node)
            covered.update(range(start, end + 1))
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] if kind == "class" else []
            if methods and end - start > 60:
                for method in methods:
                    m_start, m_end, m_text = segment(method)
                    chunks.append(CodeChunk(path, f"{node.name}.{method.name}", "function", m_start, m_end, m_text))
                header_end = min(segment(m)[0] for m in methods) - 1
                chunks.append(CodeChunk(path, node.name, "class", start, header_end, "\n".join(lines[start - 1 : header_end])))
            else:
                chunks.append(CodeChunk(path, node.name, kind, start, end, text))
    rest = [(i + 1, line) for i, line in enumerate(lines) if (i + 1) not in covered and line.strip()]
    if rest:
        chunks.insert(0, CodeChunk(path, "module", "module", rest[0][0], rest[-1][0], "\n".join(line for _, line in rest)))
    return chunks


def chunk_project(files: Mapping[str, str]) -> list[CodeChunk]:
    chunks: list[CodeChunk] = []
    for path, source in sorted(files.items()):
        if path.endswith(".py"):
            chunks.extend(chunk_python(path, source))
        elif source.strip():
            chunks.append(CodeChunk(path, "file", "module", 1, max(len(source.splitlines()), 1), source))
    return chunks


class BM25:
    """Okapi BM25 over chunks (k1=1.5, b=0.75: the usual defaults, fine for code of a few files)."""

    def __init__(self, documents: list[list[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(d) for d in documents]
        self.lengths = [len(d) for d in documents]
        self.avg_length = (sum(self.lengths) / len(self.lengths)) if self.lengths else 0.0
        frequency: Counter[str] = Counter()
        for doc in self.docs:
            frequency.update(doc.keys())
        n = len(self.docs)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}

    def scores(self, query: list[str]) -> list[float]:
        out = []
        for doc, length in zip(self.docs, self.lengths):
            score = 0.0
            for term in set(query):
                tf = doc.get(term, 0)
                if tf:
                    norm = tf + self.k1 * (1 - self.b + self.b * length / (self.avg_length or 1))
                    score += self.idf.get(term, 0.0) * tf * (self.k1 + 1) / norm
            out.append(score)
        return out


def estimate_tokens(text: str) -> int:
    """About 4 characters a token for code: good enough to budget without loading a tokenizer."""
    return max(1, (len(text) + 3) // 4)


def select_context(
    files: Mapping[str, str],
    query: str,
    budget_tokens: int,
    *,
    count_tokens: Callable[[str], int] = estimate_tokens,
) -> str:
    """The chunks most relevant to ``query`` that fit in ``budget_tokens``, in file order, each under a
    ``# path (name, lines a-b)`` header. Chunks that don't fit are left out whole, never cut mid-way."""
    chunks = chunk_project(files)
    if not chunks or budget_tokens <= 0:
        return ""
    ranking = BM25([tokenize(c.path + " " + c.name + " " + c.text) for c in chunks]).scores(tokenize(query))
    order = sorted(range(len(chunks)), key=lambda i: (-ranking[i], i))
    chosen: list[int] = []
    used = 0
    for index in order:
        piece = _render(chunks[index])
        cost = count_tokens(piece)
        if used + cost <= budget_tokens:
            chosen.append(index)
            used += cost
    chosen.sort(key=lambda i: (chunks[i].path, chunks[i].start_line))
    return "\n\n".join(_render(chunks[i]) for i in chosen)


def _render(chunk: CodeChunk) -> str:
    return f"# {chunk.path} ({chunk.name}, lines {chunk.start_line}-{chunk.end_line})\n{chunk.text}"
