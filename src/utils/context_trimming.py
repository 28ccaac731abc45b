"""Fitting a conversation into a model's context window by leaving out its oldest turns.

What is kept: every system message, the last message (whatever its role), and the newest other messages that fit,
never opening on a reply whose question was left out. The number of prompt tokens only shrinks as more old turns
are left out, so the smallest number to leave out is found by a search rather than by re-encoding the chat once per
dropped message (which made a 100,000-message chat take minutes, with the engine held all along): first the whole
chat when it is short enough to be likely to fit, then from the newest end, keeping 1, 2, 4... old messages until one
does not fit, then halving the interval between. Each encode is of what would be kept, so a huge chat costs a few
encodes of about a context window each, plus a last one where it really is that long.

Stopping: a shutdown is checked between encodes (``check_stop``). A request's own cancel cannot reach this step (it
runs before the request's stream exists), and does not need to: the search takes about a tenth of a second however
long the chat (``benchmarks/context_trimming.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from src.utils.generation import ChatMessage

# Tokens are rarely shorter than this many characters: a chat under window x this is encoded whole first (one encode
# in the common case); a longer one is searched from its newest end.
_CHARACTERS_PER_TOKEN_AT_LEAST = 2


@dataclass(frozen=True)
class FittedChat:
    token_ids: list[int]
    dropped_messages: int
    fits: bool  # False: even with every old turn left out, prompt + reply exceed the window


def fit_to_window(
    messages: Sequence[ChatMessage],
    encode: Callable[[Sequence[ChatMessage]], list[int]],
    *,
    prompt_budget: int,
    check_stop: Callable[[], None] = lambda: None,
) -> FittedChat:
    """The newest part of ``messages`` whose encoding has at most ``prompt_budget`` tokens (see the module
    docstring). ``check_stop`` is called between encodes and may raise to abandon the work (shutdown)."""
    chat = list(messages)
    last = len(chat) - 1
    old = [index for index in range(last) if chat[index].role != "system"]  # the turns that may be left out
    system_before = [index for index in range(last) if chat[index].role == "system"]

    def kept(dropped: int) -> list[ChatMessage]:
        first_kept = old[dropped] if dropped < len(old) else last
        return [chat[index] for index in system_before if index < first_kept] + chat[first_kept:]

    # How many old turns may be left out: none, or a number after which the chat does not open on a reply.
    choices = [0] + [n for n in range(1, len(old) + 1) if n == len(old) or chat[old[n]].role != "assistant"]
    encoded: dict[int, list[int]] = {}

    def fits(choice: int) -> bool:
        dropped = choices[choice]
        if dropped not in encoded:
            check_stop()
            encoded[dropped] = encode(kept(dropped))
        return len(encoded[dropped]) <= prompt_budget

    def result(choice: int, fitted: bool) -> FittedChat:
        return FittedChat(encoded[choices[choice]], choices[choice], fitted)

    characters = sum(len(message.content) for message in chat)
    if characters <= prompt_budget * _CHARACTERS_PER_TOKEN_AT_LEAST and fits(0):
        return result(0, True)
    newest = len(choices) - 1
    if not fits(newest):
        return result(newest, False)
    # choices[fitting] fits; choices[too_long] does not (or is past the oldest end: everything fits)
    fitting, step = newest, 1
    too_long = -1
    while fitting > 0:
        probe = max(0, fitting - step)
        if not fits(probe):
            too_long = probe
            break
        fitting, step = probe, step * 2
    while fitting - too_long > 1:
        middle = (fitting + too_long) // 2
        if fits(middle):
            fitting = middle
        else:
            too_long = middle
    return result(fitting, True)
