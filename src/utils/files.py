"""Files that matter: written atomically (after a crash a file is either the old or the new one), and relative
names from untrusted sources checked before they are joined to a folder."""

from __future__ import annotations

import os
import re
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path, PurePosixPath


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the folder."""
    # pid and thread id: two threads (or processes) saving the same file never share a temp file.
    temp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    if os.name == "nt":
        return  # Windows cannot open a directory for fsync; NTFS journals the rename itself
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- relative names from untrusted sources (model replies, Hub listings) ----------------------------------------

MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux and macOS; NTFS allows 255 UTF-16 units, which is never less
MAX_PATH_BYTES = 1024  # well under PATH_MAX (4096) so the folder's own path still fits in front

# Names Windows gives to devices: "con.py" can't be created there, and writing "nul" silently discards the data.
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in (*range(10), "¹", "²", "³")}
    | {f"lpt{i}" for i in (*range(10), "¹", "²", "³")}
)
# Characters Windows refuses in names (":" also opens NTFS alternate data streams); refused everywhere so that a
# folder written on Linux can be copied to Windows.
_WINDOWS_FORBIDDEN_CHARS = frozenset('<>:"|?*')

# Format characters (bidi overrides, zero-width spaces and joiners) and line or paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp"})

# Builds the caller's own typed error from (the name as given, why it is refused).
UnsafeName = Callable[[object, str], Exception]


def relative_parts(name: object, unsafe: UnsafeName, *, exact: bool = False) -> list[str]:
    """The parts of ``name`` if, joined to a folder, it stays inside that folder on every OS; else raises
    ``unsafe(name, reason)``.

    Refused everywhere (not only where the OS would misread it): not text, NUL or control characters, empty,
    absolute (``/etc/x``, ``\\x``, ``\\\\server\\share``), a drive letter (``C:x``, ``C:\\x``), ``..``.
    Lenient (``exact=False``, names people and models type): backslashes count as separators, and surrounding
    spaces, empty and ``.`` parts are dropped (``./a//b`` is ``a/b``).
    Exact (``exact=True``, names a server lists, used as they are in URLs and in the download state): a backslash,
    surrounding spaces, an empty or a ``.`` part are refused, so that the name checked is the name used.
    """
    if not isinstance(name, str):
        raise unsafe(name, "it is not text")
    if any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in name):
        raise unsafe(name, "it contains NUL or control characters")
    if any(unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in name):
        # A right-to-left override shows "evil\u202eyp.txt" as "eviltxt.py"; zero-width characters hide a twin.
        raise unsafe(name, "it contains invisible or direction-changing characters")
    stripped = name.strip()
    if not stripped:
        raise unsafe(name, "it is empty")
    if len(stripped.encode("utf-8")) > MAX_PATH_BYTES * 4:
        # Checked early so that a megabyte-long "name" is not split and scanned part by part.
        raise unsafe(name, f"it is longer than {MAX_PATH_BYTES} bytes")
    if exact and "\\" in name:
        raise unsafe(name, "it contains a backslash, which Windows reads as a folder separator")
    if exact and stripped != name:
        raise unsafe(name, "it starts or ends with white space")
    unified = stripped.replace("\\", "/")
    if unified.startswith("/"):
        raise unsafe(name, "it is an absolute path (or a network share)")
    if re.match(r"^[A-Za-z]:", unified):
        raise unsafe(name, "it starts with a drive letter")
    parts: list[str] = []
    for part in unified.split("/"):
        if part in ("", "."):
            if exact:
                raise unsafe(name, "it has an empty or '.' part (as in a//b or ./a)")
            continue
        if part == "..":
            raise unsafe(name, "it goes up to the parent folder with '..'")
        parts.append(part)
    if not parts:
        raise unsafe(name, "it names no file (only '.' and separators)")
    return parts


def safe_relative_path(name: object, unsafe: UnsafeName, *, exact: bool = False) -> PurePosixPath:
    """The normalised relative path for ``name``: :func:`relative_parts`, and also a name that behaves the same on
    every OS and on a command line; else raises ``unsafe(name, reason)``.

    Also refused: a part starting with ``~`` (shell home expansion) or ``-`` (read as an option), characters or
    device names Windows can't store, parts ending in a dot or space, ``.git`` (its hooks run on the user's next git
    command), and names longer than 255 bytes per part or 1024 bytes in total.
    """
    parts = relative_parts(name, unsafe, exact=exact)
    for part in parts:
        if part.startswith("~"):
            raise unsafe(name, "it starts with '~', which a shell expands to a home folder")
        if part.startswith("-"):
            # "python -c.py" runs code, "git add -f.py" adds a flag: names are passed on command lines later.
            raise unsafe(name, "a part of it starts with '-', which a command line reads as an option")
        bad = sorted(set(part) & _WINDOWS_FORBIDDEN_CHARS)
        if bad:
            raise unsafe(name, f"it contains {''.join(bad)!r}, which Windows does not allow in file names")
        if part.endswith((".", " ")):
            raise unsafe(name, "a part of it ends with a dot or a space, which Windows drops silently")
        if part.split(".", 1)[0].strip().lower() in _WINDOWS_RESERVED:
            raise unsafe(name, f"{part!r} is a device name on Windows")
        if part.lower() == ".git":
            raise unsafe(name, "it writes into .git, whose hooks would run on the user's next git command")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise unsafe(name, f"a part of it is longer than {MAX_COMPONENT_BYTES} bytes")
    normalised = "/".join(parts)
    if len(normalised.encode("utf-8")) > MAX_PATH_BYTES:
        raise unsafe(name, f"it is longer than {MAX_PATH_BYTES} bytes")
    return PurePosixPath(normalised)


def same_file_key(name: str) -> str:
    """What a case-insensitive, normalising file system (Windows, macOS) keeps of a name: two names with the same key
    are one file there (``config.json`` and ``CONFIG.JSON``, ``é`` composed or not)."""
    return unicodedata.normalize("NFC", name).casefold()


def resolves_inside(folder: Path, path: Path) -> bool:
    """True when ``path``, after following the symlinks that exist now, is inside ``folder`` (not ``folder`` itself):
    a checked name can still be led out by a link already on disk."""
    try:
        root, resolved = folder.resolve(), path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, on Python 3.11
        return False
    return resolved != root and resolved.is_relative_to(root)
