"""Turn an OpenAI request body into ``ChatMessage`` list + ``GenerationParams``, or an OpenAI-style 400.

Parameter mapping (documented in the README):

- ``temperature`` [0, 2] -> ``temperature`` (0 = greedy); ``top_p`` [0, 1] -> ``top_p`` (0 means greedy too);
  ``max_completion_tokens`` or ``max_tokens`` [1, limit] -> ``max_new_tokens``; ``stop`` (a string or up to 4) ->
  ``stop``; ``seed`` -> ``seed``. Extensions that vLLM and llama.cpp accept too: ``top_k`` and
  ``repetition_penalty`` (alias ``repeat_penalty``).
- ``presence_penalty`` / ``frequency_penalty`` [-2, 2] are validated and ignored (the local engines implement a
  multiplicative repetition penalty, not OpenAI's additive ones; pass ``repetition_penalty`` for that).
- ``n`` must be 1; ``response_format`` other than ``text``, ``tools``/``functions``, ``logprobs``, ``logit_bias``,
  ``suffix`` and ``best_of`` > 1 get a clear 400 "not supported". ``user``, ``metadata``, ``store``,
  ``parallel_tool_calls``, ``service_tier`` and ``tool_choice: "none"`` are accepted and ignored.
- At most ``SERVER_MAX_MESSAGES`` messages and ``SERVER_MAX_PROMPT_CHARACTERS`` characters of text per request
  (400 past them): a request cannot hold the shared engine with a chat no local model could read anyway.
- Roles: ``system``, ``user``, ``assistant``; ``developer`` (OpenAI's newer name for system) is read as ``system``.
  Content is a string or a list of ``{"type": "text"}`` parts (joined); images and audio get 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from src.errors import InvalidParameterError
from src.server.api_errors import APIError, bad_request, not_supported
from src.settings import SERVER_MAX_MESSAGES, SERVER_MAX_PROMPT_CHARACTERS
from src.utils.generation import ChatMessage, GenerationParams

MAX_STOP_SEQUENCES = 4  # as OpenAI
_ROLE_ALIASES = {"developer": "system"}
_ALLOWED_ROLES = ("system", "user", "assistant", "developer")


@dataclass(frozen=True)
class ParsedRequest:
    model: str
    messages: list[ChatMessage]
    params: GenerationParams
    stream: bool
    include_usage: bool
    echo: str | None = None  # legacy completions with echo: the prompt, sent before the completion


def parse_chat_request(body: Any, *, default_model: str, max_tokens_limit: int, default_max_tokens: int) -> ParsedRequest:
    body = _object(body)
    messages = _messages(body.get("messages"))
    _refuse_unsupported(body, legacy=False)
    return _finish(body, messages, default_model, max_tokens_limit, default_max_tokens, echo=None)


def parse_completion_request(
    body: Any, *, default_model: str, max_tokens_limit: int, default_max_tokens: int
) -> ParsedRequest:
    """Legacy ``/v1/completions``. The ``ChatModel`` interface only takes messages, so the prompt is sent as one
    user message through the model's chat template (documented; a raw-prefix continuation is not offered)."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise bad_request("Only one prompt per request is supported (a string, or a list holding one string).", "prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string.", "prompt")
    _check_length(len(prompt), "prompt")
    _refuse_unsupported(body, legacy=True)
    echo = _optional_bool(body, "echo")
    return _finish(
        body,
        [ChatMessage("user", prompt)],
        default_model,
        max_tokens_limit,
        default_max_tokens,
        echo=prompt if echo else None,
        default_legacy_tokens=16,  # OpenAI's default for the legacy endpoint
    )


# --- pieces ------------------------------------------------------------------------------------------------------


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _messages(raw: Any) -> list[ChatMessage]:
    if raw is None:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty array of message objects.", "messages")
    if len(raw) > SERVER_MAX_MESSAGES:
        raise bad_request(f"'messages' holds {len(raw):,} messages; this server accepts at most "
                          f"{SERVER_MAX_MESSAGES:,} per request.", "messages", "too_many_messages")  # fmt: skip
    out: list[ChatMessage] = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if role not in _ALLOWED_ROLES:
            raise bad_request(
                f"Invalid value for {where}.role: {role!r}. Supported roles: system, user, assistant (and developer).",
                f"{where}.role",
                "invalid_value",
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise not_supported("Tool calls", f"{where}.tool_calls")
        content = _content(message.get("content"), where, role)
        out.append(ChatMessage(_ROLE_ALIASES.get(role, role), content))
    _check_length(sum(len(message.content) for message in out), "messages")
    return out


def _check_length(characters: int, param: str) -> None:
    if characters > SERVER_MAX_PROMPT_CHARACTERS:
        raise bad_request(f"The request holds {characters:,} characters of text; this server accepts at most "
                          f"{SERVER_MAX_PROMPT_CHARACTERS:,}.", param, "prompt_too_long")  # fmt: skip


def _content(content: Any, where: str, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or "type" not in part:
                raise bad_request(f"{where}.content parts must be objects with a 'type'.", f"{where}.content")
            if part["type"] != "text" or not isinstance(part.get("text"), str):
                raise not_supported(f"Content of type {part.get('type')!r}", f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{where}.content must be a string or an array of text parts.", f"{where}.content")


def _refuse_unsupported(body: dict[str, Any], *, legacy: bool) -> None:
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise bad_request("Only n=1 is supported: this server generates one choice per request.", "n", "unsupported_value")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            raise not_supported(f"response_format {kind or response_format!r} (JSON mode, structured output)", "response_format")
    for name in ("tools", "functions"):
        if body.get(name):
            raise not_supported("Tool and function calling", name)
    tool_choice = body.get("tool_choice", body.get("function_call"))
    if tool_choice not in (None, "none", "auto"):
        raise not_supported("Tool and function calling", "tool_choice")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0):
        raise not_supported("logprobs", "logprobs")
    if body.get("top_logprobs"):
        raise not_supported("top_logprobs", "top_logprobs")
    if body.get("logit_bias"):
        raise not_supported("logit_bias", "logit_bias")
    if legacy:
        if body.get("suffix"):
            raise not_supported("suffix (fill in the middle)", "suffix")
        best_of = body.get("best_of")
        if best_of is not None and (not _is_int(best_of) or best_of != 1):
            raise bad_request("Only best_of=1 is supported.", "best_of", "unsupported_value")


def _finish(
    body: dict[str, Any],
    messages: list[ChatMessage],
    default_model: str,
    max_tokens_limit: int,
    default_max_tokens: int,
    *,
    echo: str | None,
    default_legacy_tokens: int | None = None,
) -> ParsedRequest:
    model = body.get("model")
    if model is None:
        model = default_model
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a non-empty string.", "model")
    stream = _optional_bool(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise bad_request("'stream_options' must be an object.", "stream_options")
        include_usage = bool(_optional_bool(stream_options, "include_usage", "stream_options.include_usage"))

    kwargs: dict[str, Any] = {}
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if temperature is not None:
        kwargs["temperature"] = temperature
    if top_p is not None:
        if top_p == 0.0:
            kwargs["temperature"] = 0.0  # only the most likely token survives: that is greedy decoding
        else:
            kwargs["top_p"] = top_p
    _number(body, "presence_penalty", -2.0, 2.0)  # accepted, ignored (see the module docstring)
    _number(body, "frequency_penalty", -2.0, 2.0)

    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, 1, max_tokens_limit)
    if max_tokens is None:
        max_tokens = min(default_legacy_tokens or default_max_tokens, max_tokens_limit)
    kwargs["max_new_tokens"] = max_tokens

    kwargs["stop"] = _stop(body.get("stop"))
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)  # what torch.manual_seed takes
    if seed is not None:
        kwargs["seed"] = seed
    top_k = _integer(body, "top_k", 0, 100_000)
    if top_k is not None:
        kwargs["top_k"] = top_k
    penalty_name = "repetition_penalty" if body.get("repetition_penalty") is not None else "repeat_penalty"
    penalty = _number(body, penalty_name, 0.0, 10.0, low_open=True)
    if penalty is not None:
        kwargs["repetition_penalty"] = penalty
    try:
        params = GenerationParams().updated(**kwargs)
    except InvalidParameterError as exc:  # a rule GenerationParams has and OpenAI's ranges do not
        raise bad_request(str(exc)) from exc
    return ParsedRequest(model.strip(), messages, params, bool(stream), include_usage, echo)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_bool(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"'{param or name}' must be true or false.", param or name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    # math.isfinite(10**400) raises OverflowError: an int is compared as it is (exactly, whatever its size)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise bad_request(f"'{name}' must be a number.", name, "invalid_type")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise bad_request(
            f"Invalid '{name}': {_shown(value)} is out of range; it must be in {bracket}{low:g}, {high:g}].", name,
            "invalid_value",
        )  # fmt: skip
    return float(value)


def _shown(value: float) -> str:
    """A number for an error message: a 400-digit integer is not repeated back whole."""
    if isinstance(value, float):
        return f"{value:.6g}"
    digits = str(abs(value))
    return str(value) if len(digits) <= 30 else f"{'-' if value < 0 else ''}{digits[:6]}... ({len(digits)} digits)"


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise bad_request(f"'{name}' must be an integer.", name, "invalid_type")
    if not low <= value <= high:
        raise bad_request(
            f"Invalid '{name}': {_shown(value)} is out of range; this server accepts {low} to {high}.", name,
            "invalid_value",
        )  # fmt: skip
    return int(value)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("'stop' must be a string or an array of strings.", "stop", "invalid_type")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise bad_request(f"'stop' accepts at most {MAX_STOP_SEQUENCES} sequences.", "stop", "invalid_value")
    return tuple(s for s in stop if s)  # "" would match everywhere; OpenAI ignores it too


__all__ = ["APIError", "ParsedRequest", "parse_chat_request", "parse_completion_request"]
