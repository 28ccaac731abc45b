"""The project folder: nothing a model names is ever written outside it, and nothing too big is written at all."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from src.errors import (
    CompanyError,
    FileTooLargeError,
    HearthError,
    ProjectFileNotFoundError,
    ProjectTooLargeError,
    ProjectWriteError,
    UnsafePathError,
)
from src.workflows.company import warehouse
from src.workflows.company.code_extraction import extract_code_files
from src.workflows.company.warehouse import ProjectFolder

posix_only = pytest.mark.skipif(os.name != "posix", reason="symlinks and dir_fd writes are tested on POSIX")

# A reply as a junk-producing (or hostile) model might write it: good files mixed with escapes.
SCRIPTED_EVIL_REPLY = """Here is the project.

main.py
```python
import utils

if __name__ == "__main__":
    utils.run()
```

utils/__init__.py
```python
def run():
    print("ok")
```

../../evil.py
```python
print("escaped two levels up")
```

/tmp/evil.py
```python
print("escaped to /tmp")
```

C:\\evil.py
```python
print("escaped to a drive")
```

..\\..\\evil_windows.py
```python
print("escaped with backslashes")
```

~/evil_home.py
```python
print("escaped to home")
```
"""


@pytest.fixture
def project(tmp_path: Path) -> ProjectFolder:
    return ProjectFolder(tmp_path / "WareHouse" / "Gomoku_DefaultOrg_20250101120000")


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_write_read_list_snapshot(project: ProjectFolder) -> None:
    written = project.write_file("main.py", "print('hi')\n")
    assert written == project.root / "main.py"
    project.write_file("./pkg//helpers.py", "X = 1\n")
    project.write_file("data/level.bin", b"\x00\x01")
    assert project.read_file("main.py") == "print('hi')\n"
    assert project.list_files() == ["data/level.bin", "main.py", "pkg/helpers.py"]
    assert project.snapshot() == {"data/level.bin": "\x00\x01", "main.py": "print('hi')\n", "pkg/helpers.py": "X = 1\n"}
    assert project.total_bytes() == len("print('hi')\n") + len("X = 1\n") + 2


def test_overwrite_is_atomic_and_leaves_no_temp_files(project: ProjectFolder) -> None:
    project.write_file("main.py", "v = 1\n")
    project.write_file("main.py", "v = 2\n")
    assert project.read_file("main.py") == "v = 2\n"
    assert files_under(project.root) == {"main.py"}


def test_scripted_evil_reply_writes_only_inside_the_folder(
    project: ProjectFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_evil = Path("/tmp/evil.py")
    tmp_evil_before = tmp_evil.stat().st_mtime_ns if tmp_evil.exists() else None
    cwd_before = set(os.listdir(Path.cwd()))
    written: list[str] = []
    refused: list[CompanyError] = []
    with caplog.at_level(logging.WARNING, logger="src.workflows.company.warehouse"):
        for file in extract_code_files(SCRIPTED_EVIL_REPLY):
            try:
                project.write_file(file.path, file.content)
                written.append(file.path)
            except CompanyError as exc:  # what the company does: note it, go on with the other files
                refused.append(exc)

    assert written == ["main.py", "utils/__init__.py"]
    assert len(refused) == 5 and all(isinstance(e, UnsafePathError) and isinstance(e, HearthError) for e in refused)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 5
    # Nothing anywhere but inside the project: not in its parents, not in /tmp, not in the current folder.
    inside = f"WareHouse/{project.root.name}"
    assert files_under(tmp_path) == {f"{inside}/main.py", f"{inside}/utils/__init__.py"}
    for parent in project.root.parents:
        assert not (parent / "evil.py").exists()
        assert not (parent / "evil_windows.py").exists()
    assert (tmp_evil.stat().st_mtime_ns if tmp_evil.exists() else None) == tmp_evil_before
    assert set(os.listdir(Path.cwd())) == cwd_before  # no file literally named "C:\evil.py" either
    assert not (Path.home() / "evil_home.py").exists()


@pytest.mark.parametrize("name", ["../../evil.py", "/tmp/evil.py", "C:\\evil.py", "\\\\server\\share\\evil.py", ""])
def test_each_escape_is_a_typed_error(project: ProjectFolder, name: str) -> None:
    with pytest.raises(UnsafePathError):
        project.write_file(name, "X = 1\n")
    assert project.list_files() == []


@posix_only
def test_symlinked_folder_pointing_outside_is_not_followed(project: ProjectFolder, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (project.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        project.write_file("link/evil.py", "X = 1\n")
    with pytest.raises(UnsafePathError):
        project.write_file("link/sub/evil.py", "X = 1\n")
    assert list(outside.iterdir()) == []


@posix_only
def test_symlinked_file_pointing_outside_is_not_written_through_or_read(project: ProjectFolder, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("original")
    (project.root / "notes.txt").symlink_to(target)
    with pytest.raises(UnsafePathError):
        project.write_file("notes.txt", "overwritten")
    with pytest.raises(UnsafePathError):
        project.read_file("notes.txt")  # its content would otherwise end up in a model's context
    assert target.read_text() == "original"
    assert project.list_files() == []  # symlinks are not project files
    assert project.snapshot() == {}


@posix_only
def test_symlink_loop_is_refused(project: ProjectFolder) -> None:
    (project.root / "a").symlink_to(project.root / "b")
    (project.root / "b").symlink_to(project.root / "a")
    with pytest.raises(UnsafePathError):
        project.write_file("a/x.py", "X = 1\n")


@posix_only
def test_symlink_staying_inside_is_followed(project: ProjectFolder) -> None:
    (project.root / "real").mkdir()
    (project.root / "alias").symlink_to(project.root / "real", target_is_directory=True)
    written = project.write_file("alias/x.py", "X = 1\n")
    assert written == project.root / "real" / "x.py"
    assert project.read_file("real/x.py") == "X = 1\n"


@posix_only
@pytest.mark.skipif(not warehouse._USE_DIR_FD, reason="needs openat-style dir_fd support")
def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_followed(project: ProjectFolder, tmp_path: Path) -> None:
    # The race the dir_fd walk closes: the path was checked, then "sub" became a link to the outside.
    outside = tmp_path / "outside"
    outside.mkdir()
    (project.root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError):
        warehouse._write_with_dir_fds(project.root, ("sub", "evil.py"), b"X = 1\n")
    assert list(outside.iterdir()) == []


def test_fifty_megabyte_file_is_refused_and_nothing_written(project: ProjectFolder) -> None:
    huge = "x" * (50 * 1024 * 1024)
    with pytest.raises(FileTooLargeError) as caught:
        project.write_file("main.py", huge)
    assert caught.value.limit == 1024 * 1024 and caught.value.size == len(huge)
    with pytest.raises(FileTooLargeError):
        project.write_file("data.bin", huge.encode())
    assert files_under(project.root) == set()


def test_multibyte_text_is_measured_in_bytes(tmp_path: Path) -> None:
    folder = ProjectFolder(tmp_path / "p", max_file_bytes=100)
    folder.write_file("ok.txt", "é" * 50)  # 100 bytes
    with pytest.raises(FileTooLargeError):
        folder.write_file("big.txt", "é" * 51)  # 51 characters, 102 bytes


def test_project_size_limit(tmp_path: Path) -> None:
    folder = ProjectFolder(tmp_path / "p", max_file_bytes=1000, max_project_bytes=2500)
    folder.write_file("a.py", "a" * 1000)
    folder.write_file("b.py", "b" * 1000)
    with pytest.raises(ProjectTooLargeError):
        folder.write_file("c.py", "c" * 1000)
    folder.write_file("a.py", "A" * 1000)  # replacing a file only counts the difference
    folder.write_file("c.py", "c" * 500)
    assert folder.list_files() == ["a.py", "b.py", "c.py"]


def test_only_what_hearth_wrote_counts_against_the_limits(tmp_path: Path) -> None:
    # The program's own output (a 3 kB log, many files) must not block the next fix of its code (issue 12).
    folder = ProjectFolder(tmp_path / "p", max_file_bytes=1000, max_project_bytes=2500, max_files=2)
    (folder.root / "output.log").write_text("x" * 3000)
    for index in range(3):
        (folder.root / f"frame{index}.png").write_bytes(b"\x89PNG")
    folder.write_file("a.py", "a" * 1000)
    folder.write_file("output.log", "o" * 1000)  # rewritten by Hearth: counted from now on
    with pytest.raises(ProjectTooLargeError):
        folder.write_file("b.py", "b" * 1000)
    with pytest.raises(ProjectTooLargeError):
        folder.write_file("b.py", "")  # a third file of Hearth's
    folder.write_file("a.py", "A" * 500)
    folder.write_file("output.log", "O" * 1000)
    assert (folder.root / "frame2.png").read_bytes() == b"\x89PNG"


def test_project_file_count_limit(tmp_path: Path) -> None:
    folder = ProjectFolder(tmp_path / "p", max_files=2)
    folder.write_file("a.py", "")
    folder.write_file("b.py", "")
    with pytest.raises(ProjectTooLargeError):
        folder.write_file("c.py", "")
    folder.write_file("a.py", "X = 1\n")


def test_file_where_a_folder_is_needed_is_a_typed_error(project: ProjectFolder) -> None:
    project.write_file("main.py", "X = 1\n")
    with pytest.raises(ProjectWriteError):
        project.write_file("main.py/inner.py", "Y = 2\n")
    project.write_file("pkg/mod.py", "Z = 3\n")
    with pytest.raises(ProjectWriteError):
        project.write_file("pkg", "a file over a folder\n")
    assert project.read_file("main.py") == "X = 1\n"
    assert files_under(project.root) == {"main.py", "pkg/mod.py"}


def test_git_folder_is_neither_listed_nor_writable(project: ProjectFolder) -> None:
    (project.root / ".git" / "hooks").mkdir(parents=True)
    (project.root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    project.write_file("main.py", "X = 1\n")
    assert project.list_files() == ["main.py"]
    with pytest.raises(UnsafePathError):
        project.write_file(".git/hooks/post-commit", "#!/bin/sh\nrm -rf ~\n")
    assert not (project.root / ".git" / "hooks" / "post-commit").exists()


def test_reading_missing_or_too_large_files(tmp_path: Path) -> None:
    folder = ProjectFolder(tmp_path / "p", max_file_bytes=10)
    with pytest.raises(ProjectFileNotFoundError):
        folder.read_file("nope.py")
    (folder.root / "log.txt").write_text("x" * 100)  # written by the program itself, not through write_file
    with pytest.raises(FileTooLargeError):
        folder.read_file("log.txt")
    assert folder.snapshot() == {}
    with pytest.raises(UnsafePathError):
        folder.read_file("../../etc/passwd")


def test_undecodable_bytes_are_replaced(project: ProjectFolder) -> None:
    project.write_file("weird.txt", b"ok \xff\xfe end")
    assert project.read_file("weird.txt") == "ok \ufffd\ufffd end"
