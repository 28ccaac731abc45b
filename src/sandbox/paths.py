"""Where things are that every sandbox mode must hide, or must let a Python program read."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

_PYTHON_PREFIX_PARTS = ("bin", "lib", "lib64", "pyvenv.cfg")


def home_folders() -> list[Path]:
    """The user's home folder, as HOME says and as the password database says (they can differ)."""
    folders = {Path.home()}
    try:
        import pwd  # POSIX only; this module is imported on Windows too

        folders.add(Path(pwd.getpwuid(os.getuid()).pw_dir))
    except (ImportError, KeyError):
        pass
    return [folder for folder in folders if folder != Path("/")]


def python_parts() -> list[Path]:
    """What the interpreter needs to start and import the app's packages: the parts of a venv, of its base
    installation and of the user's site-packages, never a whole prefix (a Python installed with ``--prefix ~``
    would otherwise bring back the whole home folder). Resolved, existing, outermost only."""
    executable = Path(os.path.realpath(sys.executable))
    prefixes = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), executable.parent.parent}
    parts = [prefix / name for prefix in prefixes for name in _PYTHON_PREFIX_PARTS]
    parts.append(executable.parent)
    if sysconfig.get_config_var("PYTHONFRAMEWORK"):
        # A macOS framework build (python.org, Homebrew): bin/python3 starts Resources/Python.app, which loads the
        # framework's library, <prefix>/Python.
        parts += [Path(sys.base_prefix) / "Resources", Path(sys.base_prefix) / "Python"]
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        parts.append(Path(user_site))
    return outermost(parts)


def outermost(paths: list[Path], *, keep_nested: bool = False) -> list[Path]:
    """Existing paths, resolved, shortest first, and (unless ``keep_nested``) without those inside another one of the
    list: mounting or allowing those too would be redundant or, in the wrong order, undone."""
    resolved = sorted({path.resolve() for path in paths if path.exists()}, key=lambda p: (len(p.parts), str(p)))
    if keep_nested:
        return resolved
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept
