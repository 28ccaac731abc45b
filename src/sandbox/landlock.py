"""The Linux fallback where bubblewrap cannot start (no unprivileged user namespaces, as under Ubuntu 24.04's
AppArmor rule): Landlock, a kernel feature (5.13+) that any process may use on itself, without namespaces.

Hearth's launcher applies it to the program alone, just before it becomes the program (``LANDLOCK_ABI`` etc. in
``src/workflows/company/sandbox.py``'s launcher), with what this module lists:

* **Files**: read (and execute) only the system's folders (``/usr``, ``/etc``, ``/lib*``, ``/bin``, ``/sbin``,
  ``/proc``, ``/sys``) and the Python it runs on; read and write only its project folder and its own temporary
  folder (HOME and TMPDIR); a few harmless devices (``/dev/null``, ``/dev/urandom``, ...). Everything else does
  not open: the home folder, Hearth's data and install, the other projects, ``/tmp``, ``/dev/shm``, ``/run``.
* **Network**: a seccomp filter the launcher adds (x86-64 and arm64) refuses ``socket()`` and io_uring (which opens
  sockets without it): no TCP, no UDP, no Unix sockets (the session bus, hence the keyring). Landlock itself also
  refuses TCP from ABI 4 on. The same filter refuses memfd and System V IPC (memory past the limits or past the run).
* **Other processes**: Landlock keeps it from ptrace-ing, and so from reading the memory or ``/proc/<pid>/environ``
  of, any process outside its domain (Hearth too; root's capabilities are dropped first, or they would reach past
  it). From ABI 6 on, Landlock refuses signals to anything outside the domain. Below, the filter refuses signals
  to the supervising launcher (one thread), to Hearth's main thread and to their process groups, and the ways to
  have the kernel send them (F_SETOWN); not to Hearth's other threads, so Hearth asks the user first there.

What it does not do, unlike bubblewrap: hide the rest of ``/proc`` (other processes' command lines are readable),
keep it from signalling the user's other programs before ABI 6, and give the program a PID namespace (the
launcher's subreaper ends its descendants instead).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
import sys
from pathlib import Path

from src.sandbox import paths

logger = logging.getLogger(__name__)

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_LANDLOCK_CREATE_RULESET_VERSION = 1
# Architectures whose socket() syscall number the launcher's seccomp filter knows.
SECCOMP_ARCHITECTURES = ("x86_64", "aarch64")

SIGNAL_SCOPE_ABI = 6  # Linux 6.12: Landlock keeps signals inside the sandbox; below, Hearth asks before using it
SYSTEM_READABLE = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

@functools.cache
def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none, or not Linux)."""
    abi = _ask_kernel()
    logger.info("Landlock ABI: %s", abi or "not available")
    return abi


def _ask_kernel() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        version = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


def unavailable_reason() -> str | None:
    """Why the Landlock mode cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "Landlock exists on Linux only"
    if platform.machine() not in SECCOMP_ARCHITECTURES:
        return f"the network filter is not written for {platform.machine()}"
    if landlock_abi() < 1:
        return "this kernel has no Landlock (Linux 5.13 or later, with Landlock enabled)"
    return None


def launcher_arguments(project: Path, private_tmp: Path) -> list[str]:
    """The launcher's options that restrict the program to the rules in the module docstring."""
    arguments = [f"LANDLOCK_ABI={landlock_abi()}", "SECCOMP=landlock"]
    arguments += [f"READ={path}" for path in [*SYSTEM_READABLE, *map(str, paths.python_parts())]]
    arguments += [f"WRITE={path}" for path in (project.resolve(), private_tmp.resolve())]
    arguments += [f"DEVICE={path}" for path in DEVICES]
    return arguments
