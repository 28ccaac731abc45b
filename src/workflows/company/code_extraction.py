"""Turn a model's reply into the files it meant to write, and check every file name before anything touches disk.

Small local models are inconsistent about how they name files, so the parser accepts the common styles: a name on
the line before the fence (``main.py``, ``**main.py**``, ``# main.py``, ``File: main.py``, ChatDev's bare
``FILENAME`` line), a name in the fence's info string (```` ```python main.py ````), and a first-line comment inside
the block (``# main.py``, ``# filename: utils/helpers.py``). Unnamed blocks get a guessed name that is recorded as
such, so that the company can ask the model again instead of trusting it.

``safe_relative_path`` is the gate: a name that could land outside the project folder, or that would behave
differently on another OS, raises :class:`~src.errors.UnsafePathError`. Extraction itself never raises for a bad
name; it reports it, and the writer (``warehouse.ProjectFolder``) refuses it.
"""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import dataclass
from pathlib import PurePosixPath

from src.errors import UnsafePathError
from src.utils.fences import fenced_blocks, split_lines
from src.utils.files import safe_relative_path as _checked_relative_path

logger = logging.getLogger(__name__)


def safe_relative_path(name: str) -> PurePosixPath:
    """The normalised relative path for ``name``, or :class:`UnsafePathError` if it could escape the folder.

    ``./a//b.py`` becomes ``a/b.py``; backslashes count as separators (a model on Windows habits writes
    ``utils\\helpers.py``). The rules (absolute paths, drive letters, ``..``, ``~``, a leading ``-``, control
    characters, Windows names, ``.git``, lengths) are :func:`src.utils.files.safe_relative_path`'s, shared with the
    model downloader.
    """
    return _checked_relative_path(name, UnsafePathError)


# --- extraction ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractedFile:
    path: str  # normalised when safe; an unsafe name is kept as written so that the writer refuses it
    content: str
    language: str
    name_guessed: bool  # True when the model gave no name and this one was made up


# Info-string words that mean "this is not a file to write" (program output, shell sessions, prose).
_NON_CODE_LANGUAGES = frozenset(
    {
        "text", "txt", "plain", "plaintext", "output", "out", "console", "terminal", "shell-session", "log",
        "bash", "sh", "shell", "zsh", "powershell", "ps", "ps1", "cmd", "bat", "batch", "markdown", "md", "diff",
        "patch", "stdout", "stderr", "result", "example",
    }
)

_LANGUAGE_ALIASES = {
    "py": "python", "python3": "python", "py3": "python", "python2": "python", "pyw": "python",
    "js": "javascript", "node": "javascript", "jsx": "javascript", "mjs": "javascript",
    "ts": "typescript", "tsx": "typescript", "htm": "html", "c++": "cpp", "cxx": "cpp", "cc": "cpp",
    "yml": "yaml", "rb": "ruby", "rs": "rust", "golang": "go", "kt": "kotlin", "cs": "csharp", "c#": "csharp",
}

_EXTENSION_BY_LANGUAGE = {
    "python": "py", "javascript": "js", "typescript": "ts", "html": "html", "css": "css", "json": "json",
    "yaml": "yaml", "toml": "toml", "ini": "ini", "cpp": "cpp", "c": "c", "java": "java", "go": "go",
    "rust": "rs", "ruby": "rb", "kotlin": "kt", "csharp": "cs", "sql": "sql", "xml": "xml", "php": "php",
    "lua": "lua", "swift": "swift", "r": "r",
}

_LANGUAGE_BY_EXTENSION = {ext: lang for lang, ext in _EXTENSION_BY_LANGUAGE.items()} | {
    "pyw": "python", "htm": "html", "yml": "yaml", "hpp": "cpp", "h": "c", "jsx": "javascript",
    "tsx": "typescript", "txt": "text", "md": "markdown", "cfg": "ini", "sh": "bash", "csv": "text",
}

# A plausible file name: no spaces, an extension of 1-10 letters or digits, optional sub-folders. Deliberately
# loose about what comes before the extension: safe_relative_path, not this pattern, is the security check.
_NAME = r"(?P<name>(?![#!])[^\s`*'\"<>|,;()\[\]{}]*[^\s`*'\"<>|,;()\[\]{}./\\]\.[A-Za-z0-9]{1,10})"
_NAME_RE = re.compile(rf"^{_NAME}$")
# Well-known files without an extension that models do write.
_BARE_NAMES = frozenset({"Dockerfile", "Makefile", "Procfile", "LICENSE", "README"})

# The line just before a fence: "main.py", "**main.py**", "# main.py", "### `main.py`", "File: main.py",
# "FILENAME: game.py", "1. main.py:", "- main.py", "Here is `main.py`:".
_DECORATION = r"[\s#>*_`\-+.\d)(\[\]]*?"  # lazy, or "2048.py" would lose its digits to it
_LABEL = r"(?:(?:file\s*name|file|filename|path|name|source)\s*[:=\-]\s*)?"
_BEFORE_LINE_RE = re.compile(rf"^{_DECORATION}{_LABEL}[*_`'\"]*{_NAME}[*_`'\"]*\s*:?[*_`\s]*$", re.IGNORECASE)
_QUOTED_NAME_AT_END_RE = re.compile(rf"[`*'\"]+{_NAME}[`*'\"]+\s*:?\s*[*_]*\s*$")
# "Here is the code for main.py:" (a name right before the final colon of a line of chatter).
_NAME_BEFORE_COLON_RE = re.compile(rf"(?:^|\s){_NAME}\s*:\s*$")
# A first line inside the block: "# main.py", "// main.js", "-- query.sql", "<!-- index.html -->",
# "# filename: utils/helpers.py", "/* style.css */", "'''main.py'''".
_FIRST_LINE_RE = re.compile(
    rf"^\s*(?:#+|//+|--|/\*+|<!--|;+|'''|\"\"\")\s*{_LABEL}[`*'\"]*{_NAME}[`*'\"]*\s*:?\s*(?:\*/|-->|'''|\"\"\")?\s*$",
    re.IGNORECASE,
)
_ENTRY_POINT_RE = re.compile(r"""^\s*if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.MULTILINE)
# Enough to tell an unlabelled block of Python from program output or prose.
_LOOKS_LIKE_PYTHON_RE = re.compile(
    r"^\s*(?:import\s+\w|from\s+[\w.]+\s+import\b|def\s+\w+\s*\(|class\s+\w+|async\s+def\s|if\s+__name__|"
    r"print\s*\(|[A-Za-z_][\w.]*\s*(?:\[[^\]]*\])?\s*[+\-*/]?=\s*\S|for\s+\w.*:\s*$|while\s.*:\s*$)",
    re.MULTILINE,
)


def _clean_name(raw: str) -> str:
    return raw.strip().strip("`*'\"")


def _file_key(name: str) -> str:
    """The name files are compared by: ``./a.py``, ``a.py`` and ``a\\b.py``/``a/b.py`` are the same file."""
    try:
        return str(safe_relative_path(name))
    except UnsafePathError:
        return name  # kept as written, so that the writer refuses it with the model's own spelling


def _name_from_info(info: str) -> tuple[str, str | None]:
    """(language word, file name) from an info string like ``python``, ``python main.py``, ``py:main.py``,
    ``python title="main.py"`` or just ``main.py``."""
    words = [w for w in re.split(r"[\s:,{}]+", info) if w]
    language = ""
    name: str | None = None
    for index, word in enumerate(words):
        value = word.split("=", 1)[1] if "=" in word else word
        value = _clean_name(value)
        if name is None and (_NAME_RE.match(value) or value in _BARE_NAMES):
            name = value
        elif index == 0 and "=" not in word:
            language = word.lower()
    return language, name


def _name_from_line(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or len(stripped) > 300:
        return None
    match = (
        _BEFORE_LINE_RE.match(stripped)
        or _QUOTED_NAME_AT_END_RE.search(stripped)
        or _NAME_BEFORE_COLON_RE.search(stripped)
    )
    if match:
        return _clean_name(match["name"])
    bare = stripped.strip("#*_`: ")
    return bare if bare in _BARE_NAMES else None


def _normalise_language(word: str) -> str:
    word = word.lower().lstrip(".")
    return _LANGUAGE_ALIASES.get(word, word)


def _language_from_name(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower().lstrip(".")
    return _LANGUAGE_BY_EXTENSION.get(suffix)


def _name_from_first_lines(body: list[str]) -> str | None:
    """A name given in a comment on the block's first line (after a shebang or an encoding cookie, if any)."""
    for line in [line for line in body if line.strip()][:3]:
        if line.lstrip().startswith("#!") or re.match(r"^\s*#.*coding[:=]", line):
            continue
        match = _FIRST_LINE_RE.match(line)
        return _clean_name(match["name"]) if match else None
    return None


def _is_output_about(name_language: str | None, fence_language: str, content: str) -> bool:
    """True when a block named after a source file is really that file's output or the commands to run it."""
    if name_language not in _EXTENSION_BY_LANGUAGE:
        return False  # requirements.txt in a ```text block, run.sh in a ```bash block: real files
    if fence_language in _NON_CODE_LANGUAGES:
        return True
    return not fence_language and name_language == "python" and not _LOOKS_LIKE_PYTHON_RE.search(content)


def _tidy(body: list[str]) -> str:
    text = textwrap.dedent("\n".join(line.rstrip() for line in body))
    return text.strip("\n") + "\n" if text.strip() else ""


def extract_code_files(text: str, *, default_language: str = "python") -> list[ExtractedFile]:
    """The files in a model's reply: named files in the order they first appear, then files with guessed names.

    A file given twice keeps its later content (models repeat a file in full after fixing it).

    Fences whose info string says they are not code (```` ```text ````, ```` ```bash ````, ```` ```output ````)
    are skipped unless the model named a file for them (``requirements.txt`` in a ```` ```text ```` block is
    kept). An unlabelled, unnamed fence is kept only if it looks like ``default_language`` code. A reply that
    stops inside a block (the model ran out of tokens) keeps what it has.
    """
    lines = split_lines(text)
    default_language = _normalise_language(default_language)
    named: list[tuple[str, str, str]] = []  # (name, content, language) in reply order
    unnamed: list[tuple[int, str, str]] = []  # (position among all blocks, content, language)
    previous_end = -1
    for position, block in enumerate(fenced_blocks(lines)):
        language_word, name = _name_from_info(block.info)
        if name is None:
            # The closest non-blank line before the fence, but never inside or before the previous block.
            k = block.start - 1
            while k > previous_end and not lines[k].strip() and block.start - k <= 2:
                k -= 1
            if k > previous_end and lines[k].strip():
                name = _name_from_line(lines[k])
        body = block.lines
        if name is None:
            name = _name_from_first_lines(body)
        previous_end = block.end
        content = _tidy(body)
        if not content:
            continue
        language = _normalise_language(language_word) if language_word else ""
        if name is not None:
            name_language = _language_from_name(name)
            if _is_output_about(name_language, language, content):
                # "Output of main.py:" followed by what it printed: that must not overwrite main.py.
                logger.debug("Skipped a %r block that talks about %r rather than containing it", language, name)
                continue
            language = language or name_language or default_language
            named.append((name, content, language))
            continue
        if language in _NON_CODE_LANGUAGES:
            continue
        if not language:
            if default_language == "python" and not _LOOKS_LIKE_PYTHON_RE.search(content):
                logger.debug("Skipped an unlabelled block that does not look like code (%d chars)", len(content))
                continue
            language = default_language
        unnamed.append((position, content, language))

    files: dict[str, ExtractedFile] = {}
    for name, content, language in named:
        name = _file_key(name)
        files[name] = ExtractedFile(path=name, content=content, language=language, name_guessed=False)

    python_blocks = sum(1 for _, _, lang in named if lang == "python") + sum(
        1 for _, _, lang in unnamed if lang == "python"
    )
    entry_candidates = [i for i, (_, content, lang) in enumerate(unnamed) if lang == "python" and (
        _ENTRY_POINT_RE.search(content) or python_blocks == 1)]
    # The last entry point wins main.py: a model that "improves" its program repeats it in full further down.
    main_index = entry_candidates[-1] if entry_candidates and "main.py" not in files else None
    counter = 0
    for index, (_, content, language) in enumerate(unnamed):
        if index == main_index:
            guessed = "main.py"
        else:
            extension = _EXTENSION_BY_LANGUAGE.get(language, "txt")
            while True:
                counter += 1
                guessed = f"module_{counter}.{extension}"
                if guessed not in files:
                    break
        files[guessed] = ExtractedFile(path=guessed, content=content, language=language, name_guessed=True)
    if unnamed:
        logger.info("Guessed names for %d unnamed code block(s)", len(unnamed))
    return list(files.values())
