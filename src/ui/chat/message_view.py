"""How one message looks: user text, or the assistant's markdown with a copy button on every code block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import flet as ft

from src.utils.fences import fenced_blocks, split_lines


@dataclass(frozen=True)
class Segment:
    kind: str  # "markdown" or "code"
    text: str
    language: str = ""


def split_code_blocks(text: str) -> list[Segment]:
    """Markdown prose and fenced code blocks, in order (an unclosed fence, as in a reply still streaming, runs to
    the end; ``src/utils/fences.py`` reads the fences)."""
    lines = split_lines(text)
    segments: list[Segment] = []
    position = 0
    for block in fenced_blocks(lines):
        prose = "\n".join(lines[position : block.start])
        if prose.strip():
            segments.append(Segment("markdown", prose))
        language = block.info.split()[0] if block.info.split() else ""
        segments.append(Segment("code", block.body.rstrip("\n"), language))
        position = block.end + 1
    rest = "\n".join(lines[position:])
    if rest.strip():
        segments.append(Segment("markdown", rest))
    return segments


def markdown(text: str) -> ft.Markdown:
    # Not selectable: a selectable Markdown hides its text from the accessibility tree (screen readers, tests);
    # the Copy buttons copy a whole reply or code block instead.
    return ft.Markdown(
        text,
        extension_set=ft.MarkdownExtensionSet.GITHUB_WEB,
        code_theme=ft.MarkdownCodeTheme.ATOM_ONE_DARK,
    )


def assistant_body(text: str, copy_label: str, on_copy: Callable[[str], object]) -> ft.Column:
    """The finished reply: prose as markdown, each code block with its own copy button."""
    parts: list[ft.Control] = []
    for segment in split_code_blocks(text):
        if segment.kind == "markdown":
            parts.append(markdown(segment.text))
            continue
        code = segment.text
        parts.append(
            ft.Container(
                content=ft.Column(
                    [
                        ft.Row(
                            [
                                ft.Text(segment.language or "code", size=12, italic=True),
                                ft.IconButton(
                                    icon=ft.Icons.CONTENT_COPY,
                                    icon_size=16,
                                    tooltip=f"{copy_label} {segment.language or 'code'}".strip(),
                                    on_click=lambda e, c=code: on_copy(c),
                                ),
                            ],
                            alignment=ft.MainAxisAlignment.SPACE_BETWEEN,
                        ),
                        markdown(f"```{segment.language}\n{code}\n```"),
                    ],
                    spacing=0,
                ),
                border=ft.Border.all(1, ft.Colors.OUTLINE_VARIANT),
                border_radius=8,
                padding=ft.Padding.only(left=8, right=4, bottom=4),
            )
        )
    return ft.Column(parts or [markdown(text)], spacing=6, tight=True)
