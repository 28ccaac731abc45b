"""The macOS Seatbelt mode, on paper: no Mac runs this suite, so the profile Hearth writes is read back here and its
rules are decided the way Seatbelt decides them (``(deny default)``, then the *last* rule that matches wins), for the
files, sockets and services a hostile program would go for. ``run_program`` is also driven through a fake
``sandbox-exec`` (a recording shell script, named as a fake) to check that the program, the quality checks and git
are all wrapped. What this cannot show: that macOS accepts every operation name, and how Python fares under it."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from src.errors import SandboxUnavailableError, UnsandboxedRunRefusedError
from src.sandbox import paths, seatbelt
from src.settings import ENV_SANDBOX, PROJECT_ROOT, SANDBOX_RLIMITS, SANDBOX_SEATBELT, get_settings, reload_settings
from src.workflows.company import sandbox

# --- a reader and a judge for the profile ------------------------------------------------------------------------

_TOKEN = re.compile(r'\s+|;[^\n]*|(\()|(\))|"((?:[^"\\]|\\.)*)"|#"((?:[^"\\]|\\.)*)"|([^\s()";]+)')


def read_profile(text: str) -> list[list[object]]:
    """The profile's forms as nested lists; strings stay ``Str``. Raises on anything unbalanced or unreadable."""
    stack: list[list[object]] = [[]]
    position = 0
    while position < len(text):
        token = _TOKEN.match(text, position)
        assert token is not None, f"unreadable profile text at {text[position:position + 40]!r}"
        position = token.end()
        opening, closing, string, regex, symbol = token.groups()
        if opening:
            stack.append([])
        elif closing:
            assert len(stack) > 1, "unbalanced ')'"
            form = stack.pop()
            stack[-1].append(form)
        elif string is not None or regex is not None:
            stack[-1].append(Str(string if string is not None else regex))
        elif symbol:
            stack[-1].append(symbol)
    assert len(stack) == 1, "unclosed '('"
    return stack[0]  # type: ignore[return-value]


@dataclass(frozen=True)
class Str:
    value: str


def decide(forms: list[list[object]], parameters: dict[str, str], operation: str, target: str = "") -> str:
    """"allow" or "deny" for ``operation`` on ``target`` (a path, a service name, or "other" for another process)."""
    decision = None
    for form in forms:
        action, *rest = form
        if action not in ("allow", "deny"):
            continue
        operations = [item for item in rest if isinstance(item, str)]
        filters = [item for item in rest if isinstance(item, list)]
        if not any(_operation_matches(name, operation) for name in operations):
            continue
        if filters and not any(_filter_matches(f, parameters, target) for f in filters):
            continue
        decision = str(action)
    assert decision is not None, "a profile without (deny default) or (allow default)"
    return decision


def _operation_matches(name: str, operation: str) -> bool:
    if name == "default":
        return True
    return operation.startswith(name[:-1]) if name.endswith("*") else name == operation


def _filter_matches(form: list[object], parameters: dict[str, str], target: str) -> bool:
    kind, argument = form[0], form[1]
    if isinstance(argument, list):
        assert argument[0] == "param" and isinstance(argument[1], Str), f"unknown filter argument {argument}"
        value = parameters[argument[1].value]
    elif isinstance(argument, Str):
        value = argument.value
    else:
        value = str(argument)
    if kind == "subpath":
        return target == value or target.startswith(value.rstrip("/") + "/")
    if kind in ("literal", "global-name", "sysctl-name"):
        return target == value
    if kind == "sysctl-name-prefix":
        return target.startswith(value)
    if kind == "target":
        return value == "same-sandbox" and target == "same-sandbox"
    raise AssertionError(f"a filter the judge does not know: {form}")


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE KEY\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(paths, "home_folders", lambda: [home])
    warehouse = get_settings().warehouse_dir
    project = warehouse / "Calendar_run"
    sibling = warehouse / "Other_run"
    for folder in (project, sibling):
        folder.mkdir(parents=True)
    run_tmp = tmp_path / "run-tmp"
    run_tmp.mkdir()
    return {"home": home, "project": project, "sibling": sibling, "run_tmp": run_tmp}


def judged(layout: dict[str, Path], **options: object) -> tuple[list[list[object]], dict[str, str]]:
    profile, parameters = seatbelt.profile_and_parameters(
        project=layout["project"], private_tmp=layout["run_tmp"], hidden=sandbox.folders_to_hide(), **options
    )
    forms = read_profile(profile)
    assert forms[0] == ["version", "1"] and forms[1] == ["deny", "default"]
    return forms, parameters


def real(path: Path | str) -> str:
    return os.path.realpath(path)


# --- what a program can and cannot reach ---------------------------------------------------------------------------


def test_the_program_reads_and_writes_its_project_and_nothing_private(layout: dict[str, Path]) -> None:
    forms, parameters = judged(layout)

    def can(operation: str, path: Path | str) -> bool:
        return decide(forms, parameters, operation, real(path)) == "allow"

    project, settings = layout["project"], get_settings()
    assert can("file-read-data", project / "main.py") and can("file-write-create", project / "main.py")
    assert can("file-write-data", layout["run_tmp"] / "cache")
    assert can("file-read-data", "/etc/hosts") and can("file-read-data", sys.executable)
    # The hidden WareHouse: its own metadata (on the way to the project), not its listing or its other projects.
    assert can("file-read-metadata", project.parent) and not can("file-read-data", project.parent)
    for private in (
        layout["home"] / ".ssh" / "id_rsa",
        layout["sibling"] / "main.py",  # another project of the WareHouse
        settings.db_path,
        settings.data_dir / "company-journal",
        PROJECT_ROOT / ".env",  # Hearth's install
        Path("/tmp/.X11-unix/X0"),
    ):
        assert not can("file-read-data", private), private
        assert not can("file-write-data", private), private
    for python_part in paths.python_parts():
        assert can("file-read-data", python_part / "x.py")
        assert not can("file-write-create", python_part / "hearth-hook.pth"), python_part  # no .pth at next start
    assert not can("file-write-create", PROJECT_ROOT / "src" / "settings.py")
    assert not can("file-write-data", "/dev/tty")  # keystrokes into the user's terminal

    def can_use(device: str) -> bool:  # macOS's paths as they are (realpath here would follow Linux's /dev links)
        return all(decide(forms, parameters, operation, device) == "allow" for operation in ("file-read-data", "file-write-data"))

    for device in ("/dev/ttys000", "/dev/tty", "/dev/disk0", "/dev/rdisk1", "/dev/bpf0", "/dev/pf"):
        assert decide(forms, parameters, "file-read-data", device) == "deny", device
        assert decide(forms, parameters, "file-write-data", device) == "deny", device
    # /dev/fd lists the program's own descriptors only (subprocess reads it to close them before an exec)
    assert all(can_use(device) for device in ("/dev/null", "/dev/urandom", "/dev/fd/1", "/dev/stdout", "/dev/stderr"))
    assert decide(forms, parameters, "file-read-metadata", "/dev/stdin") == "allow"  # a link into /dev/fd
    assert decide(forms, parameters, "file-read-metadata", "/dev") == "allow"  # stat("/dev"), not its listing
    assert decide(forms, parameters, "file-read-data", "/dev") == "deny"


def test_devices_stay_closed_even_under_a_python_installed_at_the_root(layout: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(paths, "python_parts", lambda: [Path("/")])  # readable: the whole disk, so /dev too
    forms, parameters = judged(layout)
    assert decide(forms, parameters, "file-write-data", "/dev/ttys000") == "deny"
    assert decide(forms, parameters, "file-read-data", "/dev/disk0") == "deny"


def test_the_users_temporary_and_cache_folders_are_hidden(layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # macOS gives each user /private/var/folders/<xx>/<id>/ with T (temporary files) and C (caches) in it
    per_user = layout["run_tmp"].parent / "private" / "var" / "folders" / "zz" / "abc123"
    (per_user / "T").mkdir(parents=True)
    monkeypatch.setattr(seatbelt.tempfile, "gettempdir", lambda: str(per_user / "T"))
    monkeypatch.setattr(seatbelt, "user_temporary_roots", lambda: [per_user])
    forms, parameters = judged(layout)
    for private in (per_user / "T" / "other-download.zip", per_user / "C" / "com.apple.token", per_user / "0" / "x",
                    "/private/var/tmp/other-app.log"):  # fmt: skip
        assert decide(forms, parameters, "file-read-data", real(private)) == "deny", private
    assert decide(forms, parameters, "file-write-data", real(layout["run_tmp"] / "x")) == "allow"


def test_the_per_user_folder_is_asked_of_the_system_whatever_tmpdir_says(monkeypatch: pytest.MonkeyPatch) -> None:
    folders = {65536: "/var/folders/zz/abc123/0/", 65537: "/var/folders/zz/abc123/T/", 65538: "/var/folders/zz/abc123/C/"}
    monkeypatch.setattr(seatbelt.sys, "platform", "darwin")
    monkeypatch.setattr(seatbelt.os, "confstr", lambda number: folders[number])
    monkeypatch.setattr(seatbelt.os.path, "realpath", lambda path: "/private" + path if path.startswith("/var/") else path)
    monkeypatch.setattr(seatbelt.tempfile, "gettempdir", lambda: "/Volumes/scratch/tmp")  # TMPDIR set elsewhere
    assert seatbelt.user_temporary_roots() == [Path("/Volumes/scratch/tmp"), Path("/private/var/folders/zz/abc123")]
    monkeypatch.setattr(seatbelt.tempfile, "gettempdir", lambda: "/var/folders/zz/abc123/T")
    assert seatbelt.user_temporary_roots() == [Path("/private/var/folders/zz/abc123")]


def test_no_network_no_keychain_no_other_process(layout: dict[str, Path]) -> None:
    forms, parameters = judged(layout)
    for operation, target in (
        ("network-outbound", "127.0.0.1:8000"),
        ("network-outbound", "/private/var/run/mDNSResponder"),
        ("network-bind", "*:8080"),
        ("system-socket", ""),
        ("mach-lookup", "com.apple.SecurityServer"),  # the keychain
        ("mach-lookup", "com.apple.pasteboard.1"),
        ("mach-lookup", "com.apple.windowserver.active"),
        ("signal", "other"),  # Hearth, the user's other programs
        ("process-info-pidinfo", "other"),
        ("ipc-posix-shm-write-create", "x"),
        ("sysctl-read", "kern.procargs2"),  # any process's arguments and environment: Hearth's keys
        ("sysctl-read", "kern.proc.all"),
    ):
        assert decide(forms, parameters, operation, target) == "deny", (operation, target)
    assert decide(forms, parameters, "signal", "same-sandbox") == "allow"
    assert decide(forms, parameters, "sysctl-read", "hw.ncpu") == "allow"  # os.cpu_count()
    assert decide(forms, parameters, "mach-lookup", "com.apple.system.opendirectoryd.libinfo") == "allow"


def test_the_quality_checks_and_git_see_the_project_read_only(layout: dict[str, Path], tmp_path: Path) -> None:
    git_dir = get_settings().data_dir / "repositories" / "Calendar_run.git"  # inside the hidden data folder
    git_dir.mkdir(parents=True)
    forms, parameters = judged(layout, read_only_project=True, writable=[git_dir])
    assert decide(forms, parameters, "file-read-data", real(layout["project"] / "main.py")) == "allow"
    assert decide(forms, parameters, "file-write-data", real(layout["project"] / "main.py")) == "deny"
    assert decide(forms, parameters, "file-write-create", real(git_dir / "objects" / "ab")) == "allow"
    assert decide(forms, parameters, "file-read-data", real(get_settings().db_path)) == "deny"


def test_a_hidden_folder_inside_a_readable_one_stays_hidden(layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    venv = layout["run_tmp"].parent / "venv"
    secret = venv / "lib" / "hearth-data"  # Hearth's data folder kept inside a venv that Python needs
    secret.mkdir(parents=True)
    monkeypatch.setattr(paths, "python_parts", lambda: [venv / "lib"])
    profile, parameters = seatbelt.profile_and_parameters(
        project=layout["project"], private_tmp=layout["run_tmp"], hidden=[secret]
    )
    forms = read_profile(profile)
    assert decide(forms, parameters, "file-read-data", real(venv / "lib" / "site.py")) == "allow"
    assert decide(forms, parameters, "file-read-data", real(secret / "hearth.db")) == "deny"


def test_a_hostile_folder_name_stays_a_file_name(layout: dict[str, Path]) -> None:
    hostile = layout["project"].parent / 'x") (allow default) ; ("'
    hostile.mkdir()
    profile, parameters = seatbelt.profile_and_parameters(project=hostile, private_tmp=layout["run_tmp"], hidden=[])
    assert "allow default" not in profile  # paths travel as -D parameters, never in the profile's text
    assert real(hostile) in parameters.values()
    forms = read_profile(profile)
    assert decide(forms, parameters, "file-write-data", real(layout["home"] / ".ssh" / "id_rsa")) == "deny"
    arguments = seatbelt.wrap(["python3", "main.py"], project=hostile, private_tmp=layout["run_tmp"], hidden=[])
    assert arguments[:3] == [seatbelt.SANDBOX_EXEC, "-p", profile]
    assert arguments[-3:] == ["--", "python3", "main.py"]
    assert f"WRITE_0={real(hostile)}" in arguments


# --- the availability probe -------------------------------------------------------------------------------------


def _fake_sandbox_exec(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-sandbox-exec"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_the_probe_runs_python_under_a_real_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "call"
    runs_it = f"printf '%s\\0' \"$@\" > {shlex.quote(str(log))}\n" + \
        'while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n'
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", _fake_sandbox_exec(tmp_path, runs_it))
    secret = tmp_path / "hearth-data"
    assert seatbelt.probe([secret]) == (None, True)
    call = log.read_text().split("\0")
    assert call[0] == "-p" and "(deny default)" in call[1]  # the profile a run gets, not (allow default)
    assert any(item.startswith("HIDDEN_") and item.endswith(f"={real(secret)}") for item in call)  # hidden as in a run
    assert call[call.index("--") + 1 :][:2] == [sys.executable, "-I"]


def test_a_profile_macos_rejects_makes_the_mode_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rejects = "echo 'sandbox-exec: unbound variable: ipc-posix-sem' >&2\nexit 65\n"
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", _fake_sandbox_exec(tmp_path, rejects))
    assert seatbelt.probe() == (
        f"Python does not run under {seatbelt.SANDBOX_EXEC} with Hearth's profile: "
        "sandbox-exec: unbound variable: ipc-posix-sem", True,
    )  # fmt: skip
    silent_failure = 'echo "Traceback"; exit 0\n'  # exits 0 without having run Python
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", _fake_sandbox_exec(tmp_path, silent_failure))
    assert seatbelt.probe()[0] is not None


def test_a_probe_that_timed_out_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([("could not finish: timed out", False), (None, True)])
    monkeypatch.setattr(seatbelt, "_unavailable_reason", lambda hidden: next(answers))
    monkeypatch.setattr(seatbelt, "_probed", {})
    assert seatbelt.unavailable_reason() == "could not finish: timed out"  # not kept for the session
    assert seatbelt.unavailable_reason() is None
    assert seatbelt.unavailable_reason() is None  # kept: no third probe (next() would raise)


# --- choosing the mode -----------------------------------------------------------------------------------------------


def test_on_macos_the_automatic_choice_is_seatbelt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_IS_MACOS", True)
    monkeypatch.setattr(seatbelt, "unavailable_reason", lambda *hidden: None)
    assert sandbox.choose_sandbox("auto") == (SANDBOX_SEATBELT, None)
    assert sandbox.require_containment() == SANDBOX_SEATBELT  # contained: nothing to ask
    assert "no network" in sandbox.sandbox_description(SANDBOX_SEATBELT)


def test_on_macos_without_sandbox_exec_hearth_asks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_IS_MACOS", True)
    monkeypatch.setattr(seatbelt, "unavailable_reason", lambda *hidden: "/usr/bin/sandbox-exec is missing")
    assert sandbox.choose_sandbox("auto") == (SANDBOX_RLIMITS, None)
    with pytest.raises(UnsandboxedRunRefusedError, match="sandbox-exec is missing"):
        sandbox.require_containment()


def test_asking_for_seatbelt_off_macos_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SANDBOX, SANDBOX_SEATBELT)
    reload_settings()
    (tmp_path / "main.py").write_text("open('ran', 'w').write('x')\n")
    with pytest.raises(SandboxUnavailableError, match="macOS only"):
        sandbox.run_program(tmp_path, "main.py")
    assert not (tmp_path / "ran").exists()


# --- everything that executes project files goes through it -------------------------------------------------------


@pytest.fixture
def fake_sandbox_exec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /usr/bin/sandbox-exec that records its arguments, then runs the command after ``--``
    (uncontained: it only shows what Hearth asked Seatbelt to do)."""
    log = tmp_path / "sandbox-exec-calls"
    script = tmp_path / "fake-sandbox-exec"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" >> {shlex.quote(str(log))}\n"
        f"echo '=== end of call' >> {shlex.quote(str(log))}\n"
        'while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", str(script))
    monkeypatch.setattr(seatbelt, "unavailable_reason", lambda *hidden: None)
    monkeypatch.setenv(ENV_SANDBOX, SANDBOX_SEATBELT)
    monkeypatch.setenv("DISPLAY", ":0")
    reload_settings()
    return log


def _calls(log: Path) -> list[list[str]]:
    return [call.strip("\n").split("\n") for call in log.read_text().split("=== end of call\n") if call.strip()]


def test_run_program_wraps_the_program_in_the_profile(fake_sandbox_exec: Path, layout: dict[str, Path]) -> None:
    project = layout["project"]
    (project / "main.py").write_text("import os\nprint(os.environ['HOME'], os.environ.get('DISPLAY'), os.environ['SDL_VIDEODRIVER'])\n")
    result = sandbox.run_program(project, "main.py")
    assert result.ok and result.sandbox == SANDBOX_SEATBELT, result
    (call,) = _calls(fake_sandbox_exec)
    home, display, driver = result.stdout.split()
    assert display == "None" and driver == "dummy"  # no window server: headless drivers
    assert f"WRITE_0={real(project)}" in call and f"WRITE_1={real(home)}" in call  # its HOME is the private folder
    assert "--" in call and call[call.index("--") + 2 :][:2] == ["-I", "-c"]  # the launcher, isolated, inside


def test_analyzers_and_git_run_inside_the_profile_too(fake_sandbox_exec: Path, layout: dict[str, Path], tmp_path: Path) -> None:
    project = layout["project"]
    (project / "main.py").write_text("x = 1\n")
    checked = sandbox.run_analyzer("ruff", ["check", "--isolated", "{project}"], project, timeout_s=60)
    assert checked.exit_code == 0, checked.stderr  # ruff ran, and found nothing wrong in "x = 1"
    git_dir = tmp_path / "repository.git"
    done = sandbox.run_git(["init", "--quiet"], git_dir=git_dir, work_tree=project, timeout_s=30)
    assert done.exit_code == 0, done.stderr
    analyzer_call, git_call = _calls(fake_sandbox_exec)
    for call in (analyzer_call, git_call):
        writable = [item.split("=", 1)[1] for item in call if item.startswith("WRITE_")]
        assert real(project) not in writable, call  # read-only project for both
    assert real(git_dir) in [item.split("=", 1)[1] for item in git_call if item.startswith("WRITE_")]
    assert analyzer_call[analyzer_call.index("--") + 1 :][1:4] == ["-I", "-m", "ruff"]


# --- the rest of the macOS specifics -----------------------------------------------------------------------------


def test_git_is_the_developer_tools_git_not_the_xcrun_shim(fake_sandbox_exec: Path, layout: dict[str, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    real_git = sandbox.shutil.which("git")
    if real_git is None:
        pytest.skip("git is not installed")
    monkeypatch.setattr(sandbox, "_IS_MACOS", True)
    which = sandbox.shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: "/usr/bin/git" if name == "git" else which(name, *a, **k))
    monkeypatch.setattr(sandbox, "_xcrun_git", lambda: real_git)  # what `xcrun --find git` answers
    done = sandbox.run_git(["init", "--quiet"], git_dir=tmp_path / "repository.git", work_tree=layout["project"], timeout_s=30)
    assert done.exit_code == 0, done.stderr
    (call,) = _calls(fake_sandbox_exec)
    assert call[call.index("--") + 1] == real_git  # resolved outside the sandbox, where xcrun's caches are readable


def test_git_gets_its_own_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str] = {}

    def record(command: list[str], **options: object) -> object:
        seen.update(options["env"])  # type: ignore[arg-type]
        return sandbox.subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sandbox.subprocess, "run", record)
    sandbox.run_git(["status"], git_dir=tmp_path / "g", work_tree=tmp_path, timeout_s=5, sandbox=SANDBOX_RLIMITS)
    assert seen["TMPDIR"] == seen["HOME"] != os.environ.get("TMPDIR")  # not the user's (hidden) temporary folder


def test_on_macos_the_number_of_processes_is_limited_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_IS_MACOS", True)
    monkeypatch.setattr(sandbox, "_IS_LINUX", False)
    monkeypatch.setattr(sandbox.os, "getuid", lambda: 501)
    listing = "  501\n    0\n  501\n  88\n  501\n"  # `ps -A -o ruid=`: three processes of user 501

    def fake_ps(command: list[str], **options: object) -> object:
        assert command == ["/bin/ps", "-A", "-o", "ruid="]  # the real uid, as the kernel counts
        return sandbox.subprocess.CompletedProcess(command, 0, listing, "")

    monkeypatch.setattr(sandbox.subprocess, "run", fake_ps)
    arguments = sandbox._limit_arguments(sandbox.ResourceLimits(max_new_processes=64), 10, None)
    assert "NPROC=67" in arguments  # the user's 3 processes + 64 new ones
    assert not any(argument.startswith("AS=") for argument in arguments)  # macOS ignores RLIMIT_AS


def test_a_framework_python_brings_its_app_and_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    framework = tmp_path / "Python.framework" / "Versions" / "3.12"
    (framework / "Resources" / "Python.app" / "Contents" / "MacOS").mkdir(parents=True)
    (framework / "Python").write_text("the framework's library")
    monkeypatch.setattr(paths.sys, "base_prefix", str(framework))
    monkeypatch.setattr(paths.sysconfig, "get_config_var", lambda name: "Python" if name == "PYTHONFRAMEWORK" else None)
    parts = paths.python_parts()
    assert (framework / "Resources").resolve() in parts and (framework / "Python").resolve() in parts


def test_on_macos_a_process_count_that_fails_leaves_the_limit_to_the_system(monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(sandbox, "_IS_MACOS", True)

    def broken_ps(command: list[str], **options: object) -> object:
        raise OSError("no /bin/ps")

    monkeypatch.setattr(sandbox.subprocess, "run", broken_ps)
    assert sandbox._user_task_count() == sandbox._MACOS_PROCESSES_PER_USER_FALLBACK
    assert "Could not count your processes" in caplog.text  # said, not silent
