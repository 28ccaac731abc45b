"""Fenced code blocks in markdown written by a language model: the one parser (chat rendering, the company's code
and requirements extraction, the manual).

Lenient where small models are sloppy: ```` ``` ```` or ``~~~`` fences of three or more, indented up to 12 spaces
(inside a list), a closing fence glued to the last line of code (``main()```), and a reply that stops inside a
block (out of tokens, or still streaming) keeps what it has (``closed`` is False).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE_RE = re.compile(r"^(?P<indent>\s{0,12})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")


@dataclass(frozen=True)
class FencedBlock:
    info: str  # what follows the opening fence: "python", "python main.py", ""
    lines: list[str]  # the body, without the fences
    start: int  # index of the opening fence line
    end: int  # index of the closing fence line (== the number of lines when the text stops inside the block)
    closed: bool = True  # False: the text stops inside the block

    @property
    def body(self) -> str:
        return "\n".join(self.lines)


def split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def fenced_blocks(lines: list[str]) -> list[FencedBlock]:
    """The fenced blocks of ``lines`` (see ``split_lines``), in order."""
    blocks: list[FencedBlock] = []
    i = 0
    while i < len(lines):
        match = _FENCE_RE.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match["fence"]
        body: list[str] = []
        j = i + 1
        closed = False
        while j < len(lines):
            line = lines[j]
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                closed = True
                break
            # Small models often glue the closing fence to the last line of code: `main()```.
            if stripped.endswith(fence) and not stripped.startswith(fence[0] * 3):
                body.append(line.rstrip()[: -len(fence)])
                closed = True
                break
            body.append(line)
            j += 1
        blocks.append(FencedBlock(info=match["info"], lines=body, start=i, end=j, closed=closed))
        i = j + 1
    return blocks


def unwrapped(text: str) -> str | None:
    """The inside of ``text`` when all of it is one fenced block (a manual sent as ```` ```markdown ... ``` ````,
    fenced blocks of its own inside), else None. The first line must open a fence, the last close one like it."""
    lines = split_lines(text.strip())
    opening = _FENCE_RE.match(lines[0]) if len(lines) >= 2 else None
    if opening is None:
        return None
    fence, closing = opening["fence"], lines[-1].strip()
    if not (closing.startswith(fence) and closing.strip(fence[0]) == ""):
        return None
    return "\n".join(lines[1:-1])
