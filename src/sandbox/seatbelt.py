"""The macOS sandbox: Seatbelt, through ``/usr/bin/sandbox-exec`` with a profile written here (as Codex CLI and
Claude Code do; Apple marks the command deprecated, but the kernel mechanism under it is what sandboxes every App
Store app, and it is still there in macOS 15).

The profile starts from ``(deny default)`` and allows back what a Python program needs; SBPL rules are decided by the
*last* rule that matches, which is what the order below relies on:

* **Files**: everything is readable (the dynamic loader, frameworks and caches live all over ``/System``,
  ``/Library`` and ``/private/var/db``), except what is hidden: the user's home folder, Hearth's data folder and
  database, its install (``.env``), the WareHouse (the other projects), the evolution runs, ``/private/tmp``,
  ``/private/var/tmp``, the user's own temporary and cache folders (``/private/var/folders/<xx>/<id>``) and ``/dev``
  but for ``/dev/null``, ``/dev/zero``, the random devices and the program's own descriptors (``/dev/fd``): no
  terminal, no disk. Then the Python that runs the program, its project folder and its own temporary folder are
  made readable again, after the hiding. Writable: the project folder (unless the caller asks for it read-only:
  the quality checks, git's work tree), the run's own temporary folder, the extra folders the caller names (git's
  repository) and those devices.
* **Network**: no rule allows any ``network*`` operation or a socket of any kind: no TCP or UDP, not even to
  127.0.0.1, and no Unix socket by path. Mach services (how a macOS program reaches the keychain, the pasteboard, the
  window server, other apps) are closed except the directory lookup that ``getpwuid`` needs.
* **Other processes**: signals and process information only ``(target same-sandbox)``: it cannot signal Hearth or
  read another process's arguments or environment. Children inherit the profile.

Paths reach the profile as parameters (``-D NAME=path``, read with ``(param "NAME")``), never spliced into its text:
a folder named ``a") (allow default`` stays a file name.

What it does not do, unlike bubblewrap: give the program a PID namespace, or let Hearth find a descendant that left
the program's process group and outlived its parent (macOS has no subreaper); such a process keeps the profile, so
it stays unable to read the hidden folders, use the network or write elsewhere. The rest of the file system
(``/Applications``, ``/Volumes``, ``/etc``) is readable as by any program of the user's.

Nothing here can be run on Linux: the profile text and its arguments are tested on paper (``tests/security``
evaluates the rules with SBPL's last-match semantics); the mode itself has not run on a Mac in this project's CI.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from src.sandbox import paths

logger = logging.getLogger(__name__)

SANDBOX_EXEC = "/usr/bin/sandbox-exec"  # fixed: a sandbox-exec found through PATH could be anyone's
# /dev is closed but for these and /dev/fd (the program's own descriptors): no /dev/tty or /dev/ttys*, no ioctl on
# devices (a terminal is where keystrokes could be injected: TIOCSTI), no disks (/dev/disk*, /dev/rdisk*).
DEVICES = (
    "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/dtracehelper", "/dev/stdin", "/dev/stdout",
    "/dev/stderr",
)  # fmt: skip
_PROBE_TIMEOUT_S = 30.0  # a first start of Python on a Mac can be slow (signature checks)
_PROBE_PROGRAM = "import multiprocessing, os; multiprocessing.Lock(); os.cpu_count(); print('ok')"

# Everything a Python program needs that is not a file: processes of its own, their signals and information, the
# sysctls and host calls that os.cpu_count(), platform and numpy use (named: kern.procargs2 would hand it every
# process's arguments and environment, Hearth's keys included), POSIX semaphores (multiprocessing's locks),
# reading preferences (CoreFoundation), and the directory service's user lookup (getpwuid, getpass.getuser).
_BASE_RULES = """\
(version 1)
(deny default)
(allow process-exec)
(allow process-fork)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))
(allow sysctl-read
  (sysctl-name-prefix "hw.") (sysctl-name "machdep.cpu.brand_string") (sysctl-name "kern.argmax")
  (sysctl-name "kern.hostname") (sysctl-name "kern.maxfilesperproc") (sysctl-name "kern.maxproc")
  (sysctl-name "kern.osproductversion") (sysctl-name "kern.osrelease") (sysctl-name "kern.ostype")
  (sysctl-name "kern.osvariant_status") (sysctl-name "kern.osversion") (sysctl-name "kern.secure_kernel")
  (sysctl-name "kern.usrstack64") (sysctl-name "kern.version") (sysctl-name "sysctl.proc_cputype")
  (sysctl-name "sysctl.proc_translated") (sysctl-name "vm.loadavg") (sysctl-name-prefix "kern.proc.pid."))
(allow mach-host*)
(allow ipc-posix-sem)
(allow user-preference-read)
(allow mach-lookup (global-name "com.apple.system.opendirectoryd.libinfo"))
(allow file-read*)
"""
# After the hidden and readable folders (a Python whose prefix were "/" must not reopen /dev), before the devices.
# /dev/stdin, /dev/stdout and /dev/stderr are links into /dev/fd: following one needs its own metadata.
_DEVICE_RULES = """\
(deny file-read* file-write* (subpath "/dev"))
(allow file-read-metadata (literal "/dev"))
(allow file-read* file-write-data (subpath "/dev/fd"))
(allow file-read* (literal "/dev/autofs_nowait"))
"""


def unavailable_reason(hidden: Sequence[Path] = ()) -> str | None:
    """Why the Seatbelt mode cannot run here, or None when it can. ``hidden`` as for ``wrap``: the probe runs under
    the profile a run gets. Probed once per process, unless the probe itself could not finish (a timeout on a busy
    machine): that is tried again next time rather than taken as the answer for the whole session."""
    key = tuple(hidden)
    if key not in _probed:
        reason, lasting = _unavailable_reason(key)
        if not lasting:
            logger.warning("Seatbelt probe did not finish (%s); trying again at the next run", reason)
            return reason
        _probed[key] = reason
    return _probed[key]


_probed: dict[tuple[Path, ...], str | None] = {}


def _unavailable_reason(hidden: tuple[Path, ...]) -> tuple[str | None, bool]:
    if sys.platform != "darwin":
        return "Seatbelt exists on macOS only", True
    if not os.access(SANDBOX_EXEC, os.X_OK):
        return f"{SANDBOX_EXEC} is missing", True
    return probe(hidden)


def probe(hidden: Sequence[Path] = ()) -> tuple[str | None, bool]:
    """Run Python under a profile as a run gets it: (None, True) when it works, else (why not, whether that answer
    lasts: False for a probe that timed out or could not start)."""
    # A profile macOS rejects, a Python it cannot start or import from, or POSIX semaphores it refuses: each shows
    # here rather than in every run. Also fails where Hearth itself already runs in a sandbox (a sandbox cannot be
    # applied inside another).
    try:
        with tempfile.TemporaryDirectory(prefix="hearth-seatbelt-probe-") as folder:
            project, private_tmp = Path(folder, "project"), Path(folder, "tmp")
            project.mkdir()
            private_tmp.mkdir()
            command = wrap([sys.executable, "-I", "-c", _PROBE_PROGRAM], project=project, private_tmp=private_tmp,
                           hidden=hidden)  # fmt: skip
            done = subprocess.run(
                command, cwd=project, env={"HOME": str(private_tmp), "TMPDIR": str(private_tmp), "PATH": os.defpath},
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False,
            )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SANDBOX_EXEC} could not start or finish: {exc}", False
    if done.returncode != 0 or done.stdout.strip() != "ok":
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return f"Python does not run under {SANDBOX_EXEC} with Hearth's profile: {detail[0][:300]}", True
    return None, True


def wrap(
    command: Sequence[str],
    *,
    project: Path,
    private_tmp: Path,
    hidden: Sequence[Path],
    read_only_project: bool = False,
    writable: Sequence[Path] = (),
) -> list[str]:
    """``command`` (run in ``project``) under the profile described above. ``private_tmp`` is the run's own folder
    (HOME and TMPDIR); ``hidden`` are folders to hide besides the user's home folders (Hearth's data, its install,
    the WareHouse); ``writable`` are more folders it may write (git's repository, for git)."""
    profile, parameters = profile_and_parameters(
        project=project, private_tmp=private_tmp, hidden=hidden, read_only_project=read_only_project,
        writable=writable,
    )  # fmt: skip
    arguments = [SANDBOX_EXEC, "-p", profile]
    for name, value in parameters.items():
        arguments += ["-D", f"{name}={value}"]
    return [*arguments, "--", *command]


def profile_and_parameters(
    *,
    project: Path,
    private_tmp: Path,
    hidden: Sequence[Path],
    read_only_project: bool = False,
    writable: Sequence[Path] = (),
) -> tuple[str, dict[str, str]]:
    """The profile's text and the values of its parameters (real paths: ``/tmp`` is ``/private/tmp`` on macOS, and
    Seatbelt matches the path the kernel resolved)."""
    parameters: dict[str, str] = {}
    numbers: Counter[str] = Counter()

    def filters(kind: str, real_folders: Sequence[str], matcher: str) -> str:
        names = []
        for folder in real_folders:
            name = f"{kind}_{numbers[kind]}"
            numbers[kind] += 1
            parameters[name] = folder
            names.append(f'({matcher} (param "{name}"))')
        return " ".join(names)

    to_hide = [*paths.home_folders(), *hidden, Path("/private/tmp"), Path("/tmp"), Path("/private/var/tmp"),
               *user_temporary_roots()]
    hidden_real = _unique_real(to_hide)
    readable = _unique_real([*paths.python_parts(), project, private_tmp, *writable])
    writable_real = _unique_real([*([] if read_only_project else [project]), private_tmp, *writable])
    # Reading a file needs the metadata of the folders on its way there (realpath, getcwd): those folders
    # themselves, not what else they hold.
    ancestors = _unique_real([ancestor for path in readable for ancestor in Path(path).parents])

    rules = [_BASE_RULES.rstrip("\n")]

    def rule(action: str, operations: str, kind: str, folders: list[str], matcher: str = "subpath") -> None:
        if folders:  # a rule with no filter matches everything: "(deny file-read*)" would hide the whole disk
            rules.append(f"({action} {operations} {filters(kind, folders, matcher)})")

    # Hidden and readable folders nest both ways (the project inside the hidden WareHouse, Hearth's data folder
    # inside a venv): one rule each, the outermost first, so that the deepest folder's rule is the last to match.
    layered = sorted([(h, "HIDDEN") for h in hidden_real] + [(r, "READ") for r in readable],
                     key=lambda entry: (len(Path(entry[0]).parts), entry[1] == "READ"))  # fmt: skip
    for folder, kind in layered:
        rule("deny" if kind == "HIDDEN" else "allow", "file-read*", kind, [folder])
    rule("allow", "file-read-metadata", "ANCESTOR", ancestors, "literal")
    rules.append(_DEVICE_RULES.rstrip("\n"))
    rule("allow", "file-write*", "WRITE", writable_real)
    rule("deny", "file-write*", "HIDDEN_INSIDE_WRITABLE",
         [h for h in hidden_real if any(h != w and Path(h).is_relative_to(w) for w in writable_real)])  # fmt: skip
    devices = " ".join(f'(literal "{device}")' for device in DEVICES)
    rules.append(f"(allow file-read* file-write-data {devices})")
    return "\n".join(rules) + "\n", parameters


def user_temporary_roots() -> list[Path]:
    """The user's temporary folders: the per-user folder under ``/private/var/folders`` (``T``: temporary files,
    other runs', other apps' downloads; ``C``: caches, some apps' tokens; ``0``), asked of the system whatever
    TMPDIR says, and what ``tempfile`` uses when it is elsewhere."""
    candidates = [tempfile.gettempdir()]
    if sys.platform == "darwin":
        for number in _DARWIN_USER_FOLDERS:  # not in Python's os.confstr_names: asked by number
            try:
                candidates.append(os.confstr(number) or "")
            except (OSError, ValueError):
                pass
    roots = []
    for candidate in filter(None, candidates):
        parts = Path(os.path.realpath(candidate)).parts
        # /private/var/folders/<two letters>/<id>/{T,C,0}: hide the whole <id> folder, not only T
        per_user = parts[:4] == ("/", "private", "var", "folders") and len(parts) >= 6
        roots.append(Path(*parts[:6]) if per_user else Path(*parts))
    return list(dict.fromkeys(roots))


# <unistd.h>: _CS_DARWIN_USER_DIR, _CS_DARWIN_USER_TEMP_DIR, _CS_DARWIN_USER_CACHE_DIR
_DARWIN_USER_FOLDERS = (65536, 65537, 65538)


def _unique_real(folders: Sequence[Path]) -> list[str]:
    return list(dict.fromkeys(os.path.realpath(folder) for folder in folders))
