"""The agent company from the command line on the real embedded model (small limits), then replay and memorize."""

from __future__ import annotations

import os
import subprocess
import sys

from src.settings import PROJECT_ROOT, get_settings


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "main.py"), "company", *args],
        capture_output=True, text=True, timeout=timeout, env=os.environ, check=False,
    )


def test_a_real_run_with_the_embedded_model_leaves_a_complete_folder() -> None:
    result = cli("--task", "a program that prints hello world", "--name", "Hello", "--max-turns", "1", "--max-tokens", "48")
    assert result.returncode == 0, result.stderr[-2000:]
    # The generated program's own tracebacks are reported on stderr (the test cycle shows them); none of Hearth's.
    assert f'File "{PROJECT_ROOT}' not in result.stderr, result.stderr[-2000:]
    [folder] = list(get_settings().warehouse_dir.iterdir())
    assert folder.name.startswith("Hello_DefaultOrganization_")
    names = {p.name for p in folder.iterdir()}
    assert {"Hello.prompt", "meta.txt", "ChatChainConfig.json", "PhaseConfig.json", "RoleConfig.json", "events.jsonl"} <= names
    assert any(name.endswith(".log") for name in names)
    meta = (folder / "meta.txt").read_text()
    assert "Task:" in meta and "a program that prints hello world" in meta and "Config:" in meta
    log = next(folder.glob("*.log")).read_text()
    assert "Programmer" in log and "Summary" in log
    assert "== DemandAnalysis ==" in result.stdout and "[Chief" in result.stdout

    replay = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "main.py"), "company", "replay", str(next(folder.glob("*.log")))],
        capture_output=True, text=True, env=os.environ, check=False,
    )
    assert replay.returncode == 0 and "Task: a program that prints hello world" in replay.stdout
    assert "== Coding ==" in replay.stdout
    memorized = cli("memorize", str(get_settings().warehouse_dir))
    assert memorized.returncode == 0 and "from 1 run(s)" in memorized.stdout


def test_cli_errors_are_one_line() -> None:
    for args, message in [((), "--task is required"), (("--task", "x", "--config", "NoSuchConfig"), "NoSuchConfig"),
                          (("replay", "/nonexistent/run.log"), "No company run found")]:
        result = cli(*args, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_stops_the_company_and_leaves_a_consistent_folder() -> None:
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "main.py"), "company", "--task", "a snake game", "--name", "Snake",
         "--max-turns", "1", "--max-tokens", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
    )
    try:
        assert process.stdout is not None
        seen = ""
        deadline = time.monotonic() + 120
        while "== LanguageChoose ==" not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "stopping the company" in err and "Traceback" not in err
    [folder] = list(get_settings().warehouse_dir.iterdir())
    events = (folder / "events.jsonl").read_text().splitlines()
    assert '"kind": "summary"' in events[-1], "the run ended with its summary"
    assert "The run was cancelled" in next(folder.glob("*.log")).read_text()
