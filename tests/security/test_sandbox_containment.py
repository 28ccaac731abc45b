"""What a hostile generated program can reach while it runs, in each sandbox mode this machine has.

bubblewrap (the Linux mode) must contain every probe here; the limits-only fallback contains none of them, which is
what the README says and why the fallback is reported in every run's summary. Each probe is a real program run
through ``run_program``, the one way Hearth runs generated code; each fails on the code before bubblewrap, and the
ones about hiding also fail when a single folder is left out of the hidden list.

Planted secrets and "outside" folders are put where only the rule under test hides them: not under /tmp (which the
sandbox replaces as a whole) and not under the home folder (hidden as a whole).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.sandbox import landlock, paths
from src.sandbox.bubblewrap import find_bubblewrap
from src.settings import (
    ENV_SANDBOX,
    PROJECT_ROOT,
    SANDBOX_BUBBLEWRAP,
    SANDBOX_LANDLOCK,
    SANDBOX_RLIMITS,
    reload_settings,
)
from src.workflows.company.sandbox import run_program
from tests.sandbox_modes import use_sandbox_mode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux sandboxes")

SECRET = "hf_secret_the_program_must_not_see"


def run(project: Path, source: str, **kwargs: object):  # type: ignore[no-untyped-def]
    project.mkdir(parents=True, exist_ok=True)
    (project / "main.py").write_text(textwrap.dedent(source))
    return run_program(project, "main.py", timeout_s=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, params=[SANDBOX_BUBBLEWRAP, SANDBOX_LANDLOCK])
def sandbox_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_sandbox_mode(request.param, monkeypatch)


@pytest.fixture
def bubblewrap_only(sandbox_mode: str) -> None:
    """For what only bubblewrap's mounts and namespaces do (the README says so of the Landlock mode)."""
    if sandbox_mode != SANDBOX_BUBBLEWRAP:
        pytest.skip("a bubblewrap mechanism")


def _under(path: Path, folders: list[Path]) -> bool:
    return any(path.resolve().is_relative_to(folder.resolve()) for folder in folders)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A fresh folder that no general rule of the sandbox hides: beside Hearth's install, when that is neither in
    /tmp nor in the home folder (CI's checkout is; a developer's under ~ is not, and these tests are skipped)."""
    parent = PROJECT_ROOT.parent
    if _under(parent, [Path("/tmp"), Path("/var/tmp"), Path.home(), PROJECT_ROOT]) or not os.access(parent, os.W_OK):
        pytest.skip(f"no writable folder outside /tmp and the home folder to plant files in ({parent})")
    place = Path(tempfile.mkdtemp(prefix=".hearth-sandbox-probe-", dir=parent))
    try:
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_hearths_data_install_and_other_projects_are_hidden(
    outside: Path, monkeypatch: pytest.MonkeyPatch, sandbox_mode: str
) -> None:
    data, warehouse = outside / "data", outside / "WareHouse"
    monkeypatch.setenv("HEARTH_DATA_DIR", str(data))
    monkeypatch.setenv("HEARTH_DB_PATH", str(outside / "db" / "chats.sqlite3"))
    monkeypatch.setenv("HEARTH_WAREHOUSE_DIR", str(warehouse))
    monkeypatch.setenv("HEARTH_EVOLUTION_DIR", str(outside / "evolution"))
    reload_settings()
    secrets = [str(path) for path in (data / "keys.txt", outside / "db" / "chats.sqlite3",
               warehouse / "Other_project" / "notes.txt", outside / "evolution" / "run1" / "metrics.json")]  # fmt: skip
    for secret in map(Path, secrets):
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(SECRET)
    result = run(warehouse / "This_project", f"""
        import json, os
        def listing(folder):
            try:
                return sorted(os.listdir(folder)) if os.path.isdir(folder) else None
            except PermissionError:
                return "denied"

        def readable(path):
            try:
                with open(path, "rb"):
                    return True
            except OSError:
                return False

        seen = {{name: listing(os.path.join({str(outside)!r}, name)) for name in ("data", "db", "WareHouse", "evolution")}}
        seen["install"] = listing({str(PROJECT_ROOT)!r})
        seen["settings.py"] = readable({str(PROJECT_ROOT / "src" / "settings.py")!r})
        seen["secrets"] = [readable(path) for path in {secrets!r}]
        print(json.dumps(seen))
    """)
    assert result.ok, result.stderr
    assert result.sandbox == sandbox_mode
    seen = json.loads(result.stdout)
    assert seen["secrets"] == [False] * 4
    hidden = (None, [], "denied")  # bubblewrap shows an empty folder or none; Landlock refuses to open it
    assert seen["data"] in hidden and seen["db"] in hidden and seen["evolution"] in hidden
    assert seen["WareHouse"] in (["This_project"], "denied")  # its own folder, put back; not its siblings
    assert not seen["settings.py"]
    # Of Hearth's install only the Python environment may show (a venv inside it), never .env or the source.
    python_parts = {Path(p).resolve().relative_to(PROJECT_ROOT).parts[0] for p in (sys.prefix, sys.exec_prefix)
                    if Path(p).resolve().is_relative_to(PROJECT_ROOT)}  # fmt: skip
    assert seen["install"] == "denied" or set(seen["install"]) <= python_parts, seen["install"]


def test_the_home_folder_is_hidden_even_when_python_lives_in_it(
    outside: Path, monkeypatch: pytest.MonkeyPatch, bubblewrap_only: None
) -> None:
    # A Python installed under the home folder (pyenv, a venv in ~/projects) is put back part by part; neither the
    # rest of the home folder nor Hearth's data folder inside that Python's tree may come back with it.
    home = outside / "home"
    venv_lib = home / "pyenv" / "lib"
    data = venv_lib / "hearth-data"
    for secret in (home / ".ssh" / "id_rsa", data / "keys.txt"):
        secret.parent.mkdir(parents=True)
        secret.write_text(SECRET)
    (venv_lib / "module_it_needs.py").write_text("")
    monkeypatch.setattr(paths, "home_folders", lambda: [home])
    real_parts = paths.python_parts
    monkeypatch.setattr(paths, "python_parts", lambda: [*real_parts(), venv_lib])
    monkeypatch.setenv("HEARTH_DATA_DIR", str(data))
    reload_settings()
    result = run(outside / "project", f"""
        import os
        print(sorted(os.listdir({str(home)!r})), sorted(os.listdir({str(venv_lib)!r})),
              os.path.exists({str(home / ".ssh" / "id_rsa")!r}), os.listdir({str(data)!r}))
    """)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "['pyenv'] ['hearth-data', 'module_it_needs.py'] False []"


def test_no_process_environment_holds_hearths_keys(tmp_path: Path, sandbox_mode: str) -> None:
    # A process started with the key in its environment stands for Hearth (whose own /proc/self/environ holds what
    # it was started with, not what a test sets later).
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "HF_TOKEN": SECRET})
    try:
        result = run(tmp_path / "p", f"""
            import os
            found = []
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{{pid}}/environ", "rb") as f:
                        if {SECRET!r}.encode() in f.read():
                            found.append(pid)
                except OSError:
                    pass
            print("found" if found else "clean", len([p for p in os.listdir("/proc") if p.isdigit()]))
        """)
    finally:
        holder.kill()
        holder.wait()
    assert result.ok, result.stderr
    verdict, processes = result.stdout.split()
    assert verdict == "clean"
    if sandbox_mode == SANDBOX_BUBBLEWRAP:
        assert int(processes) <= 3  # its own namespace: bwrap's init, the program (and its launcher's exec)


def test_no_network_not_even_the_hosts_loopback_or_its_sockets(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0hearth-probe-{uuid.uuid4().hex}"
    abstract.bind(abstract_name)
    abstract.listen()
    run_sockets = [Path(f"/run/user/{os.getuid()}"), Path("/run")]
    socket_folder = next((folder for folder in run_sockets if folder.is_dir() and os.access(folder, os.W_OK)), None)
    named_path = None
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if socket_folder is not None:  # like the session bus or the keyring's socket
        named_path = socket_folder / f"hearth-probe-{uuid.uuid4().hex}.sock"
        named.bind(str(named_path))
        named.listen()
    accepted: list[object] = []
    for server in (listener, abstract, named):
        server.settimeout(5)

    def accept(server: socket.socket) -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    threads = [threading.Thread(target=accept, args=(server,), daemon=True) for server in (listener, abstract, named)]
    for thread in threads:
        thread.start()
    try:
        result = run(tmp_path / "p", f"""
            import socket
            verdicts = []
            for family, address in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_UNIX, {abstract_name!r}),
                                    (socket.AF_UNIX, {str(named_path) if named_path else "/nonexistent"!r})):
                try:
                    with socket.socket(family, socket.SOCK_STREAM) as s:
                        s.settimeout(3)
                        s.connect(address)
                    verdicts.append("connected")
                except OSError as exc:
                    verdicts.append("refused")
            print(" ".join(verdicts))
        """)
    finally:
        for server in (listener, abstract, named):
            server.close()
        for thread in threads:
            thread.join(6)
        if named_path is not None:
            named_path.unlink(missing_ok=True)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["refused", "refused", "refused"] and not accepted


def test_writes_stay_in_the_project_folder(tmp_path: Path, outside: Path) -> None:
    venv_probe = Path(sys.prefix) / "hearth-sandbox-probe.pth"
    targets = [outside / "planted.txt", venv_probe, Path.home() / ".bashrc-probe", PROJECT_ROOT / "planted.txt",
               Path("/dev/planted"), Path("/run/planted"), Path("/var/tmp/planted"), Path("/dev/shm/planted"),
               tmp_path / "planted.txt"]  # fmt: skip
    try:
        result = run(tmp_path / "p", f"""
            import os
            verdicts = []
            for target in {[str(t) for t in targets]!r} + ["inside.txt"]:
                try:
                    with open(target, "w") as f:
                        f.write("x")
                    verdicts.append("written")
                except OSError as exc:
                    verdicts.append(type(exc).__name__)
            print(" ".join(verdicts))
        """)
        assert result.ok, result.stderr
        verdicts = result.stdout.split()
        assert verdicts[-1] == "written" and (tmp_path / "p" / "inside.txt").read_text() == "x"
        # bubblewrap gives the program a /tmp and a /dev/shm of its own (the last two targets may be written there);
        # nothing may reach the real ones.
        assert "written" not in verdicts[:-3], list(zip(targets, verdicts))
        assert not any(target.exists() for target in [*targets[:4], *targets[-2:]])
    finally:
        for target in (venv_probe, PROJECT_ROOT / "planted.txt", Path("/dev/shm/planted")):  # if the sandbox failed
            target.unlink(missing_ok=True)


def test_no_new_user_namespace_inside(tmp_path: Path, bubblewrap_only: None) -> None:
    found = find_bubblewrap().found
    if found is None or not found.own_user_namespace:
        pytest.skip("this bwrap cannot give the sandbox a user namespace of its own")
    result = run(tmp_path / "p", """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWUSER = 0x10000000
        print("created" if libc.unshare(CLONE_NEWUSER) == 0 else "refused")
    """)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "refused"


def test_no_display_but_headless_drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("XAUTHORITY", "/home/someone/.Xauthority")
    result = run(tmp_path / "p", """
        import os
        print(os.environ.get("DISPLAY"), os.environ.get("XAUTHORITY"), os.environ.get("SDL_VIDEODRIVER"),
              os.environ.get("MPLBACKEND"))
    """)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["None", "None", "dummy", "Agg"]


def test_a_child_in_its_own_session_and_environment_dies_with_the_run(tmp_path: Path) -> None:
    project = tmp_path / "p"
    token = uuid.uuid4().hex  # this test's own sleeper, not another run's
    result = run(project, f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600); {token!r}"], start_new_session=True,
                         env={{}}, cwd="/")
        print("started")
    """)
    assert result.ok, result.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        survivors = [pid for pid in os.listdir("/proc") if pid.isdigit() and token in _cmdline(pid)]
        if not survivors:
            break
        time.sleep(0.05)
    assert not survivors


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return ""


def test_the_limits_only_fallback_says_what_it_does_not_contain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from src.workflows.company.sandbox import sandbox_description

    monkeypatch.setenv(ENV_SANDBOX, SANDBOX_RLIMITS)
    reload_settings()
    result = run(tmp_path / "p", "print('hi')\n")
    assert result.ok and result.sandbox == SANDBOX_RLIMITS
    assert "could read your files and use the network" in sandbox_description(result.sandbox)


def test_git_runs_in_the_sandbox_too(tmp_path: Path, bubblewrap_only: None) -> None:
    # What the runner keeps git from doing (it never commits a tree holding a repository of the program's, and
    # disarms such a repository at the end) is also contained if it happens: git itself cannot write the work tree.
    from src.workflows.company.sandbox import run_git

    work_tree = tmp_path / "project"
    nested = work_tree / "sub"
    nested.mkdir(parents=True)
    (nested / "data.txt").write_text("one\n")
    git = ["git", "-c", "user.name=x", "-c", "user.email=x@x", "-C", str(nested)]
    (nested / ".gitattributes").write_text("* filter=evil\n")
    for args in (["init", "-q"], ["config", "filter.evil.clean", f"touch {work_tree}/pwned; cat"], ["add", "-A"],
                 ["commit", "-qm", "x"]):  # fmt: skip
        subprocess.run(git + args, check=True, capture_output=True)
    (work_tree / "pwned").unlink()  # the filter ran for the program's own commit, in the sandbox
    (nested / "data.txt").write_text("two\n")
    repository = tmp_path / "repository"
    repository.mkdir()
    for args in (["init", "-q"], ["add", "-A"], ["status"]):
        done = run_git(args, git_dir=repository, work_tree=work_tree, timeout_s=30)
        assert done.exit_code == 0, done.stderr
    assert "sub" in done.stdout  # git did look into the nested repository
    assert not (work_tree / "pwned").exists()


def test_other_processes_cannot_be_signalled(tmp_path: Path, sandbox_mode: str) -> None:
    if sandbox_mode == SANDBOX_LANDLOCK and landlock.landlock_abi() < 6:
        pytest.skip("Landlock scopes signals from ABI 6 on (the README says so)")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result = run(tmp_path / "p", f"""
            import os, signal
            try:
                os.kill({bystander.pid}, signal.SIGKILL)
                print("killed")
            except OSError as exc:
                print(type(exc).__name__)
        """)
        assert result.ok, result.stderr
        assert result.stdout.strip() in ("PermissionError", "ProcessLookupError")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.fixture
def landlock_abi_4(sandbox_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Landlock as Ubuntu 24.04's kernel (6.8) has it: no signal scoping, which came with ABI 6 (Linux 6.12)."""
    if sandbox_mode != SANDBOX_LANDLOCK:
        pytest.skip("the Landlock mode's own protection")
    monkeypatch.setattr(landlock, "landlock_abi", lambda: 4)


def test_before_landlock_abi_6_the_supervisor_and_hearth_cannot_be_signalled(tmp_path: Path, landlock_abi_4: None) -> None:
    # Killing the supervisor would orphan a setsid child out of its reach (found by review).
    token = uuid.uuid4().hex
    result = run(tmp_path / "p", f"""
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600); {token!r}"], start_new_session=True,
                         env={{}}, cwd="/")
        verdicts = []
        for target in (os.getppid(), {os.getpid()}, 0, -1):
            try:
                os.kill(target, 0)  # 0: only asks whether a signal could be sent (the filter does not look at it)
                verdicts.append("sent")
            except OSError as exc:
                verdicts.append(type(exc).__name__)
        print(" ".join(verdicts))
    """)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["PermissionError"] * 4
    deadline = time.monotonic() + 5
    while any(token in _cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit()):
        assert time.monotonic() < deadline, "the setsid child outlived the run"
        time.sleep(0.05)


def test_no_io_uring_memfd_or_system_v_memory(tmp_path: Path, sandbox_mode: str) -> None:
    # io_uring opens sockets without socket() (found by review); memfd and System V segments hold memory past the
    # address-space limit, System V ones even past the run (bubblewrap's IPC namespace frees those at its end).
    result = run(tmp_path / "p", """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        verdicts = [libc.syscall(425, 4, ctypes.create_string_buffer(120)) >= 0]  # io_uring_setup
        try:
            os.memfd_create("x")
            verdicts.append(True)
        except OSError:
            verdicts.append(False)
        verdicts.append(libc.shmget(0, 4096, 0o1600) >= 0)  # IPC_PRIVATE, IPC_CREAT | 0600
        print(" ".join("allowed" if verdict else "refused" for verdict in verdicts))
    """)
    assert result.ok, result.stderr
    expected_shm = "refused" if sandbox_mode == SANDBOX_LANDLOCK else "allowed"
    assert result.stdout.split() == ["refused", "refused", expected_shm]


def test_a_program_still_manages_its_own_children(tmp_path: Path) -> None:
    # The filter refuses signals to groups that hold the supervisor or Hearth, not to the program's own.
    result = run(tmp_path / "p", """
        import os, signal, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
        os.killpg(child.pid, signal.SIGTERM)
        print(child.wait(timeout=10))
    """)
    assert result.ok, result.stderr
    assert result.stdout.strip() == str(-signal.SIGTERM)


def test_the_kernel_is_not_asked_to_signal_the_supervisor(tmp_path: Path, landlock_abi_4: None) -> None:
    # F_SETOWN makes the kernel send the signal, no kill() needed (found by review).
    result = run(tmp_path / "p", """
        import fcntl, os
        read_end, write_end = os.pipe()
        try:
            fcntl.fcntl(read_end, fcntl.F_SETOWN, os.getppid())
            print("armed")
        except OSError as exc:
            print(type(exc).__name__)
    """)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "PermissionError"
