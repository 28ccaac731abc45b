"""The one fenced-code parser (src/utils/fences.py), on what small models write."""

from __future__ import annotations

from src.utils.fences import fenced_blocks, split_lines, unwrapped


def blocks_of(text: str) -> list[tuple[str, str, bool]]:
    return [(block.info, block.body, block.closed) for block in fenced_blocks(split_lines(text))]


def test_fences_of_both_kinds_with_and_without_info() -> None:
    text = "Here:\n```python main.py\nprint(1)\n```\nand\n~~~\nplain\n~~~\n"
    assert blocks_of(text) == [("python main.py", "print(1)", True), ("", "plain", True)]


def test_sloppy_fences_still_count() -> None:
    assert blocks_of("  ```py\n  x = 1\n  main()```\n") == [("py", "  x = 1\n  main()", True)]  # glued, indented
    assert blocks_of("```python\nprint('out of tokens'") == [("python", "print('out of tokens'", False)]
    assert blocks_of("\r\n```\r\na\r\n```") == [("", "a", True)]


def test_a_whole_fenced_manual_is_unwrapped_with_its_own_blocks_inside() -> None:
    manual = "```markdown\n# Calendar\n\n```bash\npython main.py\n```\n\nEnjoy.\n```"
    assert unwrapped(manual) == "# Calendar\n\n```bash\npython main.py\n```\n\nEnjoy."
    assert unwrapped("# Calendar\n```bash\nx\n```") is None  # not one block from start to end
    assert unwrapped("```\nonly an opening") is None
