"""Windows: a Job Object around every generated program, for what POSIX gets from rlimits and a subreaper.

A Job Object holds the program and the processes it starts in the usual way: Windows puts a child in its parent's
job, whatever console, process group or window station it asks for, and this job does not allow break-away. What
Hearth sets on it:

* **kill on close** (``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``): the end of the run (``terminate``) ends every process
  in the job, and so does Hearth's own end, even a crash, since the kernel closes Hearth's handle then;
* **memory per process** (the address-space limit's counterpart: committed memory), **CPU time per process** and
  **the number of processes** at once (``ResourceLimits``), and no Windows Error Reporting dialog when it crashes
  (``DIE_ON_UNHANDLED_EXCEPTION``: a dialog would keep it alive until someone clicks);
* **UI restrictions** on the processes in the job: no clipboard, no other desktop, no changing system or display
  settings, no logging off, no handles to windows outside the job.

The program is created suspended, put in the job, and only then resumed, so that not one instruction of it runs
outside the job.

What this is for: a runaway or careless program (a fork loop, a leak, a server left running, a crash dialog) is
limited and ended with everything it started. What it is *not*: a boundary against a hostile program. The job hides
no file and blocks no network; the program runs as the user, so it can read and write what the user can, and it can
have processes started outside the job on its behalf (WMI's ``Win32_Process.Create``, the Task Scheduler, an
out-of-process COM server), which neither the limits nor the UI restrictions nor the final kill reach; it could even
open Hearth's own process (same user) and take a handle to the job. That is why Hearth asks before running generated
code on Windows (the limits-only mode, ``require_containment``).

Nothing here can run on Linux: ``tests/security/test_job_object.py`` checks the structures against the Windows SDK's
sizes and drives the calls against a fake kernel32 (the order: created suspended, assigned, resumed, terminated).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

CREATE_SUSPENDED = 0x00000004
CREATE_NEW_PROCESS_GROUP = 0x00000200

JOB_OBJECT_LIMIT_PROCESS_TIME = 0x00000002
JOB_OBJECT_LIMIT_ACTIVE_PROCESS = 0x00000008
JOB_OBJECT_LIMIT_PROCESS_MEMORY = 0x00000100
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000

JOB_OBJECT_UILIMIT_HANDLES = 0x0001
JOB_OBJECT_UILIMIT_READCLIPBOARD = 0x0002
JOB_OBJECT_UILIMIT_WRITECLIPBOARD = 0x0004
JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS = 0x0008
JOB_OBJECT_UILIMIT_DISPLAYSETTINGS = 0x0010
JOB_OBJECT_UILIMIT_GLOBALATOMS = 0x0020
JOB_OBJECT_UILIMIT_DESKTOP = 0x0040
JOB_OBJECT_UILIMIT_EXITWINDOWS = 0x0080
UI_RESTRICTIONS = (
    JOB_OBJECT_UILIMIT_HANDLES | JOB_OBJECT_UILIMIT_READCLIPBOARD | JOB_OBJECT_UILIMIT_WRITECLIPBOARD
    | JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS | JOB_OBJECT_UILIMIT_DISPLAYSETTINGS | JOB_OBJECT_UILIMIT_GLOBALATOMS
    | JOB_OBJECT_UILIMIT_DESKTOP | JOB_OBJECT_UILIMIT_EXITWINDOWS
)  # fmt: skip

JOB_OBJECT_BASIC_UI_RESTRICTIONS = 4  # JOBOBJECTINFOCLASS
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9
PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100
PROCESS_SUSPEND_RESUME = 0x0800
_HUNDRED_NANOSECONDS_PER_SECOND = 10_000_000
_TERMINATED_EXIT_CODE = 1

# The SDK's structures (winnt.h), field for field: ctypes gives them the C layout of the platform it runs on.
class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class IO_COUNTERS(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount",
    )]  # fmt: skip


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
        ("IoInfo", IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class JOBOBJECT_BASIC_UI_RESTRICTIONS(ctypes.Structure):
    _fields_ = [("UIRestrictionsClass", ctypes.c_uint32)]


class JobObjectError(OSError):
    """A Job Object call failed: the program is not started (or is ended) rather than run outside the job."""

    def __init__(self, call: str, code: int) -> None:
        self.call, self.code = call, code
        super().__init__(code, f"{call} failed (Windows error {code})")


@dataclass(frozen=True)
class JobLimits:
    memory_bytes: int | None  # committed memory per process
    cpu_seconds: int | None  # user-mode CPU time per process
    processes: int | None  # processes in the job at once, the program included


def extended_limits(limits: JobLimits) -> JOBOBJECT_EXTENDED_LIMIT_INFORMATION:
    info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
    basic = info.BasicLimitInformation
    basic.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
    if limits.memory_bytes is not None:
        basic.LimitFlags |= JOB_OBJECT_LIMIT_PROCESS_MEMORY
        info.ProcessMemoryLimit = limits.memory_bytes
    if limits.cpu_seconds is not None:
        basic.LimitFlags |= JOB_OBJECT_LIMIT_PROCESS_TIME
        basic.PerProcessUserTimeLimit = limits.cpu_seconds * _HUNDRED_NANOSECONDS_PER_SECOND
    if limits.processes is not None:
        basic.LimitFlags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS
        basic.ActiveProcessLimit = limits.processes
    return info


class JobObject:
    """One run's job. ``kernel32`` and ``ntdll`` are the system's (``ctypes.WinDLL``) unless a test passes others
    (then the error codes come from the given kernel32's ``GetLastError``)."""

    def __init__(self, limits: JobLimits, *, kernel32: Any = None, ntdll: Any = None) -> None:
        if kernel32 is None:
            self._kernel32 = _windll("kernel32")
            # The error code ctypes saved right after each call (use_last_error): a GetLastError called afterwards
            # through ctypes could read a code that the interpreter's own calls have overwritten meanwhile.
            self._last_error_code: Any = ctypes.get_last_error  # type: ignore[attr-defined]  # Windows only
        else:
            self._kernel32, self._last_error_code = kernel32, kernel32.GetLastError
        self._ntdll = ntdll if ntdll is not None else _windll("ntdll")
        self._handle = self._kernel32.CreateJobObjectW(None, None)
        if not self._handle:
            raise JobObjectError("CreateJobObjectW", self._last_error())
        try:
            info = extended_limits(limits)
            self._set("JobObjectExtendedLimitInformation", JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, info)
            ui = JOBOBJECT_BASIC_UI_RESTRICTIONS(UI_RESTRICTIONS)
            self._set("JobObjectBasicUIRestrictions", JOB_OBJECT_BASIC_UI_RESTRICTIONS, ui)
        except BaseException:  # a KeyboardInterrupt too: no job handle is left open
            self.close()
            raise

    def adopt_and_resume(self, pid: int) -> None:
        """Put the process ``pid`` (created with ``CREATE_SUSPENDED``) in the job, then let it run. On failure it is
        terminated still suspended: it never runs outside the job."""
        process = self._kernel32.OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME, False, pid)
        if not process:
            raise JobObjectError("OpenProcess", self._last_error())
        try:
            if not self._kernel32.AssignProcessToJobObject(self._handle, process):
                code = self._last_error()
                self._kernel32.TerminateProcess(process, _TERMINATED_EXIT_CODE)
                raise JobObjectError("AssignProcessToJobObject", code)
            status = self._ntdll.NtResumeProcess(process)
            if status != 0:
                self._kernel32.TerminateProcess(process, _TERMINATED_EXIT_CODE)
                raise JobObjectError("NtResumeProcess", status & 0xFFFFFFFF)
        finally:
            self._kernel32.CloseHandle(process)

    def terminate(self) -> None:
        """End every process of the job (the program and all it started)."""
        if self._handle and not self._kernel32.TerminateJobObject(self._handle, _TERMINATED_EXIT_CODE):
            logger.warning("TerminateJobObject failed (Windows error %d)", self._last_error())

    def close(self) -> None:
        """Terminate, then let go of the job (kill-on-close makes that a second guarantee)."""
        if self._handle:
            self.terminate()
            self._kernel32.CloseHandle(self._handle)
            self._handle = None

    def _set(self, name: str, info_class: int, info: ctypes.Structure) -> None:
        if not self._kernel32.SetInformationJobObject(self._handle, info_class, ctypes.byref(info), ctypes.sizeof(info)):
            raise JobObjectError(f"SetInformationJobObject({name})", self._last_error())

    def _last_error(self) -> int:
        return int(self._last_error_code())


def _windll(name: str) -> Any:
    windll = getattr(ctypes, "WinDLL", None)
    if windll is None:
        raise JobObjectError(f"loading {name}.dll (not Windows)", 0)
    library = windll(name, use_last_error=True)
    handle, dword = ctypes.c_void_p, ctypes.c_uint32
    signatures = {  # handles are pointer-sized: without these, ctypes would cut them to an int on 64-bit Windows
        "kernel32": {
            "CreateJobObjectW": ([ctypes.c_void_p, ctypes.c_wchar_p], handle),
            "SetInformationJobObject": ([handle, ctypes.c_int, ctypes.c_void_p, dword], ctypes.c_int),
            "OpenProcess": ([dword, ctypes.c_int, dword], handle),
            "AssignProcessToJobObject": ([handle, handle], ctypes.c_int),
            "TerminateProcess": ([handle, ctypes.c_uint], ctypes.c_int),
            "TerminateJobObject": ([handle, ctypes.c_uint], ctypes.c_int),
            "CloseHandle": ([handle], ctypes.c_int),
        },
        "ntdll": {"NtResumeProcess": ([handle], ctypes.c_long)},
    }[name]
    for function, (arguments, result) in signatures.items():
        getattr(library, function).argtypes = arguments
        getattr(library, function).restype = result
    return library
