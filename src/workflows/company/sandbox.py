"""Run a generated program to test it, without letting it take the app (or the machine) down with it.

What a run gets, and why:

- **Its own process, never the app's**: ``python <entry>`` in a subprocess with ``cwd`` = the project folder.
- **A sandbox**, the strongest this machine has (``choose_sandbox``; HEARTH_SANDBOX names one): on Linux bubblewrap
  (``src/sandbox/bubblewrap.py``), else Landlock (``src/sandbox/landlock.py``); on macOS Seatbelt
  (``src/sandbox/seatbelt.py``); else limits only, which runs nothing without the user's consent
  (``require_containment``). The README says what each contains and what not.
- **Its own process group** (``start_new_session=True``), and every descendant dies at the end of the run, also when
  the program exits on its own: in bubblewrap with its PID namespace; elsewhere on Linux the launcher stays as the
  program's parent and *subreaper* (orphans are re-parented to it, whatever session or environment they chose)
  and kills all of them when the program ends or when Hearth stops the run (SIGTERM to the launcher first).
  The process group is SIGKILLed afterwards, and processes that still carry the run's marker variable
  (``HEARTH_RUN_ID``) are hunted in ``/proc`` as a last resort. The direct child is always waited for.
- **A minimal environment**: PATH, LANG, a throwaway HOME/TMPDIR and Python's I/O settings. Nothing else from the
  app's environment is passed on, so HF_TOKEN, HEARTH_API_KEY, OPENAI_API_KEY and the like never reach it.
  HOME is a fresh empty folder deleted after the run, not the project folder and not the user's home.
  PYTHONUSERBASE still points at the user's own site-packages (read-only in the sandboxes), so that modules the
  user installed with ``pip install --user`` (pygame, ...) keep working.
- **Bounded output**: reader threads keep the first ``max_output_bytes`` of stdout and of stderr (the last few KiB
  replace the end of that budget when there is more, so a traceback printed after megabytes of output is still
  seen) and read and discard the rest; memory stays bounded whatever the program prints.
- **Resource limits on POSIX**, set by a tiny launcher (``python -I``: a project ``resource.py`` cannot stand in for
  the standard library's) that calls ``setrlimit`` and then becomes the program (rather than ``preexec_fn``, which
  Python documents as unsafe in a process with threads, as the app is): address space (1 GiB: numpy and torch
  import fine under it), size of any file it writes (50 MiB), CPU seconds (timeout + 5, a backstop if the
  wall-clock kill failed), no core dumps, and the number of processes (``_process_limit``: RLIMIT_NPROC counts the
  user's tasks, not the run's, so Hearth counts them; nothing at all for root, whom the kernel exempts).
- **Bounded disk** (``_DiskWatch``): what a run adds to its project and temporary folders, in bytes and files.

Everything else that touches a project goes through here too, and executes none of its files: ``run_analyzer``
(ruff, bandit: isolated Python, started outside the folder; inside bubblewrap too, the project read-only) and
``run_git`` (no configuration the program can write is ever read; inside bubblewrap too).

Windows: no rlimits and no subreaper; a Job Object instead (``src/sandbox/job_object.py``): the program is started
suspended in a new process group, put in a job of its own (memory, CPU time and process limits, UI restrictions,
kill on close) and resumed; the end of the run terminates the job, so the processes it started the usual way end
with it (``taskkill /F /T`` stays as a second try). A process it has started for it outside the job (WMI, the Task
Scheduler) is not limited or ended: the job stops runaways, not a hostile program. The timeout, the output bound, the disk watch and the minimal
environment apply as everywhere. macOS: the POSIX limits (the kernel ignores RLIMIT_AS there) and the process group;
no subreaper exists, so a descendant that leaves the group and outlives its parent is not found (it keeps the
Seatbelt profile).

Missing third-party modules are reported (``RunResult.missing_modules``), never installed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import platform
import re
import select
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from src.errors import ProgramStartError, ProjectFileNotFoundError, SandboxUnavailableError, UnsandboxedRunRefusedError
from src.sandbox import job_object, landlock, seatbelt
from src.sandbox.bubblewrap import HOME_INSIDE, Bubblewrap, find_bubblewrap, wrap
from src.settings import (
    PROJECT_ROOT,
    SANDBOX_AUTO,
    SANDBOX_BUBBLEWRAP,
    SANDBOX_LANDLOCK,
    SANDBOX_RLIMITS,
    SANDBOX_SEATBELT,
    get_settings,
    parse_sandbox,
)
from src.workflows.company.code_extraction import safe_relative_path

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_OUTPUT_BYTES = 64 * KiB  # plenty for a model to read back; more would only fill its context
_TAIL_BYTES = 4 * KiB  # of each stream, kept past the budget: tracebacks come last
_READ_CHUNK = 64 * KiB
_KILL_GRACE_S = 3.0
_LAST_SIGNAL = 64  # SIGRTMAX on Linux  # after SIGKILL: how long to wait for the group to be gone and the pipes to close

RUN_ID_VARIABLE = "HEARTH_RUN_ID"
_IS_WINDOWS = os.name == "nt"
_IS_LINUX = sys.platform.startswith("linux")
_IS_MACOS = sys.platform == "darwin"

# Never forwarded even when a caller passes them in ``env``: Hearth's own secrets and anything named like a secret.
_SECRET_NAME_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY)", re.IGNORECASE)
_MISSING_MODULE_RE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '([^']+)'")
TRACEBACK_MARKER = "Traceback (most recent call last)"


@dataclass(frozen=True)
class ResourceLimits:
    """POSIX limits of a run (None: not set). See the module docstring for what each one does and doesn't do."""

    address_space_bytes: int | None = 1 * GiB
    file_size_bytes: int | None = 50 * MiB
    cpu_seconds: int | None = None  # None: the timeout rounded up, plus 5 (cpu_seconds_for)
    max_new_processes: int | None = 64  # Linux only, on top of the user's current tasks; ignored for root
    core_dumps: bool = False
    # What one run may add, in total, to its project folder and its own temporary folder (watched while it runs;
    # it is stopped past either). Per file, file_size_bytes applies as well.
    disk_bytes: int | None = 256 * MiB
    new_files: int | None = 10_000
    open_files: int | None = 512  # with file_size_bytes, bounds what files deleted while open can hold


    def cpu_seconds_for(self, timeout_s: float) -> int:
        """The CPU time a run may use: a backstop behind the wall-clock timeout, should its kill fail."""
        return int(self.cpu_seconds if self.cpu_seconds is not None else math.ceil(timeout_s) + 5)


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # negative: killed by that signal (POSIX); None: it could not be waited for
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    truncated: bool  # some output was dropped (see max_output_bytes)
    traceback: bool  # stderr shows a Python traceback
    missing_modules: list[str] = field(default_factory=list)  # from "No module named 'x'", in order, no repeats
    pid: int | None = None  # also the process group id on POSIX
    sandbox: str = SANDBOX_RLIMITS  # the mode that contained it: "bubblewrap", "landlock" or "rlimits" (limits only)
    disk_limit: str | None = None  # what it wrote past, when it was stopped for writing too much

    @property
    def crashed(self) -> bool:
        """It failed by itself. A program stopped at the timeout without a traceback did not crash: a game or a GUI
        waits for the user forever, and "ran for 10 s without crashing" is the best test there is for it."""
        if self.timed_out:
            return self.traceback
        return self.exit_code != 0 or self.traceback

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.traceback and not self.timed_out

    @property
    def ran_without_crashing_s(self) -> float | None:
        """Seconds a program that was still running at the timeout ran without crashing; None otherwise."""
        return round(self.duration_s, 1) if self.timed_out and not self.crashed else None

    def summary(self) -> str:
        if self.disk_limit is not None:
            text = f"was stopped after {self.duration_s:.1f} s: it wrote {self.disk_limit}"
        elif self.timed_out:
            if self.crashed:
                text = f"crashed (traceback) and was stopped at the {self.duration_s:.1f} s timeout"
            else:
                text = f"ran without crashing for {self.duration_s:.1f} s (stopped at the timeout)"
        elif self.ok:
            text = f"exited normally in {self.duration_s:.1f} s"
        elif self.exit_code is not None and self.exit_code < 0:
            text = f"was killed by {_signal_name(-self.exit_code)} after {self.duration_s:.1f} s"
        else:
            text = f"failed with exit code {self.exit_code} after {self.duration_s:.1f} s"
            if self.traceback:
                text += " (traceback)"
        if self.missing_modules:
            text += f"; missing modules: {', '.join(self.missing_modules)}"
        if self.truncated:
            text += "; output truncated"
        return "The program " + text + "."


def run_program(
    project: Path,
    entry: str = "main.py",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    stdin: str | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    env: dict[str, str] | None = None,
    python: str | None = None,
    limits: ResourceLimits | None = None,
    sandbox: str | None = None,
) -> RunResult:
    """Run ``python entry`` in ``project`` and return what happened; returns once every process of the run is dead.

    ``env`` adds variables to the minimal environment (secret-looking names are dropped with a warning).
    ``python`` defaults to the app's own interpreter (``sys.executable``), so the packages of its environment are
    available. Raises :class:`ProjectFileNotFoundError` when ``entry`` is not a file of the project (or its name is
    unsafe: :class:`UnsafePathError`), and :class:`ProgramStartError` when the interpreter can't be started.
    ``sandbox`` overrides HEARTH_SANDBOX (``choose_sandbox``); a mode that cannot run is a
    :class:`SandboxUnavailableError` and nothing runs.
    """
    try:
        project = Path(project).resolve(strict=True)
    except OSError as exc:
        raise ProjectFileNotFoundError(str(entry), str(project)) from exc
    relative_entry = safe_relative_path(entry)
    entry_path = (project / relative_entry).resolve()
    if not entry_path.is_relative_to(project) or not entry_path.is_file():
        raise ProjectFileNotFoundError(str(relative_entry), str(project))
    interpreter = python or sys.executable
    if shutil.which(interpreter) is None:  # inside a sandbox, a missing interpreter would look like a crash
        raise ProgramStartError(interpreter, "no such executable")
    limits = limits or ResourceLimits()
    mode, bwrap = choose_sandbox(sandbox)
    # Outside a PID namespace the launcher stays as the program's parent and subreaper, and ends every descendant
    # when the program ends or the run is stopped, whatever session or environment they chose.
    supervised = _IS_LINUX and bwrap is None
    run_id = uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="hearth-run-home-"))
    child_env = _child_environment(home, run_id, env)
    command = [interpreter, str(relative_entry)]
    if not _IS_WINDOWS:
        # -I: the launcher runs in the project folder, whose resource.py (or os.py) must not stand in for the
        # standard library's and so skip every limit. The program itself keeps its folder on sys.path: its files
        # import each other.
        options = _limit_arguments(limits, timeout_s, bwrap)
        if supervised:
            options.append("SUPERVISE=1")
        if mode == SANDBOX_LANDLOCK:
            options += landlock.launcher_arguments(project, home)
            _go_headless(child_env)
        elif bwrap is not None and platform.machine() in landlock.SECCOMP_ARCHITECTURES:
            options.append("SECCOMP=bubblewrap")  # no io_uring or memfd: see the launcher
        command = [interpreter, "-I", "-c", _LAUNCHER, *options, "--", *command]
    command = _contained(mode, bwrap, command, child_env, project=project, private_tmp=home)

    stdout_capture = _StreamCapture(max_output_bytes)
    stderr_capture = _StreamCapture(max_output_bytes)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, home, ignore_errors=True)
        if bwrap is None:
            cleanup.enter_context(_app_not_dumpable())
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                command,
                cwd=project,
                env=child_env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
                **_group_options(suspended=_IS_WINDOWS),
            )
        except OSError as exc:
            raise ProgramStartError(f"{interpreter} {relative_entry}", exc.strerror or str(exc)) from exc
        job = _windows_job(process, limits, timeout_s) if _IS_WINDOWS else None
        if job is not None:
            cleanup.callback(job.close)
        logger.info("Running %s in %s (pid %d, timeout %g s)", relative_entry, project, process.pid, timeout_s)
        threads = [
            _start_thread(stdout_capture.consume, process.stdout, "stdout"),
            _start_thread(stderr_capture.consume, process.stderr, "stderr"),
        ]
        if stdin is not None:
            threads.append(_start_thread(_feed, process.stdin, "stdin", stdin.encode("utf-8")))

        timed_out = False
        watch = _DiskWatch(
            [project, home], limits, stop=lambda: _kill_tree(process, run_id, supervised=supervised, job=job),
            root_pid=process.pid,
        )
        try:
            timed_out = not _wait_for_exit(process, timeout_s)
        finally:
            duration_s = time.monotonic() - started  # how long it ran, not how long cleaning up took
            watch.close()
            # Also when it exited by itself: whatever it started in the background must not outlive the run.
            _kill_tree(process, run_id, supervised=supervised, job=job)
        exit_code = _reap(process)
        if bwrap is not None and exit_code is not None and 128 < exit_code <= 128 + _LAST_SIGNAL:
            # bwrap reports a program killed by signal N as 128 + N; a program's own exit(130) looks the same (rare).
            exit_code = 128 - exit_code

        deadline = time.monotonic() + _KILL_GRACE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            # Only a process that escaped every kill can still hold the pipes; its output is not waited for.
            logger.warning("Run %s: output pipes still open after the kill; keeping what was read", run_id)

    stdout_text = stdout_capture.text()
    stderr_text = stderr_capture.text()
    result = RunResult(
        exit_code=exit_code,
        stdout=stdout_text,
        stderr=stderr_text,
        timed_out=timed_out,
        duration_s=duration_s,
        truncated=stdout_capture.truncated or stderr_capture.truncated,
        traceback=TRACEBACK_MARKER in stderr_text,
        missing_modules=parse_missing_modules(stderr_text),
        pid=process.pid,
        sandbox=mode,
        disk_limit=watch.exceeded,
    )
    logger.info("Run of %s in %s: %s", relative_entry, project, result.summary())
    return result


@dataclass(frozen=True)
class ToolResult:
    exit_code: int | None  # None: it could not be started, or was stopped at its timeout
    stdout: str
    stderr: str


def run_analyzer(
    module: str, arguments: list[str], project: Path, *, timeout_s: float, sandbox: str | None = None
) -> ToolResult:
    """Run a static analyzer of ours (``python -I -m ruff``, ``bandit``) on ``project``: it reads the project's files
    and executes none of them. ``-I`` and a working directory outside the project keep every project file off
    ``sys.path`` (a generated ``ruff.py`` or ``calendar.py`` would otherwise be imported by the analyzer); the
    environment is the same minimal one a generated program gets, so the app's keys are not in it either; and in
    the bubblewrap mode it runs in the same sandbox as the program, the project read-only, in case an analyzer
    ever executes something after all. ``arguments`` name the project as ``{project}``."""
    project = Path(project).resolve()
    mode, bwrap = choose_sandbox(sandbox)
    with tempfile.TemporaryDirectory(prefix="hearth-analyzer-") as place:
        command = [sys.executable, "-I", "-m", module, *(a.replace("{project}", str(project)) for a in arguments)]
        environment = _child_environment(Path(place), uuid.uuid4().hex, None)
        command = _contained(mode, bwrap, command, environment, project=project, private_tmp=Path(place),
                             read_only=True, workdir="/tmp")  # fmt: skip
        try:
            done = subprocess.run(  # fixed argv, no shell
                command,
                cwd=place,
                env=environment,
                stdin=subprocess.DEVNULL,  # not Hearth's terminal
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return ToolResult(None, "", str(exc))
    return ToolResult(done.returncode, done.stdout, done.stderr)


def run_git(
    arguments: list[str], *, git_dir: Path, work_tree: Path, timeout_s: float, sandbox: str | None = None
) -> ToolResult:
    """Run git on a generated project without letting any of the project's files configure it.

    git executes what its configuration names (hooks, filter and diff drivers, fsmonitor, ...), and a generated
    program can write files. So: the repository (``git_dir``) is kept outside the project while the run lasts,
    where the program does not write; no system or global configuration is read, HOME is an empty folder (a
    ``.gitconfig`` the program leaves in the project is never read), hooks and fsmonitor are off whatever the
    repository says, and the environment is minimal. A ``.gitattributes`` in the project can then only name
    drivers that nothing defines. What is left is a repository nested in the project (``sub/.git``, with its own
    configuration: git runs inside it to see its state); the caller refuses to commit such a tree
    (``nested_repositories``). In the bubblewrap mode git itself runs in the sandbox too, the work tree read-only
    and only ``git_dir`` writable, so that whatever git might still be made to run is contained like the program."""
    git_dir, work_tree = Path(git_dir).resolve(), Path(work_tree).resolve()
    mode, bwrap = choose_sandbox(sandbox)
    with tempfile.TemporaryDirectory(prefix="hearth-git-home-") as home:
        environment = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LANG": "C.UTF-8",
            "HOME": home,
            "TMPDIR": home,  # the user's own temporary folder is hidden in Seatbelt
            "XDG_CONFIG_HOME": home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_DIR": str(git_dir),
            "GIT_WORK_TREE": str(work_tree),
        }
        command = [_git_executable(), *_GIT_SAFETY, *arguments]
        command = _contained(mode, bwrap, command, environment, project=work_tree, private_tmp=Path(home),
                             read_only=True, writable=[git_dir])  # fmt: skip
        try:
            done = subprocess.run(  # fixed argv, no shell
                command, cwd=work_tree, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout_s, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return ToolResult(None, "", str(exc))
    return ToolResult(done.returncode, done.stdout, done.stderr)


def _git_executable() -> str:
    """git by its absolute path, as found outside any sandbox. On macOS ``/usr/bin/git`` is a shim that asks xcrun
    for the developer tools' git, through caches that Seatbelt hides: the real git is looked up once, here."""
    found = shutil.which("git") or "git"
    return (_xcrun_git() or found) if _IS_MACOS and found == "/usr/bin/git" else found


@functools.cache
def _xcrun_git() -> str | None:
    try:
        done = subprocess.run(["/usr/bin/xcrun", "--find", "git"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = done.stdout.strip()
    return found if done.returncode == 0 and os.path.isabs(found) and os.access(found, os.X_OK) else None


def nested_repositories(work_tree: Path, *, limit: int = 5) -> list[str]:
    """Folders of ``work_tree`` (not itself) that hold a ``.git`` of their own (folder or file), at most ``limit``."""
    found: list[str] = []
    for folder, subfolders, files in os.walk(work_tree):
        if Path(folder) != Path(work_tree) and (".git" in subfolders or ".git" in files):
            found.append(os.path.relpath(folder, work_tree))
            if len(found) >= limit:
                break
        subfolders[:] = [name for name in subfolders if name != ".git"]
    return found


_GIT_SAFETY = (
    "-c", "core.hooksPath=" + os.devnull, "-c", "core.fsmonitor=false", "-c", "core.attributesFile=" + os.devnull,
    "-c", "user.name=Hearth", "-c", "user.email=hearth@localhost", "-c", "commit.gpgsign=false",
    "-c", "protocol.allow=never",
)  # fmt: skip


_PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3
_dumpable_lock = threading.Lock()
_runs_needing_protection = 0
_dumpable_before = 1


@contextlib.contextmanager
def _app_not_dumpable() -> Iterator[None]:
    """Linux, limits-only mode: while a generated program runs, Hearth is not "dumpable", so that processes of the
    same user (the program) cannot read its memory or ``/proc/<pid>/environ`` (the keys in its environment) or
    ptrace it. Not enough against a program that runs as root (CAP_SYS_PTRACE); bubblewrap hides Hearth anyway."""
    global _runs_needing_protection
    prctl = _prctl()
    if prctl is None:
        yield
        return
    global _dumpable_before
    with _dumpable_lock:
        _runs_needing_protection += 1
        if _runs_needing_protection == 1:
            _dumpable_before = prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
            prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    try:
        yield
    finally:
        with _dumpable_lock:
            _runs_needing_protection -= 1
            if _runs_needing_protection == 0 and _dumpable_before > 0:  # not dumpable before: leave it so
                prctl(_PR_SET_DUMPABLE, _dumpable_before, 0, 0, 0)


def app_is_dumpable() -> bool | None:
    """Hearth's own PR_GET_DUMPABLE (None where there is no prctl)."""
    prctl = _prctl()
    return None if prctl is None else bool(prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def _prctl() -> Callable[..., int] | None:
    if not _IS_LINUX:
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def choose_sandbox(requested: str | None = None) -> tuple[str, Bubblewrap | None]:
    """The mode a program runs in: ``requested``, else HEARTH_SANDBOX; "auto" is the strongest this machine has
    (bubblewrap, else Landlock, else limits only). Returns the mode's name and, for bubblewrap, the ``bwrap`` to
    use. A mode named explicitly that cannot run here is a :class:`SandboxUnavailableError`."""
    mode = parse_sandbox(requested) if requested is not None else get_settings().sandbox
    if mode == SANDBOX_RLIMITS:
        return mode, None
    if mode == SANDBOX_SEATBELT or (mode == SANDBOX_AUTO and _IS_MACOS):
        seatbelt_missing = seatbelt.unavailable_reason(folders_to_hide())
        if seatbelt_missing is None:
            return SANDBOX_SEATBELT, None
        if mode == SANDBOX_SEATBELT:
            raise SandboxUnavailableError(SANDBOX_SEATBELT, seatbelt_missing)
        return SANDBOX_RLIMITS, None  # neither bubblewrap nor Landlock exists on macOS
    if mode in (SANDBOX_AUTO, SANDBOX_BUBBLEWRAP):
        probe = find_bubblewrap()
        if probe.found is not None:
            return SANDBOX_BUBBLEWRAP, probe.found
        if mode == SANDBOX_BUBBLEWRAP:
            raise SandboxUnavailableError(SANDBOX_BUBBLEWRAP, probe.reason)
    landlock_missing = landlock.unavailable_reason()
    if landlock_missing is None:
        return SANDBOX_LANDLOCK, None
    if mode == SANDBOX_LANDLOCK:
        raise SandboxUnavailableError(SANDBOX_LANDLOCK, landlock_missing)
    return SANDBOX_RLIMITS, None


def unavailable_modes() -> str:
    """Why no containing mode runs here (for the refusal and the summary)."""
    if _IS_MACOS:
        return f"Seatbelt: {seatbelt.unavailable_reason(folders_to_hide()) or 'available'}"
    if _IS_WINDOWS:
        return "Windows has no sandbox Hearth can use yet (a Job Object only ends and limits the program)"
    reasons = [f"bubblewrap: {find_bubblewrap().reason}"] if find_bubblewrap().found is None else []
    landlock_missing = landlock.unavailable_reason()
    if landlock_missing is not None:
        reasons.append(f"Landlock: {landlock_missing}")
    return "; ".join(reasons) or "no sandbox for this operating system yet"


def require_containment(allow_unsandboxed: bool = False) -> str:
    """The mode the programs of a run will use; refuses (``UnsandboxedRunRefusedError``) when the automatic choice
    fell back to limits only and the user has not agreed to that: generated code never runs uncontained silently.
    Choosing HEARTH_SANDBOX=rlimits is that agreement."""
    mode, _ = choose_sandbox()
    if get_settings().sandbox != SANDBOX_AUTO or allow_unsandboxed:
        return mode  # a mode named in HEARTH_SANDBOX, or the flag, is the user's choice
    if mode == SANDBOX_RLIMITS:
        raise UnsandboxedRunRefusedError(unavailable_modes())
    if mode == SANDBOX_LANDLOCK and landlock.landlock_abi() < landlock.SIGNAL_SCOPE_ABI:
        raise UnsandboxedRunRefusedError(
            f"{unavailable_modes()}; this kernel's Landlock (ABI {landlock.landlock_abi()}) cannot keep a program "
            "from signalling other processes",
            mode=SANDBOX_LANDLOCK,
        )
    return mode


def sandbox_description(mode: str) -> str:
    """One line for the run summary and meta.txt: what the mode enforced."""
    if mode == SANDBOX_BUBBLEWRAP:
        return (
            "bubblewrap: read-only file system except the project folder and a private /tmp; home, Hearth's data and "
            "install and the other projects hidden; no network; own PID namespace; limits"
        )
    if mode == SANDBOX_LANDLOCK:
        abi = landlock.landlock_abi()
        signals = "" if abi >= landlock.SIGNAL_SCOPE_ABI else "; it could still signal your other programs, Hearth too"
        return (
            f"Landlock (ABI {abi}): reads only system folders and Python, writes only the project folder and its own "
            f"temporary folder; no sockets, io_uring or shared memory; cannot trace other processes; every "
            f"descendant ended; limits{signals}"
        )
    if mode == SANDBOX_SEATBELT:
        return (
            "Seatbelt (macOS sandbox-exec): home, Hearth's data and install and the other projects unreadable; writes "
            "only the project folder and its own temporary folder; no network; cannot signal or inspect other "
            "processes; limits"
        )
    limits = "a Job Object: memory, CPU time and process limits, the processes in it ended" if _IS_WINDOWS else "limits"
    return f"limits only (no operating-system sandbox; {limits}): the program could read your files and use the network"


def parse_missing_modules(stderr: str) -> list[str]:
    """Module names from "No module named 'x'" errors, in order of appearance, without repeats."""
    return list(dict.fromkeys(_MISSING_MODULE_RE.findall(stderr)))


# --- environment -----------------------------------------------------------------------------------------------


def folders_to_hide() -> list[Path]:
    """What a sandboxed run must not see besides the user's home folders: Hearth's data (chats, keys, the other
    runs' repositories), its install (``.env``), the WareHouse (other projects: the one that runs is put back) and
    the evolution runs."""
    settings = get_settings()
    return [settings.data_dir, settings.db_path.parent, settings.evolution_dir, settings.warehouse_dir, PROJECT_ROOT]


def _contained(
    mode: str,
    bwrap: Bubblewrap | None,
    command: list[str],
    environment: dict[str, str],
    *,
    project: Path,
    private_tmp: Path,
    read_only: bool = False,
    writable: list[Path] | None = None,
    workdir: str | None = None,
) -> list[str]:
    """``command`` inside the wrapper of ``mode`` (bubblewrap, Seatbelt; the other modes wrap nothing: Landlock is
    applied by the launcher), and ``environment`` made to fit it (changed in place): no display, and in bubblewrap
    HOME and TMPDIR in its private /tmp. A window would need the X or Wayland socket (on macOS, the window server's
    Mach service), which lets any client read the screen and the keyboard; pygame, matplotlib and Qt are pointed at
    their headless drivers instead, so that a generated game still runs (and can be judged by "ran without
    crashing"). ``private_tmp`` is the run's own folder (HOME outside bubblewrap); ``workdir`` is where bubblewrap
    starts it."""
    if bwrap is not None:
        _go_headless(environment)
        environment.update(HOME=HOME_INSIDE, TMPDIR="/tmp")
        if "XDG_CONFIG_HOME" in environment:
            environment["XDG_CONFIG_HOME"] = HOME_INSIDE
        return wrap(bwrap, command, project=project, hidden=folders_to_hide(), read_only_project=read_only,
                    writable=writable or [], workdir=workdir)  # fmt: skip
    if mode == SANDBOX_SEATBELT:
        _go_headless(environment)
        return seatbelt.wrap(command, project=project, private_tmp=private_tmp, hidden=folders_to_hide(),
                             read_only_project=read_only, writable=writable or [])  # fmt: skip
    return command


def _go_headless(environment: dict[str, str]) -> None:
    for name in _DISPLAY_VARIABLES:
        environment.pop(name, None)
    environment.update(_HEADLESS)


_DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "XAUTHORITY")
_HEADLESS = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "MPLBACKEND": "Agg", "QT_QPA_PLATFORM": "offscreen"}


def _child_environment(home: Path, run_id: str, extra: dict[str, str] | None) -> dict[str, str]:
    environment = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUTF8": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in the project's file list
        "PYTHONUNBUFFERED": "1",  # what it printed before a kill is what it printed, not what it buffered
        "PYTHONUSERBASE": site.getuserbase(),
        RUN_ID_VARIABLE: run_id,
    }
    if _IS_WINDOWS:
        # Python can't even start on Windows without SYSTEMROOT; the rest is where Windows programs look for things.
        for name in ("SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "SYSTEMDRIVE", "NUMBER_OF_PROCESSORS"):
            if name in os.environ:
                environment[name] = os.environ[name]
        environment.update({"USERPROFILE": str(home), "TEMP": str(home), "TMP": str(home)})
    elif "DISPLAY" in os.environ or "WAYLAND_DISPLAY" in os.environ:
        # So that a generated GUI (tkinter, pygame) can open its window and be judged "ran without crashing".
        for name in _DISPLAY_VARIABLES:
            if name in os.environ:
                environment[name] = os.environ[name]
    for name, value in (extra or {}).items():
        if _SECRET_NAME_RE.search(name):
            logger.warning("Not passing %s to a generated program: it looks like a secret", name)
            continue
        environment[name] = value
    return environment


# --- limits (POSIX) ----------------------------------------------------------------------------------------------

# Runs in the child before the program: set the limits, then become the program (same pid, same process group).
# Kept free of imports beyond the standard library, since it runs under whichever interpreter was asked for.
_LAUNCHER = r"""
import os, resource, signal, sys
try:  # when memory runs out, the kernel's OOM killer should pick the runaway program, not Hearth
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
except OSError:
    pass
protected = [os.getpid(), os.getppid()]  # the supervisor (this process, when it supervises) and Hearth
args = sys.argv[1:]
split = args.index("--")
program = args[split + 1:]
options = {"READ": [], "WRITE": [], "DEVICE": []}
for item in args[:split]:
    name, value = item.split("=", 1)
    if name in options:
        options[name].append(value)
        continue
    if name in ("LANDLOCK_ABI", "SUPERVISE"):
        options[name] = int(value)
        continue
    if name == "SECCOMP":
        options[name] = value
        continue
    value = int(value)
    limit = getattr(resource, "RLIMIT_" + name, None)
    if limit is None:
        continue
    old_soft, old_hard = resource.getrlimit(limit)
    # CPU: the soft limit sends SIGXCPU, the hard one a second later SIGKILL. Others: both, so it can't raise them.
    soft, hard = value, value + 1 if name == "CPU" else value
    if old_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    try:
        resource.setrlimit(limit, (soft, hard))
    except (ValueError, OSError) as exc:
        sys.stderr.write("hearth launcher: could not limit %s: %s\n" % (name, exc))


def landlock(abi):
    # Linux Landlock (uapi/linux/landlock.h): everything this ABI can restrict is restricted, except what a rule
    # below allows. Any failure ends the launch: the mode promised containment.
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fs_rights = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    file_rights = fs_rights & (1 | 2 | 4 | 1 << 14 | 1 << 15)  # execute, write, read, truncate, ioctl
    read_rights = 1 | 4 | 8  # execute, read file, read directory
    attr = struct.pack("=Q", fs_rights)
    if abi >= 4:
        attr += struct.pack("=Q", 3)  # TCP bind and connect: no rule allows any port
    if abi >= 6:
        attr += struct.pack("=Q", 3)  # abstract Unix sockets and signals: only within the sandbox
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(444, buffer, len(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    for kind, rights in (("READ", read_rights), ("WRITE", fs_rights), ("DEVICE", 2 | 4)):
        for path in options[kind]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # nothing there to allow
            allowed = rights if os.path.isdir(path) else rights & file_rights
            rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
            result = libc.syscall(445, ruleset, 1, rule, 0)
            os.close(fd)
            if result < 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule " + path)
    if os.getuid() == 0:  # root's capabilities (CAP_SYS_PTRACE) would reach past Landlock: none after the exec
        for capability in range(64):
            libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP; numbers this kernel lacks just fail
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: required, and no setuid way out
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.syscall(446, ruleset, 0) < 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(ruleset)


# System calls by name, for the two architectures the filter knows (asm/unistd_64.h, asm-generic/unistd.h).
CALLS = {
    "x86_64": dict(arch=0xC000003E, socket=41, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                   memfd_create=319, shmget=29, semget=64, msgget=68, mq_open=240, pidfd_send_signal=424, kill=62,
                   tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_open=434, fcntl=72,
                   ioctl=16),
    "aarch64": dict(arch=0xC00000B7, socket=198, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                    memfd_create=279, shmget=194, semget=190, msgget=186, mq_open=180, pidfd_send_signal=424,
                    kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_open=434,
                    fcntl=25, ioctl=29),
}
# io_uring does what the denied calls do (it opens sockets) without calling them; memfd and System V memory
# outlive or escape the address-space limit.
ALWAYS_DENIED = ["io_uring_setup", "io_uring_enter", "io_uring_register", "memfd_create"]
# Landlock: no sockets at all (Landlock does not cover UDP or Unix sockets), no System V IPC (it outlives the run),
# and no signal to the supervisor (which ends every descendant) or to Hearth: Landlock scopes signals from ABI 6
# only. Below ABI 6 this is not airtight (a signal to one of Hearth's other threads gets through), which is why
# Hearth asks before using Landlock below ABI 6; the supervisor has one thread.
LANDLOCK_DENIED = ["socket", "shmget", "semget", "msgget", "mq_open", "pidfd_send_signal", "tkill"]


def guards(protected):
    # (call, offset of the argument in struct seccomp_data, values that are refused). Arguments are compared on
    # their low 32 bits (little-endian: at the argument's offset).
    supervisor, hearth = protected
    groups = [os.getpgid(0)]
    try:
        groups.append(os.getpgid(hearth))
    except OSError:
        pass
    as_unsigned = lambda number: number & 0xFFFFFFFF
    kill_targets = [supervisor, hearth, 0, as_unsigned(-1)] + [as_unsigned(-group) for group in groups]
    return [("kill", 16, kill_targets)] + [(name, 16, [supervisor, hearth]) for name in
            ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open")] + [
        ("fcntl", 24, [8, 10, 15]),  # F_SETOWN, F_SETSIG, F_SETOWN_EX: the kernel would send signals for it
        ("ioctl", 24, [0x8901, 0x8902]),  # FIOSETOWN, SIOCSPGRP: the same
    ]


def seccomp(profile, protected):
    # A classic BPF program over struct seccomp_data: denied calls fail with EPERM, and so does anything that is
    # not a native 64-bit call (i386 or x32 numbers mean other calls).
    import ctypes, struct
    calls = CALLS[os.uname().machine]
    code = [(0x20, 0, 0, 4), (0x15, 0, "deny", calls["arch"]), (0x20, 0, 0, 0), (0x35, "deny", 0, 0x40000000)]
    denied = ALWAYS_DENIED + (LANDLOCK_DENIED if profile == "landlock" else [])
    code += [(0x15, "deny", 0, calls[name]) for name in denied]
    if profile == "landlock":
        for name, offset, refused in guards(protected):
            checks = [(0x20, 0, 0, offset)] + [(0x15, "deny", 0, value) for value in refused]
            checks.append((0x06, 0, 0, 0x7FFF0000))
            code.append((0x15, 0, len(checks), calls[name]))
            code += checks
    code += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]  # allow; deny: SECCOMP_RET_ERRNO | EPERM
    deny_at = len(code) - 1
    resolved = []
    for index, (op, jt, jf, k) in enumerate(code):
        jt = deny_at - index - 1 if jt == "deny" else jt
        jf = deny_at - index - 1 if jf == "deny" else jf
        resolved.append(struct.pack("=HBBI", op, jt, jf, k))
    program = b"".join(resolved)
    filters = ctypes.create_string_buffer(program, len(program))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    filter_program = Program(len(resolved), ctypes.cast(filters, ctypes.c_void_p))
    if libc.prctl(22, 2, ctypes.byref(filter_program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp")


def become_program():
    try:
        if options.get("LANDLOCK_ABI"):
            landlock(options["LANDLOCK_ABI"])
        if options.get("SECCOMP"):
            seccomp(options["SECCOMP"], protected)
        os.execvp(program[0], program)
    except OSError as exc:
        sys.stderr.write("hearth launcher: could not start the program contained: %s\n" % exc)
        os._exit(126)


def descendants():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, queue = [], [os.getpid()]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def end_every_descendant():
    # The launcher is their subreaper: whatever session or environment they chose, orphans come back to it.
    for _ in range(100):
        alive = descendants()
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


if not options.get("SUPERVISE"):
    become_program()
import ctypes
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = os.fork()
if child == 0:
    become_program()


def stop(signum, frame):  # Hearth stops the run: as if the program had been killed
    end_every_descendant()
    os.kill(os.getpid(), signal.SIGKILL)


for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, stop)
while True:
    pid, status = os.waitpid(-1, 0)
    if pid == child:
        break
end_every_descendant()
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
"""


def _limit_arguments(limits: ResourceLimits, timeout_s: float, bwrap: Bubblewrap | None) -> list[str]:
    arguments: list[str] = []
    if limits.address_space_bytes is not None and not _IS_MACOS:  # macOS refuses or ignores RLIMIT_AS
        arguments.append(f"AS={int(limits.address_space_bytes)}")
    if limits.file_size_bytes is not None:
        arguments.append(f"FSIZE={int(limits.file_size_bytes)}")
    arguments.append(f"CPU={limits.cpu_seconds_for(timeout_s)}")  # soft limit: SIGXCPU; the hard limit one second later: SIGKILL
    if not limits.core_dumps:
        arguments.append("CORE=0")
    if limits.open_files is not None:
        arguments.append(f"NOFILE={int(limits.open_files)}")
    if limits.max_new_processes is not None and (_IS_LINUX or _IS_MACOS) and os.getuid() != 0:  # root is exempt
        arguments.append(f"NPROC={_process_limit(limits.max_new_processes, bwrap)}")
    return arguments


def _process_limit(new_processes: int, bwrap: Bubblewrap | None) -> int:
    """RLIMIT_NPROC for a run that may start ``new_processes``. The kernel compares it with the number of tasks of
    the user, not of the run. Inside a user namespace of its own (bwrap without setuid, Linux 5.14+) that number
    counts only the namespace's tasks (bwrap's init and the program); everywhere else it is every task of the user
    on the machine, counted here, just before the start."""
    if bwrap is not None and bwrap.own_user_namespace and _kernel_at_least(5, 14):
        return new_processes + 2
    return _user_task_count() + new_processes


def _user_task_count() -> int:
    """What RLIMIT_NPROC is compared with: the user's tasks (threads too) on Linux, the user's processes on macOS."""
    uid = os.getuid()
    if _IS_MACOS:
        try:
            # The real uid: what the kernel counts RLIMIT_NPROC against
            listing = subprocess.run(["/bin/ps", "-A", "-o", "ruid="], capture_output=True, text=True, timeout=30,
                                     stdin=subprocess.DEVNULL, check=True).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("Could not count your processes (%s): the run's process limit is the system's", exc)
            return _MACOS_PROCESSES_PER_USER_FALLBACK
        return sum(1 for line in listing.split() if line == str(uid))
    tasks = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        try:
            if int(fields.get("Uid", "-1").split()[0]) == uid:
                tasks += int(fields.get("Threads", "1").strip() or 1)
        except ValueError:
            continue
    return tasks


# When ps cannot count: above macOS's usual per-user maximum (kern.maxprocperuid; the launcher clamps to the hard
# limit), so the limit is in effect the system's, rather than set below what the user already runs (which would
# stop the program's first fork).
_MACOS_PROCESSES_PER_USER_FALLBACK = 4096


def _kernel_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found[1]), int(found[2])) >= (major, minor)


# --- process control -----------------------------------------------------------------------------------------


def _group_options(*, suspended: bool = False) -> dict[str, object]:
    if _IS_WINDOWS:
        return {"creationflags": job_object.CREATE_NEW_PROCESS_GROUP | (job_object.CREATE_SUSPENDED if suspended else 0)}
    return {"start_new_session": True}


def _windows_job(process: subprocess.Popen[bytes], limits: ResourceLimits, timeout_s: float) -> job_object.JobObject:
    """The program, started suspended, in a Job Object of its own (``src/sandbox/job_object.py``), then resumed.
    Where that fails it never runs: a program outside the job could outlive the run."""
    processes = None if limits.max_new_processes is None else limits.max_new_processes + 1
    job = None
    try:
        job = job_object.JobObject(
            job_object.JobLimits(limits.address_space_bytes, limits.cpu_seconds_for(timeout_s), processes)
        )
        job.adopt_and_resume(process.pid)
    except BaseException as exc:  # a KeyboardInterrupt too: a suspended program must not be left behind
        try:
            process.kill()
        except OSError:  # already ended, or not ours to kill: the job's own termination below still applies
            logger.warning("Could not kill process %d after its Job Object failed", process.pid, exc_info=True)
        finally:
            if job is not None:
                job.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_KILL_GRACE_S * 3)
        if isinstance(exc, OSError):
            raise ProgramStartError(" ".join(map(str, process.args)), f"could not put it in its Job Object: {exc}") from exc
        raise
    return job


def _kill_tree(
    process: subprocess.Popen[bytes], run_id: str, *, supervised: bool = False, job: job_object.JobObject | None = None
) -> None:
    if job is not None:
        job.terminate()  # every process of the job, however it was started
    if _IS_WINDOWS:
        try:
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=_KILL_GRACE_S * 3,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("taskkill failed for process %d: %s", process.pid, exc)
        if process.poll() is None:
            process.kill()
        return
    pgid = process.pid  # start_new_session made the child the leader of a group with its own pid
    if supervised and process.poll() is None:
        # The supervisor first: it ends the descendants that left the group (SIGKILL to it would orphan them).
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_KILL_GRACE_S)
    # Twice a short while apart: a process forking at the moment of the first kill may add a member after it.
    for _ in range(2):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except PermissionError:  # a member changed its user id (setuid program); nothing more we can do
            logger.warning("Could not kill every process of group %d", pgid)
            break
        time.sleep(0.05)
    hunted = _kill_marked(run_id) if _IS_LINUX else set()
    # Orphaned members are reaped by init, not by us; waiting a little for that lets callers see a clean state
    # (instant under systemd; some minimal container inits reap only every second or so).
    deadline = time.monotonic() + _KILL_GRACE_S
    while time.monotonic() < deadline:
        if process.poll() is not None and _is_gone(pgid, group=True) and all(_is_gone(pid) for pid in hunted):
            return
        time.sleep(0.02)
    logger.warning("Processes of group %d still exist %g s after SIGKILL (zombies awaiting init?)", pgid, _KILL_GRACE_S)


def _wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once ``process`` has exited (and been reaped), False at the timeout. On Linux a pidfd wakes us the moment
    it exits; ``Popen.wait(timeout)`` polls, with up to 50 ms between looks, which was most of the cost of a short
    run (benchmarks/sandbox.py)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            pidfd = pidfd_open(process.pid)
        except OSError:  # already reaped, or a kernel before 5.3
            pidfd = None
        if pidfd is not None:
            try:
                poller = select.poll()  # not select(): a pidfd past 1024 (an app with many open files) is fine
                poller.register(pidfd, select.POLLIN)
                ready = poller.poll(max(0, math.ceil(timeout_s * 1000)))
            finally:
                os.close(pidfd)
            if not ready:
                return False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


class _DiskWatch:
    """Stops a run that adds more than ``limits.disk_bytes`` or ``limits.new_files`` to ``folders``: RLIMIT_FSIZE
    bounds each file, not how many there are, and a full disk takes the user's other programs down too.

    Counted: what the folders hold, and (Linux) files that the run's processes hold open after deleting them (no
    folder shows those). A folder that becomes impossible to look into while the run lasts (no permission, nested
    deeper than ``_DISK_WATCH_MAX_DEPTH``) stops the run; one that already was at the start is left out (logged).
    Looked at every ``_DISK_WATCH_INTERVAL_S`` at least, less often when a walk is slow, so that the watch costs
    Hearth at most about a fifth of a core."""

    def __init__(
        self, folders: list[Path], limits: ResourceLimits, stop: Callable[[], None], root_pid: int | None = None
    ) -> None:
        self.limits, self.stop, self.root_pid = limits, stop, root_pid
        self.exceeded: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.folders: list[Path] = []
        if limits.disk_bytes is None and limits.new_files is None:
            return
        base_bytes = base_files = 0
        for folder in folders:
            measured = self._measure([folder], None, None)
            if measured is None:
                logger.warning("The disk watch cannot look into %s; it is left out", folder)
                continue
            self.folders.append(folder)
            base_bytes, base_files = base_bytes + measured[0], base_files + measured[1]
        self._byte_limit = None if limits.disk_bytes is None else base_bytes + limits.disk_bytes
        self._file_limit = None if limits.new_files is None else base_files + limits.new_files
        self._thread = threading.Thread(target=self._watch, name="hearth-run-disk", daemon=True)
        self._thread.start()

    def _measure(self, folders: list[Path], byte_limit: int | None, file_limit: int | None) -> tuple[int, int] | None:
        """Bytes (allocated) and entries under ``folders``, counting stopped once past a limit; None if some of it
        could not be looked into."""
        total = files = 0

        def visit(directory: int | str, depth: int) -> bool:
            """False: something in ``directory`` cannot be looked into. Descends by directory descriptors where the
            OS has them, so that no path length limit hides a deep folder."""
            nonlocal total, files
            if depth > _DISK_WATCH_MAX_DEPTH:
                return False
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # deleted meanwhile: the program's temporary files come and go
                        continue
                    files += 1
                    total += getattr(info, "st_blocks", 0) * 512 or info.st_size
                    if (byte_limit is not None and total > byte_limit) or (file_limit is not None and files > file_limit):
                        return True
                    if not stat.S_ISDIR(info.st_mode):
                        continue
                    if not _WALK_BY_FD:
                        if not visit(entry.path, depth + 1):
                            return False
                        continue
                    try:
                        child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
                    except OSError as exc:
                        if exc.errno in _REPLACED_MEANWHILE:  # gone, or no longer a folder: nothing hidden
                            continue
                        raise
                    try:
                        if not visit(child, depth + 1):
                            return False
                    finally:
                        os.close(child)
            return True

        for folder in folders:
            if not folder.is_dir():
                continue
            top: int | str = str(folder)
            try:
                if _WALK_BY_FD:
                    top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                if not visit(top, 0):
                    return None
            except (OSError, RecursionError):  # no permission, ...
                return None
            finally:
                if isinstance(top, int):
                    os.close(top)
        return total, files

    def _watch(self) -> None:
        interval = _DISK_WATCH_INTERVAL_S
        while not self._done.wait(interval):
            started = time.monotonic()
            self.exceeded = self._over()
            if self.exceeded is not None:
                logger.warning("Stopping a generated program: it wrote %s", self.exceeded)
                self.stop()
                return
            interval = max(_DISK_WATCH_INTERVAL_S, 5 * (time.monotonic() - started))

    def _over(self) -> str | None:
        measured = self._measure(self.folders, self._byte_limit, self._file_limit)
        if measured is None:
            return "folders Hearth cannot look into (hidden from the disk limit)"
        total, files = measured
        total += _deleted_but_open_bytes(self.root_pid) if self.root_pid is not None and _IS_LINUX else 0
        if self._byte_limit is not None and total > self._byte_limit:
            return f"more than {(self.limits.disk_bytes or 0) // MiB} MiB to its folders"
        if self._file_limit is not None and files > self._file_limit:
            return f"more than {self.limits.new_files:,} files to its folders"
        return None

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _deleted_but_open_bytes(root_pid: int) -> int:
    """Bytes of regular files that ``root_pid`` or its descendants still hold open after deleting them. A process
    that hid its descriptors (made itself non-dumpable) is not counted: its open files stay bounded by
    RLIMIT_NOFILE x RLIMIT_FSIZE."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in [root_pid, *_descendants_of(root_pid)]:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            link = f"/proc/{pid}/fd/{descriptor}"
            try:
                if not os.readlink(link).endswith(" (deleted)"):
                    continue
                info = os.stat(link)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def _descendants_of(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as status:
                parent = int(status.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, queue = [], [root_pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


_DISK_WATCH_INTERVAL_S = 0.1
_DISK_WATCH_MAX_DEPTH = 100
_REPLACED_MEANWHILE = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
_WALK_BY_FD = os.scandir in os.supports_fd and hasattr(os, "O_DIRECTORY")


def _is_gone(pid: int, *, group: bool = False) -> bool:
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _kill_marked(run_id: str) -> set[int]:
    """Kill processes of this run that left its process group (setsid, daemons): they carry its marker.

    Returns their pids. Dead processes (zombies) show an empty environment, so only live ones are found.
    """
    marker = f"{RUN_ID_VARIABLE}={run_id}".encode()
    own_pid = os.getpid()
    killed: set[int] = set()
    for _ in range(5):  # a daemon may fork again while being hunted
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == own_pid:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    environment = handle.read()
            except OSError:
                continue
            if marker in environment.split(b"\0"):
                found = True
                try:
                    os.kill(int(name), signal.SIGKILL)
                    killed.add(int(name))
                    logger.info("Killed process %s of run %s that had left its process group", name, run_id)
                except (ProcessLookupError, PermissionError):
                    pass
        if not found:
            break
        time.sleep(0.05)
    return killed


def _reap(process: subprocess.Popen[bytes]) -> int | None:
    try:
        return process.wait(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:  # SIGKILL can't be ignored; only an uninterruptible kernel wait gets here
        logger.error("Process %d did not die after SIGKILL", process.pid)
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- output --------------------------------------------------------------------------------------------------


class _StreamCapture:
    """The first ``limit`` bytes of a stream; past it, only a short tail (the end of a traceback) is kept."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.tail_limit = min(_TAIL_BYTES, self.limit // 4)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0  # bytes neither in head nor in tail
        self._lock = threading.Lock()

    @property
    def truncated(self) -> bool:
        return bool(self.tail) or self.dropped > 0  # anything past the head costs some of the head (see text)

    def consume(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        try:
            while True:
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    return
                with self._lock:
                    self._add(chunk)
        except OSError:
            return  # the pipe was closed under us
        finally:
            stream.close()

    def _add(self, chunk: bytes) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail += chunk
        overflow = len(self.tail) - self.tail_limit
        if overflow > 0:
            del self.tail[:overflow]
            self.dropped += overflow

    def text(self) -> str:
        with self._lock:
            if not self.truncated:
                return bytes(self.head).decode("utf-8", errors="replace")
            # Past the budget: give up the end of the head so that head + marker + tail still fits in the limit.
            # The marker's width is bounded (20 digits), so the count it shows can be exact.
            marker_room = len(f"\n[... {10**20:,} bytes of output not kept ...]\n")
            keep = max(0, self.limit - len(self.tail) - marker_room)
            marker = f"\n[... {self.dropped + len(self.head) - keep:,} bytes of output not kept ...]\n".encode()
            data = bytes(self.head[:keep]) + marker + bytes(self.tail)
            return data.decode("utf-8", errors="replace")


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
        stream.flush()
    except (BrokenPipeError, OSError):
        pass  # the program exited (or closed stdin) without reading everything: its business
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _start_thread(
    target: Callable[..., None], stream: IO[bytes] | None, label: str, *args: object
) -> threading.Thread:
    # Daemon threads: a pipe held open by a process that escaped every kill must not keep the app from exiting.
    thread = threading.Thread(target=target, args=(stream, *args), name=f"hearth-run-{label}", daemon=True)
    thread.start()
    return thread
