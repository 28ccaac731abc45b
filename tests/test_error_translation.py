"""Errors keep their fields, and the GUI shows each translated one in the user's language (src/ui/i18n.py); the CLI
and the logs keep the English message."""

from __future__ import annotations

import inspect
import re

import pytest

from src import errors
from src.errors import HearthError, ServerUnreachableError
from src.ui.i18n import LANGUAGES, STRINGS, translate_error

SAMPLES = {
    "base_url": "http://127.0.0.1:9/v1", "detail": "connection refused", "seconds": 5.0, "model": "qwen-x",
    "model_id": "qwen2.5-0.5b", "folder": "/models/qwen", "repo": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main",
    "endpoint": "https://hf-mirror.com", "status": 403, "path": "model.safetensors", "problems": ["timed out"],
    "cause": "connection reset", "attempts": 3, "expected": "ab" * 32, "actual": "cd" * 32, "needed": 900,
    "limit": 512, "file": "model.safetensors", "reason": "a size lie", "restarts": 2, "known": ["smollm2-135m"],
}  # fmt: skip


def every_error_class() -> dict[str, type[HearthError]]:
    found, queue = {}, [HearthError]
    while queue:
        cls = queue.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == errors.__name__:
                found[sub.__name__] = sub
                queue.append(sub)
    return found


def instance_of(cls: type[HearthError]) -> HearthError:
    parameters = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    return cls(**{p.name: SAMPLES[p.name] for p in parameters if p.default is inspect.Parameter.empty})


TRANSLATED = {key: entry for key, entry in STRINGS.items() if key.startswith("error_")}
BY_KEY = {instance_of(cls).message_key: cls for cls in every_error_class().values()
          if all(p.name in SAMPLES or p.name == "self" or p.default is not inspect.Parameter.empty
                 for p in inspect.signature(cls.__init__).parameters.values())}  # fmt: skip


def test_the_translated_errors_exist_and_have_every_language() -> None:
    assert len(TRANSLATED) >= 15
    for key, entry in TRANSLATED.items():
        assert key in BY_KEY, f"{key}: no error class has this message key"
        assert set(entry) == set(LANGUAGES), key


@pytest.mark.parametrize("key", sorted(TRANSLATED))
def test_each_translation_is_filled_from_the_errors_fields(key: str) -> None:
    error = instance_of(BY_KEY[key])
    chinese = translate_error(error, "zh")
    assert chinese != str(error) and re.search(r"[\u4e00-\u9fff]", chinese), chinese
    assert "{" not in chinese and "}" not in chinese  # every placeholder filled
    assert translate_error(error, "en") == str(error)  # English: the error's own, complete message


def test_the_chinese_gui_shows_a_chinese_error_with_its_details() -> None:
    error = ServerUnreachableError("http://127.0.0.1:9/v1", "connection refused")
    assert (error.message_key, error.fields) == (
        "error_server_unreachable", {"base_url": "http://127.0.0.1:9/v1", "detail": "connection refused"},
    )  # fmt: skip
    assert translate_error(error, "zh") == "无法连接到服务器 http://127.0.0.1:9/v1（connection refused）。服务器是否在运行？网址是否正确？"
    assert translate_error(ValueError("boom"), "zh") == "ValueError: boom"  # a bug: said as it is
