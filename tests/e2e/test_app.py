"""Hearth's GUI in a real browser: the app is started with ``main.py --web`` on a free port and a temporary data
folder, and driven in headless Chromium. Replies come from the real embedded model (few tokens)."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from src.db.chats import ChatStore
from src.db.database import get_app_setting, get_database
from src.db.models import Message
from src.settings import PROJECT_ROOT
from src.utils.catalog import resolve_local_model
from src.utils.ModelManager import STATUS_PARTIAL, STATUS_READY, ModelManager
from tests.e2e.harness import AppServer, E2EError, free_port, open_app, press_enter, type_into, wait_for_text
from tests.mock_hub import Faults, MockHub
from tests.openai_test_server import OpenAITestServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
# --verbose: a failed test's server log says what the app was doing (model loads, company phases, timings).
HEARTH = [sys.executable, str(PROJECT_ROOT / "main.py"), "--verbose", "--web", "--port", "{port}"]


def assistant_messages(chat_id: str | None = None) -> list[Any]:
    """The replies the app saved, read from its database (the test shares the app's data folder)."""
    query = Message.select().where(Message.role == "assistant").order_by(Message.id)
    return [m for m in query.execute(get_database()) if chat_id is None or m.chat_id == chat_id]


def wait_until(condition: Any, timeout: float = 60, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise E2EError(f"timed out waiting for {message}")


def send(page: Any, text: str) -> None:
    type_into(page, "Message", text)
    press_enter(page)


def send_and_wait(page: Any, text: str, stop: str = "Stop", send_label: str = "Send") -> None:
    """Send, see Send turn into Stop while the reply streams, and wait until it is Send again."""
    send(page, text)
    page.get_by_role("button", name=stop, exact=True).wait_for(timeout=30_000)
    page.get_by_role("button", name=send_label, exact=True).wait_for(timeout=90_000)


def wait_for_words(page: Any, text: str, timeout: float = 20) -> Any:
    """Like wait_for_text, but also finds text that Flutter merged into a container's accessible label (the Texts
    of a card become one aria-label)."""
    locator = page.get_by_text(text).or_(page.locator(f"[aria-label*={text!r}]")).first
    locator.wait_for(state="visible", timeout=timeout * 1000)
    return locator


def go_to(page: Any, destination: str) -> None:
    """Click a navigation rail destination (exposed as a button named "<label> Tab i of n")."""
    page.get_by_role("button", name=re.compile(rf"^{destination}\s+Tab")).click()


def save_screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)
    page.screenshot(path=str(SCREENSHOTS / name))


@pytest.fixture
def memory_keyring_env() -> dict[str, str]:
    """The app runs in its own process: give it an in-memory keyring (headless Linux has none)."""
    return {"PYTHON_KEYRING_BACKEND": "tests.keyring_backends.InMemoryKeyring"}


@pytest.fixture
def hearth(app_page: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HEARTH_MAX_NEW_TOKENS", "24")
    return lambda **kwargs: app_page(HEARTH, **kwargs)


def test_send_a_message_and_read_the_streamed_reply(hearth: Any) -> None:
    page = hearth()
    send_and_wait(page, "What is the capital of France?")  # Send becomes Stop while it streams
    [reply] = wait_until(assistant_messages, message="the saved reply")
    assert reply.content.strip() and reply.model == "smollm2-135m"
    wait_for_text(page, reply.content.strip().split("\n")[0][:20], timeout=10)
    wait_for_text(page, "tokens/s", timeout=10)  # stats and the model name under the reply
    wait_for_text(page, "smollm2-135m ·", timeout=10)
    assert page.get_by_role("button", name="Send").is_disabled(), "an empty input cannot be sent"
    save_screenshot(page, "chat.png")


def test_stop_a_long_reply(hearth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_MAX_NEW_TOKENS", "400")
    page = hearth()
    send(page, "Write a very long story about a dragon who learns to bake bread.")
    stop = page.get_by_role("button", name="Stop")
    stop.wait_for(timeout=30_000)
    wait_until(lambda: streamed_words(page), 60, "the first words of the reply")
    page.wait_for_timeout(1000)
    stop.click()
    page.get_by_role("button", name="Send", exact=True).wait_for(timeout=10_000)
    [reply] = wait_until(assistant_messages, message="the partial reply")
    assert reply.finish_reason == "cancelled"
    assert 0 < reply.completion_tokens < 400, "Stop must halt the engine, not only the display"
    wait_for_text(page, "stopped", timeout=10)


def streamed_words(page: Any) -> str:
    """The words of the reply being streamed (the placeholder "…" is replaced by them once the model streams)."""
    text = page.evaluate("() => document.body.textContent")
    # The live reply sits between its "Assistant" label and the Stop button in the accessibility text.
    return text.rsplit("Assistant", 1)[-1].split("Stop", 1)[0].replace("…", "").strip() if "Assistant" in text else ""


def test_closing_the_app_while_a_reply_streams_keeps_the_partial_reply(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (what the session manager sends at logout; closing the window ends ft.run the same way): the model
    stops, the partial reply is saved, the model is freed, and the process exits 0 instead of crashing in
    llama.cpp's teardown (src/utils/shutdown.py)."""
    monkeypatch.setenv("HEARTH_MAX_NEW_TOKENS", "400")
    server = AppServer(HEARTH, log_path=tmp_path / "server.log").start()
    page = None
    try:
        page = open_app(browser, server.url)
        send(page, "Write a very long story about a dragon who learns to bake bread.")
        page.get_by_role("button", name="Stop").wait_for(timeout=30_000)
        wait_until(lambda: streamed_words(page), 60, "the first words of the reply")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
    finally:
        if page is not None:
            page.context.close()
        server.stop()
    log = server.log_text()
    assert code == 0, log[-3000:]
    for crash in ("FATAL", "Segmentation fault", "terminate called", "Fatal Python error"):
        assert crash not in log, log[-3000:]
    [reply] = assistant_messages()
    assert reply.finish_reason == "cancelled" and reply.content.strip()
    assert 0 < reply.completion_tokens < 400


def test_regenerate_keeps_the_old_version(hearth: Any) -> None:
    page = hearth()
    send_and_wait(page, "Name a fruit.")
    first = wait_until(assistant_messages, message="the first reply")[0]
    page.get_by_role("button", name="Regenerate").click()
    replies = wait_until(lambda: len(assistant_messages()) == 2 and assistant_messages(), message="a second version")
    assert replies[0].parent_id == replies[1].parent_id == first.parent_id
    page.get_by_role("button", name="Regenerate").wait_for(timeout=60_000)
    [current] = [m for m in ChatStore().current_path(first.chat_id) if m.role == "assistant"]
    assert current.id == replies[1].id


def test_conversations_new_rename_search_delete(hearth: Any) -> None:
    page = hearth()
    send_and_wait(page, "Hello there, first chat")
    page.get_by_role("button", name="New chat").click()
    wait_for_text(page, "Ask anything")
    send_and_wait(page, "Second chat about llamas")
    wait_until(lambda: len(ChatStore().list_chats()) == 2, message="two chats")

    page.get_by_label("Rename", exact=True).click()
    type_into(page, "Title", "Llama talk")
    page.get_by_role("button", name="Save", exact=True).click()
    wait_until(lambda: any(c.title == "Llama talk" for c in ChatStore().list_chats()), message="the new title")
    wait_for_text(page, "Llama talk")

    type_into(page, "Search chats", "first chat")
    wait_for_text(page, "Hello there, first chat")
    page.wait_for_timeout(500)
    assert page.get_by_text("Llama talk").count() <= 1  # only the header still shows it, not the list
    type_into(page, "Search chats", "llamas")  # content search finds the renamed chat
    wait_for_text(page, "Llama talk")

    page.get_by_label("Delete", exact=True).click()
    dialog = page.get_by_role("alertdialog")
    dialog.get_by_role("button", name="Cancel").click()
    assert len(ChatStore().list_chats()) == 2, "cancel keeps the chat"
    page.get_by_label("Delete", exact=True).click()
    page.get_by_role("alertdialog").get_by_role("button", name="Delete", exact=True).click()
    wait_until(lambda: [c.title for c in ChatStore().list_chats()] == ["Hello there, first chat"], message="deletion")


def test_last_conversation_reopens_and_chinese_ui(hearth: Any) -> None:
    page = hearth()
    send_and_wait(page, "Remember this conversation")
    go_to(page, "Settings")
    page.get_by_role("button", name="Theme").click()
    page.get_by_role("button", name="Dark", exact=True).click()
    wait_until(lambda: get_app_setting("theme") == "dark", 10, "the dark theme setting")
    page.get_by_role("button", name="Language").click()
    page.get_by_role("button", name="中文", exact=True).click()
    wait_for_words(page, "语言模型")
    go_to(page, "聊天")
    wait_for_text(page, "新建对话")
    page.get_by_role("button", name="发送").wait_for()
    wait_for_text(page, "Remember this conversation")
    # flet-web ships no CJK font: the bundled one must be served, or Chinese renders as boxes (checked by eye in
    # docs/screenshots/chat_zh.png too).
    font = page.context.request.get(page.url.rstrip("/") + "/fonts/WenQuanYiMicroHei.ttf", timeout=10_000)
    assert font.status == 200 and len(font.body()) > 4_000_000  # with the page's cookie: the key is needed
    page.wait_for_timeout(1000)
    save_screenshot(page, "chat_zh.png")

    # A new tab (like restarting the app) reopens the last conversation, in Chinese.
    again = open_app(page.context.browser, page.app_url)
    try:
        wait_for_text(again, "Remember this conversation")
        wait_for_text(again, "新建对话")
    finally:
        # Its own context, which the fixture does not know: left open, its reconnecting page would keep rendering
        # in software for the rest of the session (more than a core: the evolution tests then ran out of time).
        again.context.close()


def test_openai_compatible_provider(hearth: Any, memory_keyring_env: dict[str, str]) -> None:
    with OpenAITestServer(reply="Hello from the local server", api_key="sk-e2e", models=("remote-model",)) as server:
        page = hearth(env=memory_keyring_env)
        go_to(page, "Settings")
        page.get_by_role("radio", name="OpenAI-compatible server").click()
        type_into(page, "Server URL", server.base_url)
        type_into(page, "Model name", "remote-model")
        type_into(page, "API key (stored in the OS keyring)", "sk-e2e")
        page.get_by_role("button", name="Test connection").click()
        wait_for_words(page, "Connected to", timeout=15)
        page.get_by_role("button", name="Save and use").click()
        wait_for_words(page, "the chat now uses remote-model", timeout=10)
        save_screenshot(page, "settings_server.png")
        go_to(page, "Chat")
        send(page, "hi server")
        wait_for_text(page, "Hello from the local server", timeout=30)
        assert server.last_request().header("authorization") == "Bearer sk-e2e"
        assert server.last_request().body["model"] == "remote-model"
        [reply] = wait_until(assistant_messages, message="the saved remote reply")
        assert reply.model == "remote-model"


def test_download_pause_restart_resume_and_chat(app_page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_MAX_NEW_TOKENS", "12")
    _, embedded = resolve_local_model("smollm2-135m")
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm2-135m").symlink_to(embedded, target_is_directory=True)
    monkeypatch.setenv("HEARTH_MODELS_DIR", str(models))
    from src.settings import reload_settings

    reload_settings()
    with MockHub() as hub:
        hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", {p.name: p.resolve() for p in embedded.iterdir() if p.is_file()})
        hub.faults = Faults(throttle_bytes_per_s=24 << 20, path_glob="*model.safetensors", times=None)
        ModelManager().set_endpoints([hub.endpoint])  # only the mock Hub: no request may leave this machine

        page = app_page(HEARTH)
        go_to(page, "Settings")
        card_download = page.get_by_role("button", name="Download").first
        card_download.click()
        wait_for_words(page, "Downloading", timeout=20)
        wait_for_words(page, "via 127.0.0.1", timeout=20)
        page.wait_for_timeout(1500)
        save_screenshot(page, "settings_download.png")
        page.get_by_role("button", name="Pause").click()
        wait_until(lambda: ModelManager().info("qwen2.5-0.5b").status == STATUS_PARTIAL, 15, "a paused download")
        paused = ModelManager().info("qwen2.5-0.5b").fraction
        assert 0 < paused < 1

        page.close()  # restart the app: stop its server, start a new one on the same data
        second = app_page(HEARTH)
        go_to(second, "Settings")
        wait_for_words(second, f"Paused at {paused * 100:.0f}%", timeout=15)
        hub.clear_faults()
        hub.clear_log()
        second.get_by_role("button", name="Resume").click()
        wait_until(lambda: ModelManager().info("qwen2.5-0.5b").status == STATUS_READY, 120, "the finished download")
        resumed = hub.requests_for("*model.safetensors", method="GET")
        assert resumed and resumed[0].range_header and resumed[0].range_header != "bytes=0-"

        second.get_by_role("button", name="Use", exact=True).first.click()
        wait_for_words(second, "the chat now uses qwen2.5-0.5b", timeout=15)
        go_to(second, "Chat")
        send(second, "What is the capital of France?")
        reply = wait_until(assistant_messages, 90, "a reply from the downloaded model")[0]
        assert reply.model == "qwen2.5-0.5b" and reply.content.strip()


def test_desktop_mode_falls_back_to_the_browser_when_the_client_cannot_be_fetched(
    app_page: Any, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/flet-linux.tar.gz"  # a mirror that refuses connections
    env = {"FLET_CLIENT_URL": dead, "HOME": str(tmp_path), "HEARTH_MAX_NEW_TOKENS": "8"}
    page = app_page([sys.executable, str(PROJECT_ROOT / "main.py"), "--port", "{port}"], env=env)
    wait_for_text(page, "New chat")
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "desktop window cannot open" in log and dead in log and "FLET_CLIENT_URL" in log


def test_errors_are_banners_and_nothing_is_lost(hearth: Any) -> None:
    from src.db.llm_config_db import LLMConfigDB

    db = LLMConfigDB()  # a server that is not running (a port that was just free)
    db.set_current_config(
        db.save_config(provider="openai_compatible", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1")
    )
    page = hearth()
    send(page, "Is anybody there?")
    wait_for_words(page, "Cannot reach the server", timeout=30)
    page.get_by_role("button", name="Send", exact=True).wait_for(timeout=10_000)
    assert [m.content for m in ChatStore().current_path(ChatStore().list_chats()[0].id)] == ["Is anybody there?"]
    page.get_by_role("button", name="Dismiss").click()

    # Saving an API key where no keyring exists (headless Linux) explains how to fix it; nothing is stored.
    go_to(page, "Settings")
    page.get_by_role("radio", name="OpenAI-compatible server").click()
    type_into(page, "Server URL", "http://127.0.0.1:9/v1")
    type_into(page, "Model name", "other-model")
    type_into(page, "API key (stored in the OS keyring)", "sk-secret")
    page.get_by_role("button", name="Save and use").click()
    wait_for_words(page, "No OS keyring", timeout=10)
    assert not [c for c in db.list_configs() if c.model == "other-model"]


def test_build_command_runs_the_agent_company_in_the_chat(hearth: Any) -> None:
    from src.settings import get_settings

    page = hearth()  # HEARTH_MAX_NEW_TOKENS=24 also caps each of the company's model calls
    send(page, "/build a program that prints hello")
    wait_for_words(page, "The company is working on", timeout=20)
    wait_for_words(page, "DemandAnalysis", timeout=60)
    page.get_by_role("button", name="Stop", exact=True).wait_for(timeout=10_000)
    wait_for_words(page, "Project ready", timeout=240)
    page.get_by_role("button", name="View manual").wait_for(timeout=10_000)
    save_screenshot(page, "company.png")
    [folder] = list(get_settings().warehouse_dir.iterdir())
    assert (folder / "meta.txt").is_file() and (folder / "events.jsonl").is_file()
    chat = ChatStore().list_chats()[0]
    assert [m.role for m in ChatStore().current_path(chat.id)] == ["user", "assistant"]
    assert ChatStore().current_path(chat.id)[1].model == "agent-company"

    # A past run replays in a chat view.
    page.get_by_role("button", name="New chat").click()
    wait_for_text(page, "Ask anything")
    send(page, f"/replay {folder}")
    wait_for_words(page, "DemandAnalysis", timeout=20)
    wait_for_words(page, "Chief Executive Officer", timeout=10)


def test_build_in_human_mode_takes_the_reviewers_comments_from_the_chat(hearth: Any) -> None:
    page = hearth()
    send(page, "/build --config Human a program that prints hello")
    reviewer = "Your review comments (type end to finish)"
    page.get_by_role("textbox", name=reviewer, exact=True).wait_for(timeout=240_000)
    type_into(page, reviewer, "end")
    press_enter(page)
    wait_for_words(page, "Project ready", timeout=240)


def test_evolve_command_shows_the_world_generations_and_the_fitness_plot(hearth: Any) -> None:
    from src.settings import get_settings

    page = hearth()
    send(page, "/evolve 0 agents")  # a setting out of range: a banner, nothing saved
    wait_for_words(page, "NUM_AGENTS", timeout=20)
    assert ChatStore().list_chats() == []

    send(page, "/evolve 2 agents 2 generations 6 steps size 6")
    wait_for_words(page, "Evolution: 2 agents, 2 generations of 6 steps", timeout=20)
    page.get_by_role("button", name="Stop", exact=True).wait_for(timeout=10_000)
    wait_for_words(page, "Generation 1:", timeout=180)
    wait_for_words(page, "Evolution finished", timeout=180)
    page.get_by_role("img", name="fitness plot").wait_for(timeout=10_000)
    save_screenshot(page, "evolution.png")
    chat = ChatStore().list_chats()[0]
    reply = ChatStore().current_path(chat.id)[-1]
    assert reply.model == "evolution" and "Generation 2:" in reply.content
    [run_dir] = list(get_settings().evolution_dir.iterdir())
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3  # header + 2 generations

    # Stop from the chat: the run ends after the current step and says how to resume.
    send(page, "/evolve 2 agents 3 generations 400 steps size 6")
    wait_for_words(page, "Generation 1/3", timeout=120)
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_for_words(page, "Evolution stopped", timeout=60)
    page.get_by_role("button", name="Send", exact=True).wait_for(timeout=10_000)


def test_settings_switch_serves_the_local_models_through_the_openai_api(hearth: Any) -> None:
    import httpx

    page = hearth()
    go_to(page, "Settings")
    wait_for_words(page, "Local API server (OpenAI-compatible)")
    port = free_port()
    type_into(page, "Port", str(port))
    page.get_by_role("switch", name="Serve local models on this computer").click()
    wait_for_words(page, f"Serving at http://127.0.0.1:{port}/v1", timeout=60)
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    assert "smollm2-135m" in [m["id"] for m in models["data"]]
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    page.get_by_role("switch", name="Serve local models on this computer").click()
    wait_for_words(page, "Not serving", timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)

    # The engine that runs a model is chosen per model; the choice is stored and used at the next load.
    from src.utils.backends import get_model_backend

    engine = page.get_by_role("button", name="Engine", exact=True)
    engine.scroll_into_view_if_needed()
    engine.click()
    page.get_by_role("button", name="transformers", exact=True).click()
    wait_until(lambda: get_model_backend("smollm2-135m") == "transformers", 10, "the stored engine choice")
