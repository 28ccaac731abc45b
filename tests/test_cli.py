"""The command line, run as a user runs it: a real process, real model, real database in a temp folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.db.chats import ChatStore
from src.settings import PROJECT_ROOT

MAIN = str(PROJECT_ROOT / "main.py")


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, MAIN, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def test_one_message_streams_the_reply_and_saves_the_turn() -> None:
    first = run_cli("chat", "What is the capital of France?", "--max-tokens", "16", "--temperature", "0")
    assert first.returncode == 0, first.stderr
    assert "Paris" in first.stdout
    chat_id = re.search(r"--chat-id (\w+)", first.stderr).group(1)
    assert "tokens/s" in first.stderr

    second = run_cli("chat", "And of Italy?", "--chat-id", chat_id, "--max-tokens", "6", "--temperature", "0")
    assert second.returncode == 0, second.stderr
    path = ChatStore().current_path(chat_id)
    assert [m.role for m in path] == ["user", "assistant", "user", "assistant"]
    assert path[2].content == "And of Italy?"
    assert path[1].content == first.stdout.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("chat", "   "), "The message is empty"),
        (("chat", "hi", "--model", "qwen2.5-0.5b"), "python main.py models download qwen2.5-0.5b"),
        (("chat", "hi", "--model", "no-such-model"), "Unknown model 'no-such-model'"),
        (("chat", "hi", "--temperature", "-3"), "temperature must be between 0 and 5"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("args", [(), ("chat",), ("models",), ("models", "list")])
def test_help_everywhere(args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: main.py")


def test_bad_usage_exits_non_zero() -> None:
    result = run_cli("chat", "--max-tokens", "many", "hi")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_models_list_shows_status() -> None:
    result = run_cli("models", "list")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines["smollm2-135m"].endswith("embedded")
    assert "Qwen/Qwen2.5-0.5B-Instruct" in lines["qwen2.5-0.5b"]


def test_interactive_chat_ctrl_c_stops_the_reply_not_the_program(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, MAIN, "chat", "--chat-id", "tty", "--max-tokens", "300"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert process.stdin and process.stdout
        process.stdin.write("Write a very long story about a cat who sails around the world.\n")
        process.stdin.flush()
        # Wait until the reply is streaming, then press Ctrl+C.
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline and len(seen.partition("hearth> ")[2]) < 10:
            seen += process.stdout.read(1)
        assert "hearth> " in seen, seen
        process.send_signal(signal.SIGINT)
        process.stdin.write("/exit\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "[stopped]" in err
    assert "Traceback" not in err
    saved = ChatStore().current_path("tty")
    assert [m.role for m in saved] == ["user", "assistant"]
    assert saved[1].finish_reason == "cancelled"
    assert 0 < (saved[1].completion_tokens or 0) < 300
    shown = (seen + out).partition("hearth> ")[2]
    assert shown.strip().startswith(saved[1].content.strip()[:10])


def test_terminal_flag_opens_the_terminal_chat() -> None:
    result = run_cli("--terminal", stdin="Say hi.\n/exit\n", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Hearth terminal chat, model smollm2-135m" in result.stderr
    assert "hearth> " in result.stdout
    chats = ChatStore().list_chats()
    assert len(chats) == 1
    assert [m.role for m in ChatStore().current_path(chats[0].id)] == ["user", "assistant"]


def test_the_cli_runs_where_stderr_has_no_file_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from src.cli import main

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a notebook's stderr: the stack-dump handlers are skipped
    assert main(["models", "list"]) == 0
