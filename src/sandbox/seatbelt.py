"""The macOS sandbox: Seatbelt, through ``/usr/bin/sandbox-exec`` with a profile written here (as Codex CLI and
Claude Code do; Apple marks the command deprecated, but the kernel mechanism under it is what sandboxes every App
Store app, and it is still there in macOS 15).

The profile starts from ``(deny default)`` and allows back what a Python program needs; SBPL rules are decided by the
*last* rule that matches, which is what the order below relies on:

* **Files**: everything is readable (the dynamic loader, frameworks and caches live all over ``/System``,
  ``/Library``, ``/private/var/db`` and ``/private/var/folders``), except what is hidden: the user's home folder,
  Hearth's data folder and database, its install (``.env``), the WareHouse (the other projects), the evolution runs,
  ``/private/tmp`` and the user's temporary folder. Then the Python that runs the program, its project folder and
  its own temporary folder are made readable again, after the hiding. Writable: the project folder (unless the
  caller asks for it read-only: the quality checks, git's work tree), the run's own temporary folder, the extra
  folders the caller names (git's repository) and a few devices (``/dev/null``...).
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

import functools
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
# No /dev/tty and no ioctl on devices: a terminal is where keystrokes could be injected (TIOCSTI).
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/dtracehelper")
_PROBE_TIMEOUT_S = 10.0

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


@functools.cache
def unavailable_reason() -> str | None:
    """Why the Seatbelt mode cannot run here, or None when it can (probed once per process)."""
    if sys.platform != "darwin":
        return "Seatbelt exists on macOS only"
    if not os.access(SANDBOX_EXEC, os.X_OK):
        return f"{SANDBOX_EXEC} is missing"
    try:
        # Fails where Hearth itself already runs in a sandbox (a sandbox cannot be applied inside another).
        done = subprocess.run(
            [SANDBOX_EXEC, "-p", "(version 1)(allow default)", "--", "/usr/bin/true"],
            capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SANDBOX_EXEC} could not start: {exc}"
    if done.returncode != 0:
        return f"{SANDBOX_EXEC} failed: {(done.stderr.strip() or f'exit code {done.returncode}')[:300]}"
    return None


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

    to_hide = [*paths.home_folders(), *hidden, Path("/private/tmp"), Path("/tmp"), Path(tempfile.gettempdir())]
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
    rule("allow", "file-write*", "WRITE", writable_real)
    rule("deny", "file-write*", "HIDDEN_INSIDE_WRITABLE",
         [h for h in hidden_real if any(h != w and Path(h).is_relative_to(w) for w in writable_real)])  # fmt: skip
    devices = " ".join(f'(literal "{device}")' for device in DEVICES)
    rules.append(f"(allow file-read* file-write-data {devices})")
    return "\n".join(rules) + "\n", parameters


def _unique_real(folders: Sequence[Path]) -> list[str]:
    return list(dict.fromkeys(os.path.realpath(folder) for folder in folders))
