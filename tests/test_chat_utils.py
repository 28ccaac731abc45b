"""The Python API (AIRequestHandlerWithHistory): the README snippet on the real embedded model, persistence,
errors that write nothing, and the OpenAI-compatible provider through the same handler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.db.chats import ChatStore
from src.db.llm_config_db import LLMConfigDB
from src.errors import (
    AuthenticationError,
    EmptyMessageError,
    KeyringUnavailableError,
    NothingToRegenerateError,
    ModelNotDownloadedError,
    ProviderError,
    UnknownModelError,
)
from src.utils.ChatUtils import AIRequestHandlerWithHistory
from src.utils.generation import FINISH_CANCELLED, FINISH_ERROR
from tests.fakes import ScriptedFakeModel
from tests.openai_test_server import OpenAITestServer

FEW_TOKENS = {"max_new_tokens": 12, "temperature": 0}


def readme_snippet(model: str) -> str:
    """The README's snippet, verbatim but for the model id."""
    from src.utils.ChatUtils import AIRequestHandlerWithHistory

    chat_handler = AIRequestHandlerWithHistory()
    from src.db.llm_config_db import LLMConfigDB

    db = LLMConfigDB()
    config_id = db.save_config(provider="local_model", model=model, base_url=None, api_key=None)
    db.set_current_config(config_id)
    chat_handler.refresh_config()
    chat_handler.params = chat_handler.params.updated(**FEW_TOKENS)  # few tokens: keep the suite fast
    response = chat_handler.get_single_response("test_chat", "你好，请介绍一下自己")
    return response


def test_readme_snippet_on_the_embedded_model() -> None:
    response = readme_snippet("smollm2-135m")
    assert isinstance(response, str) and response.strip()
    history = AIRequestHandlerWithHistory().get_history("test_chat")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "你好，请介绍一下自己"
    assert history[1]["content"] == response
    assert history[1]["model"] == "smollm2-135m"
    assert history[1]["completion_tokens"] and history[1]["completion_tokens"] <= 12


def test_readme_snippet_with_a_model_not_downloaded_names_the_download_command(models_dir: Path) -> None:
    with pytest.raises(ModelNotDownloadedError, match="python main.py models download qwen2.5-0.5b"):
        readme_snippet("qwen2.5-0.5b")
    assert ChatStore().get_chat("test_chat") is None


def test_readme_snippet_with_qwen_once_its_folder_is_there(models_dir: Path) -> None:
    # Stand-in for a finished download: a loadable model folder under the catalog id (files linked, not copied).
    qwen = models_dir / "qwen2.5-0.5b"
    qwen.mkdir()
    for file in (models_dir / "smollm2-135m").iterdir():
        os.symlink(file.resolve(), qwen / file.name)
    response = readme_snippet("qwen2.5-0.5b")
    assert response.strip()
    assert AIRequestHandlerWithHistory().get_history("test_chat")[-1]["model"] == "qwen2.5-0.5b"


def test_history_persists_across_handlers_and_reaches_the_model() -> None:
    first = AIRequestHandlerWithHistory()
    answer = first.get_single_response("persist", "My name is Ada. Reply with one word.", **FEW_TOKENS)
    second = AIRequestHandlerWithHistory()
    assert [m["content"] for m in second.get_history("persist")] == ["My name is Ada. Reply with one word.", answer]

    fake = ScriptedFakeModel(["Your name is Ada."])
    second.model = fake
    assert second.get_single_response("persist", "What is my name?") == "Your name is Ada."
    sent = [(m.role, m.content) for m in fake.calls[0]]
    assert sent == [("user", "My name is Ada. Reply with one word."), ("assistant", answer), ("user", "What is my name?")]
    assert len(AIRequestHandlerWithHistory().get_history("persist")) == 4


def test_streaming_response_is_saved_as_streamed() -> None:
    handler = AIRequestHandlerWithHistory()
    reply = handler.get_streaming_response("stream", "Say hello.", **FEW_TOKENS)
    pieces = list(reply)
    assert len(pieces) >= 2
    history = handler.get_history("stream")
    assert history[-1]["content"] == "".join(pieces)
    assert reply.message_id == history[-1]["id"]
    assert history[-1]["tokens_per_s"]


def test_stopping_a_real_reply_keeps_the_partial_text() -> None:
    handler = AIRequestHandlerWithHistory()
    reply = handler.get_streaming_response("stop", "Write a long poem about the sea.", max_new_tokens=200)
    first = next(reply)
    reply.cancel()
    rest = list(reply)
    assert reply.result is not None and reply.result.finish_reason == FINISH_CANCELLED
    saved = handler.get_history("stop")[-1]
    assert saved["role"] == "assistant"
    assert saved["content"] == first + "".join(rest)
    assert saved["finish_reason"] == FINISH_CANCELLED
    assert saved["completion_tokens"] < 200


def test_system_prompt_is_sent_first() -> None:
    handler = AIRequestHandlerWithHistory()
    handler.chats.get_or_create_chat("sys")
    handler.chats.set_system_prompt("sys", "You are a pirate.")
    handler.model = fake = ScriptedFakeModel(["Arr."])
    handler.get_single_response("sys", "Hi")
    assert [(m.role, m.content) for m in fake.calls[0]] == [("system", "You are a pirate."), ("user", "Hi")]
    assert [m["role"] for m in handler.get_history("sys")] == ["user", "assistant"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_input_is_refused_and_nothing_is_written(text: str) -> None:
    handler = AIRequestHandlerWithHistory()
    with pytest.raises(EmptyMessageError, match="empty"):
        handler.get_single_response("empty", text)
    assert ChatStore().get_chat("empty") is None


def test_unknown_model_is_a_clear_error_and_writes_nothing() -> None:
    db = LLMConfigDB()
    db.set_current_config(db.save_config(provider="local_model", model="no-such-model"))
    handler = AIRequestHandlerWithHistory()
    with pytest.raises(UnknownModelError, match="no-such-model"):
        handler.get_single_response("unknown", "hello")
    assert ChatStore().get_chat("unknown") is None


def test_a_failure_midway_keeps_the_user_message_and_the_partial_reply() -> None:
    handler = AIRequestHandlerWithHistory()
    handler.model = ScriptedFakeModel(["one two three four"], fail_after=2)
    with pytest.raises(ProviderError):
        handler.get_single_response("fail", "count")
    history = handler.get_history("fail")
    assert [(m["role"], m["content"], m["finish_reason"]) for m in history] == [
        ("user", "count", None),
        ("assistant", "one two", FINISH_ERROR),
    ]


def test_clear_history() -> None:
    handler = AIRequestHandlerWithHistory()
    handler.model = ScriptedFakeModel(["a", "b"])
    handler.get_single_response("clear", "1")
    handler.get_single_response("clear", "2")
    assert handler.clear_history("clear") == 4
    assert handler.get_history("clear") == []


def test_openai_compatible_provider_through_the_handler(memory_keyring: object) -> None:
    with OpenAITestServer(reply="Hello from the server", api_key="sk-test", models=("remote-model",)) as server:
        db = LLMConfigDB()
        config_id = db.save_config(
            provider="openai_compatible", model="remote-model", base_url=server.base_url, api_key="sk-test"
        )
        db.set_current_config(config_id)
        handler = AIRequestHandlerWithHistory()
        assert "".join(handler.get_streaming_response("remote", "hi", max_new_tokens=20)) == "Hello from the server"
        request = server.last_request()
        assert request.header("authorization") == "Bearer sk-test"
        assert request.body["messages"] == [{"role": "user", "content": "hi"}]
        assert handler.get_history("remote")[-1]["model"] == "remote-model"

        # A second turn sends the history; a wrong key is a clear error and the user's message is kept.
        db.update_config(config_id, api_key="sk-wrong")
        handler.refresh_config()
        with pytest.raises(AuthenticationError, match="401"):
            handler.get_single_response("remote", "again")
        assert server.last_request().body["messages"][:2] == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello from the server"},
        ]


def test_a_saved_key_without_a_keyring_says_how_to_fix_it(memory_keyring: object, no_keyring: None) -> None:
    # memory_keyring is installed first, then no_keyring replaces it: the key is saved, the keyring then vanishes.
    import keyring

    from tests.keyring_backends import InMemoryKeyring

    backend = InMemoryKeyring()
    keyring.set_keyring(backend)
    db = LLMConfigDB()
    db.set_current_config(
        db.save_config(provider="openai_compatible", model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-x")
    )
    import keyring.backends.fail

    keyring.set_keyring(keyring.backends.fail.Keyring())
    with pytest.raises(KeyringUnavailableError, match="HEARTH_API_KEY"):
        AIRequestHandlerWithHistory()


def test_regenerate_keeps_the_older_version() -> None:
    handler = AIRequestHandlerWithHistory()
    handler.model = fake = ScriptedFakeModel(["first answer", "second answer"])
    handler.get_single_response("regen", "question")
    reply = handler.regenerate_streaming_response("regen")
    assert "".join(reply) == "second answer"
    assert [(m.role, m.content) for m in fake.calls[1]] == [("user", "question")]
    history = handler.get_history("regen")
    assert [(m["role"], m["content"]) for m in history] == [("user", "question"), ("assistant", "second answer")]
    versions = [m for m in ChatStore().current_path("regen")]
    assert versions[-1].parent_id == versions[0].id
    # The first answer is still stored, as a sibling of the new one.
    from src.db.models import Message

    assert sorted(m.content for m in Message.select().where(Message.parent == versions[0].id)) == [
        "first answer",
        "second answer",
    ]


def test_regenerate_on_the_real_model_and_with_nothing_to_regenerate() -> None:
    handler = AIRequestHandlerWithHistory()
    with pytest.raises(NothingToRegenerateError):
        handler.regenerate_streaming_response("nothing")
    handler.get_single_response("real-regen", "Name a color.", **FEW_TOKENS)
    again = handler.regenerate_streaming_response("real-regen", max_new_tokens=8, temperature=1.0, seed=3).collect()
    assert again.text and handler.get_history("real-regen")[-1]["content"] == again.text
    assert len(handler.get_history("real-regen")) == 2
