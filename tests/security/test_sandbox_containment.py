"""What a hostile generated program can reach while it runs, in each sandbox mode this machine has.

bubblewrap (the Linux mode) must contain every probe here; the limits-only fallback contains none of them, which is
what the README says and why the fallback is reported in every run's summary. Each probe is a real program run
through ``run_program``, the one way Hearth runs generated code; each fails on the code before bubblewrap.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from src.sandbox.bubblewrap import find_bubblewrap
from src.settings import ENV_SANDBOX, SANDBOX_BUBBLEWRAP, SANDBOX_RLIMITS, reload_settings
from src.workflows.company.sandbox import run_program

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux sandbox"),
    pytest.mark.skipif(find_bubblewrap().found is None, reason=f"bubblewrap cannot start: {find_bubblewrap().reason}"),
]

SECRET = "hf_secret_the_program_must_not_see"


def run(project: Path, source: str, **kwargs: object):  # type: ignore[no-untyped-def]
    project.mkdir(parents=True, exist_ok=True)
    (project / "main.py").write_text(textwrap.dedent(source))
    return run_program(project, "main.py", timeout_s=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def bubblewrap_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SANDBOX, SANDBOX_BUBBLEWRAP)
    monkeypatch.setenv("HF_TOKEN", SECRET)  # in Hearth's own environment, as a user's would be
    reload_settings()


def test_the_users_home_and_hearths_data_are_hidden(tmp_path: Path, hearth_data_dir: Path) -> None:
    hearth_data_dir.mkdir(parents=True, exist_ok=True)
    (hearth_data_dir / "hearth.sqlite3").write_text("the user's chats")
    home = Path.home()
    result = run(tmp_path / "p", f"""
        import json, os
        home = {str(home)!r}
        data = {str(hearth_data_dir)!r}
        print(json.dumps({{
            "home": sorted(os.listdir(home)) if os.path.isdir(home) else None,
            "data": sorted(os.listdir(data)) if os.path.isdir(data) else None,
            "ssh": os.path.exists(os.path.join(home, ".ssh")),
        }}))
    """)
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert seen["data"] in (None, [])
    assert not seen["ssh"]
    # Only what Python needs to start may show through in the home folder (a venv or pyenv under ~).
    visible = set(seen["home"] or [])
    needed = {Path(p).resolve().relative_to(home.resolve()).parts[0] for p in (sys.prefix, sys.base_prefix)
              if Path(p).resolve().is_relative_to(home.resolve())}  # fmt: skip
    assert visible <= needed, visible - needed
    assert result.sandbox == SANDBOX_BUBBLEWRAP


def test_no_process_environment_holds_hearths_keys(tmp_path: Path) -> None:
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
    assert result.ok, result.stderr
    verdict, processes = result.stdout.split()
    assert verdict == "clean"
    assert int(processes) <= 3  # its own namespace: bwrap's init, the program (and its launcher's exec)


def test_no_network_not_even_the_hosts_loopback(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[object] = []
    listener.settimeout(5)

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        result = run(tmp_path / "p", f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                print("connected")
            except OSError as exc:
                print("refused", type(exc).__name__)
        """)
    finally:
        listener.close()
        thread.join(6)
    assert result.ok, result.stderr
    assert result.stdout.startswith("refused") and not accepted


def test_writes_stay_in_the_project_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    venv_site = Path(sys.prefix) / "hearth-sandbox-probe.pth"
    result = run(tmp_path / "p", f"""
        import os
        verdicts = []
        for target in ({str(outside / "planted.txt")!r}, {str(venv_site)!r}, os.path.expanduser("~/.bashrc-probe"),
                       "inside.txt"):
            try:
                with open(target, "w") as f:
                    f.write("x")
                verdicts.append("written")
            except OSError as exc:
                verdicts.append(type(exc).__name__)
        print(" ".join(verdicts))
    """)
    assert result.ok, result.stderr
    assert not (outside / "planted.txt").exists()  # /tmp inside is its own
    assert not venv_site.exists()
    assert result.stdout.split()[1] in ("OSError", "PermissionError")  # the venv is read-only
    assert (tmp_path / "p" / "inside.txt").read_text() == "x"


def test_a_child_in_its_own_session_and_environment_dies_with_the_run(tmp_path: Path) -> None:
    project = tmp_path / "p"
    result = run(project, """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True, env={},
                         cwd="/")
        print("started")
    """)
    assert result.ok, result.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        survivors = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid) == "time.sleep(600)"]
        if not survivors:
            break
        time.sleep(0.05)
    assert not survivors


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode(errors="replace").split("; ")[-1]
    except (OSError, IndexError):
        return ""


def test_the_limits_only_fallback_says_what_it_does_not_contain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from src.workflows.company.sandbox import sandbox_description

    monkeypatch.setenv(ENV_SANDBOX, SANDBOX_RLIMITS)
    reload_settings()
    result = run(tmp_path / "p", "print('hi')\n")
    assert result.ok and result.sandbox == SANDBOX_RLIMITS
    assert "could read your files and use the network" in sandbox_description(result.sandbox)
