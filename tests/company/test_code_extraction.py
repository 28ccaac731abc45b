"""Code extraction from model replies: every naming style small models use, and the file name gate."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from src.errors import HearthError, UnsafePathError
from src.workflows.company.code_extraction import ExtractedFile, extract_code_files, safe_relative_path

CODE = "import sys\n\n\ndef main():\n    print('hi')\n"


def only(files: list[ExtractedFile]) -> ExtractedFile:
    assert len(files) == 1, files
    return files[0]


# --- naming styles -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before",
    [
        "main.py",
        "**main.py**",
        "# main.py",
        "### `main.py`",
        "File: main.py",
        "file: main.py",
        "FILENAME: main.py",
        "Filename: `main.py`",
        "`main.py`",
        "main.py:",
        "1. main.py",
        "- **main.py**:",
        "Here is the code for `main.py`:",
        "Here is the code for main.py:",
    ],
)
def test_name_on_the_line_before_the_fence(before: str) -> None:
    reply = f"Sure, here you go.\n\n{before}\n```python\n{CODE}```\nLet me know if you need more."
    file = only(extract_code_files(reply))
    assert (file.path, file.language, file.name_guessed) == ("main.py", "python", False)
    assert file.content == CODE


def test_filename_label_in_capitals_names_a_game() -> None:
    file = only(extract_code_files("FILENAME: game.py\n```python\nprint('game')\n```"))
    assert (file.path, file.name_guessed) == ("game.py", False)


def test_name_separated_from_the_fence_by_a_blank_line() -> None:
    assert only(extract_code_files("utils.py\n\n```python\nX = 1\n```")).path == "utils.py"


def test_chatdev_style_with_docstring() -> None:
    reply = (
        "The Programmer wrote the following files.\n\n"
        "main.py\n```python\n'''\nEntry point of the gomoku game.\n'''\nfrom game import Game\n\n"
        "if __name__ == \"__main__\":\n    Game().run()\n```\n\n"
        "game.py\n```python\n'''\nThe game logic.\n'''\nclass Game:\n"
        "    def run(self):\n        print('playing')\n```\n"
    )
    files = extract_code_files(reply)
    assert [f.path for f in files] == ["main.py", "game.py"]
    assert files[0].content.startswith("'''\nEntry point of the gomoku game.\n'''\nfrom game import Game")
    assert all(not f.name_guessed for f in files)


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        ("# main.py", "main.py"),
        ("# filename: utils/helpers.py", "utils/helpers.py"),
        ("# File: game.py", "game.py"),
        ("#!/usr/bin/env python3\n# tool.py", "tool.py"),
    ],
)
def test_name_in_a_first_line_comment(first_line: str, expected: str) -> None:
    file = only(extract_code_files(f"Here it is:\n```python\n{first_line}\nX = 1\n```"))
    assert (file.path, file.name_guessed) == (expected, False)
    assert file.content.endswith("X = 1\n")


def test_first_line_comment_in_other_languages() -> None:
    reply = "```javascript\n// app.js\nconsole.log(1)\n```\n```html\n<!-- index.html -->\n<p>hi</p>\n```"
    files = extract_code_files(reply)
    assert [(f.path, f.language) for f in files] == [("app.js", "javascript"), ("index.html", "html")]


@pytest.mark.parametrize(
    "info", ["python main.py", "py:main.py", 'python title="main.py"', "main.py", "python3 main.py"]
)
def test_name_in_the_info_string(info: str) -> None:
    file = only(extract_code_files(f"```{info}\nX = 1\n```"))
    assert (file.path, file.language, file.name_guessed) == ("main.py", "python", False)


def test_subfolders_are_kept_and_normalised() -> None:
    reply = "./src//app.py\n```python\nX = 1\n```\nsrc\\util.py\n```python\nY = 2\n```"
    assert [f.path for f in extract_code_files(reply)] == ["src/app.py", "src/util.py"]


def test_digits_in_a_name_are_not_taken_for_a_list_number() -> None:
    assert only(extract_code_files("2048.py\n```python\nX = 1\n```")).path == "2048.py"


# --- unnamed blocks ----------------------------------------------------------------------------------------------


def test_the_only_python_block_is_main() -> None:
    file = only(extract_code_files(f"Here is the program:\n```python\n{CODE}```\nEnjoy!"))
    assert (file.path, file.name_guessed) == ("main.py", True)


def test_unnamed_blocks_entry_point_is_main_and_others_are_modules() -> None:
    reply = (
        "```python\ndef helper():\n    return 1\n```\n"
        "```python\nimport helper\n\nif __name__ == '__main__':\n    print(helper.helper())\n```\n"
        "```python\nclass Board:\n    pass\n```"
    )
    files = {f.path: f for f in extract_code_files(reply)}
    assert set(files) == {"main.py", "module_1.py", "module_2.py"}
    assert "__main__" in files["main.py"].content
    assert all(f.name_guessed for f in files.values())


def test_a_guessed_main_never_replaces_a_named_main() -> None:
    reply = "main.py\n```python\nprint('named')\n```\n```python\nif __name__ == '__main__':\n    print('x')\n```"
    files = {f.path: f for f in extract_code_files(reply)}
    assert files["main.py"].content == "print('named')\n"
    assert files["module_1.py"].name_guessed


def test_unlabelled_fence_with_python_is_code_but_output_is_not() -> None:
    reply = "```\nimport random\nprint(random.random())\n```\nIt prints:\n```\n0.1234\n```"
    file = only(extract_code_files(reply))
    assert (file.path, file.language) == ("main.py", "python")


@pytest.mark.parametrize("language", ["text", "output", "console", "bash", "sh", "shell"])
def test_non_code_fences_are_ignored(language: str) -> None:
    reply = f"main.py\n```python\nprint('hi')\n```\nRun it:\n```{language}\n$ python main.py\nhi\n```"
    assert [f.path for f in extract_code_files(reply)] == ["main.py"]


def test_output_of_a_named_file_does_not_overwrite_it() -> None:
    reply = "main.py\n```python\nprint('hi')\n```\nOutput of main.py:\n```text\nhi\n```\nmain.py:\n```\nhi\n```"
    assert only(extract_code_files(reply)).content == "print('hi')\n"


def test_a_named_text_file_is_kept() -> None:
    reply = (
        "requirements.txt\n```text\npygame==2.5.2\n```\n"
        "Install with:\n```bash\npip install -r requirements.txt\n```"
    )
    file = only(extract_code_files(reply))
    assert (file.path, file.language, file.content) == ("requirements.txt", "text", "pygame==2.5.2\n")


# --- robustness ------------------------------------------------------------------------------------------------


def test_chatter_everywhere() -> None:
    reply = (
        "Certainly! As the Programmer of ChatDev, I will write the code.\n\n"
        "First, the **main** file. It uses `tkinter` (see main.py below).\n\n"
        "main.py\n```python\nimport tkinter\n```\n\n"
        "Note: make sure to install the dependencies with pip.\n"
        "Explanation:\n- The code creates a window.\n- It is simple.\n\n"
        "Thank you! <INFO> Finished"
    )
    file = only(extract_code_files(reply))
    assert (file.path, file.content) == ("main.py", "import tkinter\n")


def test_unclosed_last_fence_takes_the_rest() -> None:
    reply = "main.py\n```python\nprint('a')\nprint('b')\n\n   \n"
    assert only(extract_code_files(reply)).content == "print('a')\nprint('b')\n"


def test_closing_fence_glued_to_the_last_line() -> None:
    assert only(extract_code_files("main.py\n```python\nprint('x')```\nDone.")).content == "print('x')\n"


def test_indented_fence_is_dedented_and_blank_edges_stripped() -> None:
    reply = "1. main.py\n   ```python\n\n   def f():\n       return 1   \n\n   ```"
    assert only(extract_code_files(reply)).content == "def f():\n    return 1\n"


def test_windows_line_endings() -> None:
    assert only(extract_code_files("main.py\r\n```python\r\nX = 1\r\n```\r\n")).content == "X = 1\n"


def test_same_file_twice_the_later_one_wins() -> None:
    reply = "main.py\n```python\nv = 1\n```\nutils.py\n```python\nu = 1\n```\nFixed main.py:\n```python\nv = 2\n```"
    files = extract_code_files(reply)
    assert [f.path for f in files] == ["main.py", "utils.py"]
    assert files[0].content == "v = 2\n"


def test_tilde_fences_and_longer_fences() -> None:
    reply = "main.py\n~~~python\nX = 1\n~~~\nREADME.md\n````markdown\n```python\nexample\n```\n````"
    files = {f.path: f.content for f in extract_code_files(reply)}
    assert files == {"main.py": "X = 1\n", "README.md": "```python\nexample\n```\n"}


def test_no_code_at_all() -> None:
    assert extract_code_files("I cannot help with that.") == []
    assert extract_code_files("") == []
    assert extract_code_files("```python\n\n```") == []


def test_unsafe_names_are_passed_on_unchanged_for_the_writer_to_refuse() -> None:
    reply = "".join(f"{name}\n```python\nX = 1\n```\n" for name in ("../../evil.py", "/tmp/evil.py", "C:\\evil.py"))
    paths = [f.path for f in extract_code_files(reply)]
    assert paths == ["../../evil.py", "/tmp/evil.py", "C:\\evil.py"]
    for path in paths:
        with pytest.raises(UnsafePathError):
            safe_relative_path(path)


# --- safe_relative_path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("main.py", "main.py"),
        ("./a//b.py", "a/b.py"),
        ("utils/helpers.py", "utils/helpers.py"),
        ("utils\\helpers.py", "utils/helpers.py"),
        (" spaced.py ", "spaced.py"),
        ("assets/image file.png", "assets/image file.png"),
        ("données/été.py", "données/été.py"),
        (".env.example", ".env.example"),
    ],
)
def test_safe_names_are_normalised(name: str, expected: str) -> None:
    assert safe_relative_path(name) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        ".",
        "./",
        "/etc/passwd",
        "/tmp/evil.py",
        "C:\\evil.py",
        "C:evil.py",
        "c:/windows/evil.py",
        "\\\\server\\share\\evil.py",
        "//server/share/evil.py",
        "\\evil.py",
        "../evil.py",
        "../../evil.py",
        "a/../../evil.py",
        "a/..",
        "..\\evil.py",
        "~/evil.py",
        "~root/evil.py",
        "a\x00b.py",
        "a\nb.py",
        "a\tb.py",
        "a\x1bb.py",
        "a\x7fb.py",
        "x" * 256 + ".py",
        "/".join(["d" * 200] * 6) + "/x.py",
        "file.py:stream",
        "what?.py",
        "con.py",
        "sub/NUL",
        "trailing.",
        ".git/hooks/pre-commit",
        "a/.GIT/config",
        "-c.py",
        "sub/--force.py",
    ],
)
def test_unsafe_names_are_refused_with_a_typed_error(name: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        safe_relative_path(name)
    assert isinstance(caught.value, HearthError) and isinstance(caught.value, ValueError)
    assert "Refused the file name" in str(caught.value) and caught.value.reason in str(caught.value)


def test_names_at_the_length_limits() -> None:
    assert safe_relative_path("x" * 252 + ".py").name == "x" * 252 + ".py"  # 255 bytes
    four = "/".join(["d" * 254] * 4)  # 1019 bytes
    assert str(safe_relative_path(four + "/x.py")) == four + "/x.py"  # 1024 bytes
    with pytest.raises(UnsafePathError):
        safe_relative_path(four + "/xy.py")  # 1025 bytes
    with pytest.raises(UnsafePathError):
        safe_relative_path("é" * 128 + ".py")  # 128 characters but 259 bytes


def test_non_text_names_are_refused() -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(b"main.py")  # type: ignore[arg-type]
