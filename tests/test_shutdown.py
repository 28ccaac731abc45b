"""The process ends in a defined order on every exit path (src/utils/shutdown.py), never in a native crash, and a
reply stopped by the exit is in the history first.

Before this order existed, a process that ended while llama.cpp was still computing died in ``exit()``: SIGSEGV
(llama.cpp's task loop decoded the cancelled reply's last token while the C++ statics it uses were destroyed) or
abort with "FATAL: exception not rethrown" (the daemon thread inside llama.cpp's callback was killed); with
transformers, "terminate called without an active exception", and the partial reply was lost. The exits here are
real processes on the real embedded model, on both backends.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.db.chats import ChatStore
from src.settings import BACKEND_LLAMACPP, BACKEND_TRANSFORMERS, ENV_BACKEND, PROJECT_ROOT
from src.utils.llamacpp_backend import llamacpp_available

MAIN = str(PROJECT_ROOT / "main.py")
LONG_TASK = "Write a very long story about a cat who sails around the world."
CRASH_SIGNS = ("FATAL", "Segmentation", "terminate called", "Traceback", "Fatal Python error")

needs_llamacpp = pytest.mark.skipif(not llamacpp_available(), reason="xllamacpp is not installed")
BOTH_BACKENDS = [pytest.param(BACKEND_LLAMACPP, marks=needs_llamacpp), BACKEND_TRANSFORMERS]

# The Python API's user ends the program while a reply is still streaming in another thread: the interpreter
# exits with llama.cpp (or torch) mid-token.
EXIT_WHILE_STREAMING = f"""
import sys
import threading
from src.utils.ChatUtils import AIRequestHandlerWithHistory

reply = AIRequestHandlerWithHistory().get_streaming_response(
    sys.argv[1], {LONG_TASK!r}, max_new_tokens=400, temperature=0
)
streaming = threading.Event()

def read():
    for number, _ in enumerate(reply):
        if number == 3:
            streaming.set()

threading.Thread(target=read, daemon=True).start()
assert streaming.wait(120), "the reply never started"
print("streaming", flush=True)
"""


def backend_env(backend: str) -> dict[str, str]:
    return {**os.environ, ENV_BACKEND: backend}


def assert_no_crash(returncode: int, stderr: str) -> None:
    assert returncode == 0, f"exit code {returncode}:\n{stderr[-3000:]}"
    for sign in CRASH_SIGNS:
        assert sign not in stderr, stderr[-3000:]


def assert_stopped_reply_saved(chat_id: str, replies: int = 1) -> None:
    saved = ChatStore().current_path(chat_id)
    assert [m.role for m in saved] == ["user", "assistant"] * replies
    for reply in saved[1::2]:
        assert reply.finish_reason == "cancelled"
        assert reply.content.strip() and 0 < (reply.completion_tokens or 0) < 400


@pytest.mark.parametrize(("backend", "rounds"), [
    pytest.param(BACKEND_LLAMACPP, 5, marks=needs_llamacpp),  # the old exit crashed in every one of 6 rounds
    (BACKEND_TRANSFORMERS, 1),
])
def test_the_program_ends_cleanly_while_a_reply_streams_and_the_partial_reply_is_saved(
    backend: str, rounds: int
) -> None:
    for number in range(rounds):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_STREAMING, f"exit-{number}"], cwd=PROJECT_ROOT,
            env=backend_env(backend), capture_output=True, text=True, timeout=180,
        )
        assert "streaming" in done.stdout, done.stderr[-3000:]
        assert_no_crash(done.returncode, done.stderr)
        assert_stopped_reply_saved(f"exit-{number}")


def _read_until(stream, marker: str, *, count: int = 1, after: int = 0, timeout: float = 90) -> str:  # type: ignore[no-untyped-def]
    """Read one character at a time until ``marker`` has appeared ``count`` times and ``after`` more characters
    followed its last appearance."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seen.count(marker) >= count and len(seen.rpartition(marker)[2]) >= after:
            return seen
        char = stream.read(1)
        if not char:
            break
        seen += char
    raise AssertionError(f"{marker!r} x{count} did not appear; got: {seen[-2000:]!r}")


def _interactive_chat(backend: str, chat_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, MAIN, "chat", "--chat-id", chat_id, "--max-tokens", "300", "--temperature", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=backend_env(backend),
    )


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_ctrl_c_then_exit_many_times_in_the_terminal_chat(backend: str) -> None:
    rounds = 4
    process = _interactive_chat(backend, "stress")
    try:
        assert process.stdin and process.stdout
        for number in range(1, rounds + 1):
            process.stdin.write(f"{LONG_TASK} (part {number})\n")
            process.stdin.flush()
            _read_until(process.stdout, "hearth> ", count=1, after=10)  # the reply is streaming
            process.send_signal(signal.SIGINT)
            _read_until(process.stdout, "[stopped]")
        process.stdin.write("/exit\n")
        process.stdin.flush()
        rest, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert_no_crash(process.returncode, rest)
    assert_stopped_reply_saved("stress", replies=rounds)


@needs_llamacpp
def test_a_stopped_reply_is_saved_before_stopped_is_shown(tmp_path: Path) -> None:
    """Killed (SIGKILL, no clean-up at all) the moment "[stopped]" is printed: the partial reply is already saved."""
    process = _interactive_chat(BACKEND_LLAMACPP, "killed")
    try:
        assert process.stdin and process.stdout
        process.stdin.write(LONG_TASK + "\n")
        process.stdin.flush()
        _read_until(process.stdout, "hearth> ", after=10)
        process.send_signal(signal.SIGINT)
        _read_until(process.stdout, "[stopped]")
        process.kill()
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert_stopped_reply_saved("killed")


@needs_llamacpp
def test_a_cancelled_llamacpp_reply_has_stopped_computing_when_it_ends() -> None:
    from src.utils.LocalLLMEngine import LocalLLMEngine

    engine = LocalLLMEngine(backend=BACKEND_LLAMACPP)
    try:
        for _ in range(3):
            stream = engine.stream([{"role": "user", "content": LONG_TASK}], max_new_tokens=200, temperature=0)
            for number, _ in enumerate(stream):
                if number == 4:
                    break
            stream.close()
            backend = engine._backend
            assert backend is not None
            decoded = backend.counters()["n_decode_total"]
            # llama.cpp's own loop used to go on decoding for 20-60 ms after the engine had called the reply over.
            time.sleep(0.2)
            assert backend.counters()["n_decode_total"] == decoded
    finally:
        engine.unload_model()


SHUTDOWN_FREES_THE_MODEL = """
import os
from src.errors import EngineStoppedError
from src.utils import shutdown
from src.utils.LocalLLMEngine import LocalLLMEngine

def threads():
    return len(os.listdir("/proc/self/task"))

engine = LocalLLMEngine.shared()
engine.load_model()
engine.complete([{"role": "user", "content": "Hi"}], max_new_tokens=4)
loaded = threads()
shutdown.shutdown()
print("loaded", engine.loaded, "threads", loaded, threads(), flush=True)
try:
    engine.complete([{"role": "user", "content": "Hi"}], max_new_tokens=4)
except EngineStoppedError as exc:
    print("refused:", exc, flush=True)
"""


@needs_llamacpp
def test_shutdown_unloads_the_model_and_joins_llamacpps_threads() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_FREES_THE_MODEL], cwd=PROJECT_ROOT, env=backend_env(BACKEND_LLAMACPP),
        capture_output=True, text=True, timeout=120,
    )
    assert_no_crash(done.returncode, done.stderr)
    match = re.search(r"loaded (\S+) threads (\d+) (\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert match.group(1) == "None"
    # llama.cpp's task loop, HTTP listener and its request pool are gone (OpenMP's idle pool may stay).
    assert int(match.group(3)) <= int(match.group(2)) - 3
    assert "refused: Hearth is shutting down" in done.stdout


def _sse_request(port: int) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": LONG_TASK}], "max_tokens": 2000,
            "temperature": 0, "stream": True}
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return response


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_the_server_stops_cleanly_on_sigterm_while_streaming(backend: str) -> None:
    process = subprocess.Popen(
        [sys.executable, MAIN, "serve", "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=backend_env(backend),
    )
    try:
        assert process.stderr
        announced = _read_until(process.stderr, "Ctrl+C stops the server.", timeout=120)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", announced).group(1))  # type: ignore[union-attr]
        response = _sse_request(port)
        chunks = 0
        while chunks < 5:  # the reply is streaming
            chunks += response.readline().startswith(b"data: ")
        process.send_signal(signal.SIGTERM)  # the client keeps reading: the server must end the stream itself
        events = [line for line in iter(response.readline, b"") if line.startswith(b"data: ")]
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert_no_crash(process.returncode, rest)
    assert b"server_shutting_down" in events[-1]  # the client is told why its reply ended


ORDER_OF_STEPS = """
import threading, time
from src.utils import shutdown

events = []
inside = threading.Event()

def careful_work():
    stop = threading.Event()
    with shutdown.stops_at_shutdown(stop.set):
        inside.set()
        stop.wait(30)
        events.append("cancelled")
        time.sleep(0.3)  # e.g. the partial reply being written
        events.append("saved")

def stubborn_work():
    with shutdown.stops_at_shutdown(lambda: events.append("asked the stubborn one")):
        time.sleep(30)

from src.utils.generation import TextStream

class Abandoned(TextStream):
    def cancel(self):
        events.append("cancelled an abandoned stream")
        super().cancel()

def pieces():
    yield "a"
    yield "b"

abandoned = Abandoned().start(pieces())
next(abandoned)  # read once, then dropped without close(): only the cycle collector can free it
del abandoned
threading.Thread(target=careful_work, daemon=True).start()
inside.wait(10)
shutdown.on_shutdown(lambda deadline: events.append("released"))
if STUBBORN:
    threading.Thread(target=stubborn_work, daemon=True).start()
started = time.monotonic()
shutdown.shutdown(deadline_s=2.0)
took = time.monotonic() - started
with shutdown.stops_at_shutdown(lambda: events.append("late work cancelled at once")):
    pass
print(events, round(took, 1), shutdown.is_shutting_down())
"""


@pytest.mark.parametrize("stubborn", [False, True])
def test_shutdown_cancels_and_waits_for_work_then_releases_within_its_deadline(stubborn: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"STUBBORN = {stubborn}\n" + ORDER_OF_STEPS], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    events_text, took, flag = done.stdout.strip().rsplit(" ", 2)
    events = ast.literal_eval(events_text)
    assert flag == "True"
    assert "cancelled an abandoned stream" not in events
    assert events.index("cancelled") < events.index("saved") < events.index("released")
    assert events[-1] == "late work cancelled at once"
    if stubborn:
        assert "asked the stubborn one" in events
        assert float(took) < 10  # it waited until its deadline, not for the stubborn work's 30 s
        assert "did not stop in time" in done.stderr
    else:
        assert float(took) < 10
