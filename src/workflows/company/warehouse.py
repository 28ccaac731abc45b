"""The project folder a generated program lives in (``WareHouse/<name>_<org>_<timestamp>/``).

Every name that comes from a model is untrusted. ``ProjectFolder.write_file`` checks it three times: the name itself
(``safe_relative_path``), the real location after following symlinks that already exist (a link inside the folder
that points outside is refused, never written through), and, on POSIX, once more while writing, by walking the
folders with ``O_NOFOLLOW`` file descriptors so that a folder swapped for a symlink between the check and the write
fails instead of being followed. Files are written atomically, and their size and the project's size are bounded,
because a small model in a loop can emit megabytes of junk.

The check-then-write is only race-free against a program that is not running: the company never runs a generated
program while it writes files into its folder (``sandbox.run_program`` returns only once the program is dead).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from src.errors import (
    CompanyError,
    FileTooLargeError,
    ProjectFileNotFoundError,
    ProjectTooLargeError,
    ProjectWriteError,
    UnsafePathError,
)
from src.workflows.company.code_extraction import safe_relative_path

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
# A real source file from a small model is a few KiB; 1 MiB leaves room for data files and still stops a runaway.
DEFAULT_MAX_FILE_BYTES = 1 * MiB
# Enough for dozens of files plus what the program itself writes (logs, saves), small enough to notice a loop.
DEFAULT_MAX_PROJECT_BYTES = 20 * MiB
# A model listing thousands of tiny files is a loop too, and each one costs an inode and a snapshot entry.
DEFAULT_MAX_FILES = 1000

_TEMP_PREFIX = ".hearth-tmp-"  # fixed length, so that a 255-byte final name still leaves a valid temp name
_EXCLUDED_DIRS = frozenset({".git"})
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines
# dir_fd walks need openat/renameat/mkdirat; Windows has none of them and falls back to path-based writes.
_USE_DIR_FD = (
    os.name == "posix"
    and bool(_NOFOLLOW and _DIRECTORY)
    # os.replace takes the same dir_fd arguments as os.rename but is not listed in supports_dir_fd.
    and {os.open, os.mkdir, os.rename, os.unlink} <= os.supports_dir_fd
)


class ProjectFolder:
    """A generated project's folder: bounded, atomic writes under checked names, and reads that stay inside it."""

    def __init__(
        self,
        root: Path,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_project_bytes: int = DEFAULT_MAX_PROJECT_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        # Resolved once: the folder's own location is trusted (the app chose it); only what is inside is not.
        self.root = Path(root).resolve(strict=True)
        self.max_file_bytes = max_file_bytes
        self.max_project_bytes = max_project_bytes
        self.max_files = max_files
        # The limits are on what Hearth writes here (the model's files, the run's own): what the program writes when
        # it runs (a log, a database, its output) is bounded by the sandbox instead, and must not stop the next fix.
        self._written: set[str] = set()

    def __repr__(self) -> str:
        return f"ProjectFolder({str(self.root)!r})"

    # --- writing ---------------------------------------------------------------------------------------------

    def write_file(self, relative_name: str, content: str | bytes) -> Path:
        """Write ``content`` (text as UTF-8) at ``relative_name`` inside the folder; returns the real path written.

        Raises (and logs a warning for) :class:`UnsafePathError`, :class:`FileTooLargeError`,
        :class:`ProjectTooLargeError` or :class:`ProjectWriteError`; nothing is written then, and the caller
        decides whether to go on with the other files.
        """
        try:
            return self._write(relative_name, content)
        except CompanyError as exc:
            logger.warning("Refused a generated file in %s: %s", self.root, exc)
            raise

    def _write(self, relative_name: str, content: str | bytes) -> Path:
        relative = safe_relative_path(relative_name)
        name = str(relative)
        # A str has at least one byte per character: a 50 MB reply is refused before encoding copies it.
        if len(content) > self.max_file_bytes:
            raise FileTooLargeError(name, len(content), self.max_file_bytes)
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        if len(data) > self.max_file_bytes:
            raise FileTooLargeError(name, len(data), self.max_file_bytes)

        target = self._inside(relative, relative_name)
        existing = _regular_file_size(target)
        if target.is_dir():
            raise ProjectWriteError(name, "a folder of that name already exists")
        total, count = self._written_usage()
        if name not in self._written:
            existing = None  # a file the program wrote: not counted so far, counted from now on
        if total - (existing or 0) + len(data) > self.max_project_bytes:
            raise ProjectTooLargeError(
                name, f"{total - (existing or 0) + len(data):,} bytes > {self.max_project_bytes:,} bytes"
            )
        if existing is None and count + 1 > self.max_files:
            raise ProjectTooLargeError(name, f"more than {self.max_files} files")

        parts = target.relative_to(self.root).parts
        try:
            if _USE_DIR_FD:
                _write_with_dir_fds(self.root, parts, data)
            else:
                _write_by_path(target, data)
        except OSError as exc:
            raise ProjectWriteError(name, exc.strerror or str(exc)) from exc
        self._written.add(name)
        logger.debug("Wrote %s (%d bytes) in %s", name, len(data), self.root)
        return target

    def _inside(self, relative: PurePosixPath, original: str) -> Path:
        """The real path for ``relative`` after following existing symlinks, refused unless inside the folder."""
        try:
            resolved = (self.root / relative).resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on Python 3.11
            raise UnsafePathError(original, f"its path cannot be resolved ({exc})") from exc
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise UnsafePathError(original, "it leads outside the project folder through a symbolic link")
        if any(part.lower() in _EXCLUDED_DIRS for part in resolved.relative_to(self.root).parts):
            raise UnsafePathError(original, "it leads into .git through a symbolic link")
        return resolved

    # --- reading ---------------------------------------------------------------------------------------------

    def read_file(self, relative_name: str) -> str:
        """The text of a file in the folder (undecodable bytes replaced); links leading outside are refused."""
        relative = safe_relative_path(relative_name)
        target = self._inside(relative, relative_name)
        size = _regular_file_size(target)
        if size is None:
            raise ProjectFileNotFoundError(str(relative), str(self.root))
        if size > self.max_file_bytes:
            # The program itself may have written a big file (up to its own file size limit).
            raise FileTooLargeError(str(relative), size, self.max_file_bytes)
        return target.read_bytes()[: self.max_file_bytes].decode("utf-8", errors="replace")

    def list_files(self) -> list[str]:
        """Relative POSIX paths of the regular files in the folder, sorted; ``.git`` and symlinks left out."""
        return sorted(relative for relative, _ in self._walk())

    def snapshot(self) -> dict[str, str]:
        """Every file's text by relative path; files that can't be read safely are left out with a warning."""
        files: dict[str, str] = {}
        budget = self.max_project_bytes
        for relative, size in sorted(self._walk()):
            if size > budget:
                logger.warning(
                    "Snapshot of %s: left out %s (%d bytes, over the project limit)", self.root, relative, size
                )
                continue
            try:
                files[relative] = self.read_file(relative)
            except (CompanyError, OSError) as exc:
                logger.warning("Snapshot of %s: left out %s: %s", self.root, relative, exc)
                continue
            budget -= size
        return files

    def total_bytes(self) -> int:
        return self._usage()[0]

    def _written_usage(self) -> tuple[int, int]:
        """Bytes and number of the files written through this object that are still there."""
        sizes = [size for size in (_regular_file_size(self.root / name) for name in self._written) if size is not None]
        return sum(sizes), len(sizes)

    def _usage(self) -> tuple[int, int]:
        sizes = [size for _, size in self._walk()]
        return sum(sizes), len(sizes)

    def _walk(self) -> Iterator[tuple[str, int]]:
        for folder, dirs, names in os.walk(self.root, followlinks=False):
            dirs[:] = [d for d in dirs if d.lower() not in _EXCLUDED_DIRS]
            for file_name in names:
                if file_name.startswith(_TEMP_PREFIX):
                    continue
                path = Path(folder, file_name)
                size = _regular_file_size(path)
                if size is not None:
                    yield path.relative_to(self.root).as_posix(), size


def _regular_file_size(path: Path) -> int | None:
    """The size of a regular file at ``path`` (not following a final symlink), else None."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _temp_name() -> str:
    return f"{_TEMP_PREFIX}{secrets.token_hex(8)}.tmp"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_with_dir_fds(root: Path, parts: tuple[str, ...], data: bytes) -> None:
    """Create the folders and write the file relative to directory descriptors opened with O_NOFOLLOW.

    The path was checked a moment ago; this makes the write itself refuse a symlink that appeared since, instead
    of trusting the check.
    """
    dir_fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=dir_fd)
            except FileExistsError:
                pass
            next_fd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        temp = _temp_name()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename() replaces a final symlink itself rather than writing through it.
            os.replace(temp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        os.fsync(dir_fd)  # the rename itself survives a crash only once the folder is synced
    finally:
        os.close(dir_fd)


def _write_by_path(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / _temp_name()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY | _NOFOLLOW, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
