"""The Windows Job Object, on paper: no Windows machine runs this suite. The structures are checked against the
Windows SDK's sizes, and the calls are driven against a fake kernel32/ntdll (named as fakes: they record the calls
and answer as Windows documents) to check the order that keeps a program from ever running outside its job, and
that every failure ends it rather than running it anyway."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from src.errors import ProgramStartError
from src.sandbox import job_object
from src.sandbox.job_object import JobLimits, JobObject, JobObjectError
from src.workflows.company import sandbox

GiB = 1024**3


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the SDK sizes below are those of 64-bit Windows")
def test_the_structures_have_the_sizes_of_the_windows_sdk() -> None:
    assert ctypes.sizeof(job_object.JOBOBJECT_BASIC_LIMIT_INFORMATION) == 64
    assert ctypes.sizeof(job_object.IO_COUNTERS) == 48
    assert ctypes.sizeof(job_object.JOBOBJECT_EXTENDED_LIMIT_INFORMATION) == 144
    assert job_object.JOBOBJECT_EXTENDED_LIMIT_INFORMATION.ProcessMemoryLimit.offset == 112


class FakeKernel32:
    """Records every call; ``fail`` names the calls that return FALSE (with ``GetLastError`` 5, access denied)."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail = fail
        self.settings: dict[int, ctypes.Structure] = {}

    def _call(self, name: str, *arguments: Any, result: Any = 1) -> Any:
        self.calls.append((name, arguments))
        return 0 if name in self.fail else result

    def CreateJobObjectW(self, attributes: Any, name: Any) -> int:
        return self._call("CreateJobObjectW", attributes, name, result=0x100)

    def SetInformationJobObject(self, job: int, info_class: int, info: Any, size: int) -> int:
        structure = info._obj  # what ctypes.byref points to
        assert size == ctypes.sizeof(structure)
        self.settings[info_class] = type(structure).from_buffer_copy(structure)
        return self._call("SetInformationJobObject", job, info_class)

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:
        return self._call("OpenProcess", access, inherit, pid, result=0x200)

    def AssignProcessToJobObject(self, job: int, process: int) -> int:
        return self._call("AssignProcessToJobObject", job, process)

    def TerminateProcess(self, process: int, code: int) -> int:
        return self._call("TerminateProcess", process, code)

    def TerminateJobObject(self, job: int, code: int) -> int:
        return self._call("TerminateJobObject", job, code)

    def CloseHandle(self, handle: int) -> int:
        return self._call("CloseHandle", handle)

    def GetLastError(self) -> int:
        return 5


class FakeNtdll:
    def __init__(self, kernel32: FakeKernel32, status: int = 0) -> None:
        self.kernel32, self.status = kernel32, status

    def NtResumeProcess(self, process: int) -> int:
        self.kernel32.calls.append(("NtResumeProcess", (process,)))
        return self.status


def names(kernel32: FakeKernel32) -> list[str]:
    return [name for name, _ in kernel32.calls]


LIMITS = JobLimits(memory_bytes=1 * GiB, cpu_seconds=15, processes=65)


def test_the_job_kills_on_close_and_limits_memory_cpu_processes_and_the_desktop() -> None:
    kernel32 = FakeKernel32()
    JobObject(LIMITS, kernel32=kernel32, ntdll=FakeNtdll(kernel32))
    limits = kernel32.settings[job_object.JOB_OBJECT_EXTENDED_LIMIT_INFORMATION]
    basic = limits.BasicLimitInformation
    for flag in ("KILL_ON_JOB_CLOSE", "DIE_ON_UNHANDLED_EXCEPTION", "PROCESS_MEMORY", "PROCESS_TIME", "ACTIVE_PROCESS"):
        assert basic.LimitFlags & getattr(job_object, f"JOB_OBJECT_LIMIT_{flag}"), flag
    assert not basic.LimitFlags & 0x800  # JOB_OBJECT_LIMIT_BREAKAWAY_OK: nothing may leave the job
    assert not basic.LimitFlags & 0x1000  # JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK
    assert limits.ProcessMemoryLimit == 1 * GiB
    assert basic.PerProcessUserTimeLimit == 15 * 10_000_000  # in 100 ns
    assert basic.ActiveProcessLimit == 65
    ui = kernel32.settings[job_object.JOB_OBJECT_BASIC_UI_RESTRICTIONS].UIRestrictionsClass
    assert ui & job_object.JOB_OBJECT_UILIMIT_READCLIPBOARD and ui & job_object.JOB_OBJECT_UILIMIT_DESKTOP


def test_the_program_is_in_its_job_before_it_runs_and_the_job_ends_it() -> None:
    kernel32 = FakeKernel32()
    job = JobObject(LIMITS, kernel32=kernel32, ntdll=FakeNtdll(kernel32))
    job.adopt_and_resume(4242)
    sequence = names(kernel32)
    assert sequence.index("AssignProcessToJobObject") < sequence.index("NtResumeProcess")
    assert ("OpenProcess", (job_object.PROCESS_SET_QUOTA | job_object.PROCESS_TERMINATE
                            | job_object.PROCESS_SUSPEND_RESUME, False, 4242)) in kernel32.calls  # fmt: skip
    assert sequence[-1] == "CloseHandle"  # the process handle, not the job
    job.close()
    assert names(kernel32)[-2:] == ["TerminateJobObject", "CloseHandle"]
    job.close()  # twice is harmless
    assert names(kernel32).count("TerminateJobObject") == 1


@pytest.mark.parametrize("failing", ["AssignProcessToJobObject", "NtResumeProcess"])
def test_a_program_that_cannot_be_put_in_its_job_is_ended_still_suspended(failing: str) -> None:
    kernel32 = FakeKernel32(fail=(failing,) if failing != "NtResumeProcess" else ())
    ntdll = FakeNtdll(kernel32, status=-1073741823 if failing == "NtResumeProcess" else 0)  # STATUS_UNSUCCESSFUL
    job = JobObject(LIMITS, kernel32=kernel32, ntdll=ntdll)
    with pytest.raises(JobObjectError) as raised:
        job.adopt_and_resume(4242)
    assert raised.value.call == failing
    sequence = names(kernel32)
    assert "TerminateProcess" in sequence
    if failing == "AssignProcessToJobObject":
        assert "NtResumeProcess" not in sequence  # it never ran a single instruction
        assert raised.value.code == 5


def test_a_job_that_cannot_be_limited_is_not_used() -> None:
    kernel32 = FakeKernel32(fail=("SetInformationJobObject",))
    with pytest.raises(JobObjectError, match="SetInformationJobObject"):
        JobObject(LIMITS, kernel32=kernel32, ntdll=FakeNtdll(kernel32))
    assert names(kernel32)[-2:] == ["TerminateJobObject", "CloseHandle"]


def test_without_windows_there_is_no_job_object() -> None:
    if sys.platform == "win32":
        pytest.skip("this is Windows")
    with pytest.raises(JobObjectError, match="not Windows"):
        JobObject(LIMITS)


def test_run_program_ends_a_program_whose_job_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's own side (orchestration, here on Linux): a job that cannot take the program ends the program and
    says so; the program is never left running."""

    class FailingJob:
        def __init__(self, limits: JobLimits) -> None:
            self.limits = limits

        def adopt_and_resume(self, pid: int) -> None:
            raise JobObjectError("AssignProcessToJobObject", 5)

        def close(self) -> None:
            pass

    monkeypatch.setattr(job_object, "JobObject", FailingJob)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ProgramStartError, match="could not put it in its Job Object"):
        sandbox._windows_job(process, sandbox.ResourceLimits(), timeout_s=10)
    assert process.poll() is not None  # ended and reaped


def test_a_program_interrupted_before_its_job_took_it_is_ended_too(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []

    class InterruptedJob:
        def __init__(self, limits: JobLimits) -> None:
            pass

        def adopt_and_resume(self, pid: int) -> None:
            raise KeyboardInterrupt  # Ctrl+C at the worst moment

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(job_object, "JobObject", InterruptedJob)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(KeyboardInterrupt):
        sandbox._windows_job(process, sandbox.ResourceLimits(), timeout_s=10)
    assert process.poll() is not None and closed == [True]


def test_on_windows_the_program_starts_suspended_in_a_group_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_IS_WINDOWS", True)
    suspended = job_object.CREATE_NEW_PROCESS_GROUP | job_object.CREATE_SUSPENDED
    assert sandbox._group_options(suspended=True) == {"creationflags": suspended}
    assert sandbox._group_options() == {"creationflags": job_object.CREATE_NEW_PROCESS_GROUP}  # git, the checks


class FakeWinDLL:
    """Stands for ctypes.WinDLL: a library whose functions are plain objects that keep their argtypes/restype."""

    loaded: ClassVar[list[tuple[str, bool]]] = []

    def __init__(self, name: str, use_last_error: bool = False) -> None:
        FakeWinDLL.loaded.append((name, use_last_error))
        self.functions: dict[str, Any] = {}

    def __getattr__(self, function: str) -> Any:
        if function.startswith("__"):
            raise AttributeError(function)
        return self.functions.setdefault(function, type("Function", (), {})())


def test_the_system_libraries_get_pointer_sized_handles_and_keep_their_error_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeWinDLL.loaded = []
    monkeypatch.setattr(ctypes, "WinDLL", FakeWinDLL, raising=False)
    kernel32 = job_object._windll("kernel32")
    ntdll = job_object._windll("ntdll")
    assert FakeWinDLL.loaded == [("kernel32", True), ("ntdll", True)]  # errors read with ctypes.get_last_error
    for function in ("CreateJobObjectW", "OpenProcess"):  # handles come back whole on 64-bit Windows
        assert kernel32.functions[function].restype is ctypes.c_void_p, function
    for function in ("AssignProcessToJobObject", "TerminateJobObject", "CloseHandle", "SetInformationJobObject"):
        assert kernel32.functions[function].argtypes[0] is ctypes.c_void_p, function
    assert ntdll.functions["NtResumeProcess"].argtypes == [ctypes.c_void_p]
    assert ntdll.functions["NtResumeProcess"].restype is ctypes.c_long  # an NTSTATUS: negative means failure


def test_a_program_that_cannot_be_killed_still_has_its_job_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []

    class FailingJob:
        def __init__(self, limits: JobLimits) -> None:
            pass

        def adopt_and_resume(self, pid: int) -> None:
            raise JobObjectError("NtResumeProcess", 0xC0000001)

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(job_object, "JobObject", FailingJob)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    real_kill = process.kill

    def refusing_kill() -> None:
        raise PermissionError("access denied")

    monkeypatch.setattr(process, "kill", refusing_kill)
    monkeypatch.setattr(sandbox, "_KILL_GRACE_S", 0.05)  # how long it waits for a process that will not end
    try:
        with pytest.raises(ProgramStartError, match="NtResumeProcess"):  # the cause, not the kill's error
            sandbox._windows_job(process, sandbox.ResourceLimits(), timeout_s=0.1)
        assert closed == [True]  # the job's kill-on-close, the second guarantee, still ran
    finally:
        real_kill()
        process.wait()


def test_error_codes_are_those_ctypes_saved_after_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    class RefusingWinDLL(FakeWinDLL):
        def __getattr__(self, function: str) -> Any:
            found = super().__getattr__(function)
            if function == "CreateJobObjectW":
                type(found).__call__ = lambda self, *arguments: None  # NULL: failed
            return found

    monkeypatch.setattr(ctypes, "WinDLL", RefusingWinDLL, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: 1455, raising=False)  # ERROR_COMMITMENT_LIMIT
    with pytest.raises(JobObjectError) as raised:
        JobObject(LIMITS)
    assert (raised.value.call, raised.value.code) == ("CreateJobObjectW", 1455)
